"""A PostgreSQL Flagsmith source with change data capture enabled (its own publication and
slot), for the capture tests and the capture sensor's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from membership_pipeline.changes.capture import CaptureSettings, ChangeCapture
from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset
from membership_pipeline.sources.replication import disable_capture, enable_capture


@dataclass
class CapturedSource:
    dataset: DemoDataset
    settings: CaptureSettings

    @property
    def url(self) -> str:
        return self.dataset.url

    def consumer(self) -> ChangeCapture:
        return ChangeCapture(self.url, self.settings)


@pytest.fixture
def captured_source(postgres_url: str) -> Iterator[CapturedSource]:
    """A PostgreSQL Flagsmith source with capture enabled: its own publication and slot, both
    dropped afterwards (a forgotten slot keeps WAL forever)."""
    dataset = write_demo_dataset(
        postgres_url,
        identities=160,
        organisations=1,
        projects_per_organisation=1,
        environments_per_project=2,
        segments_per_project=25,
    )
    name = f"mp_capture_{uuid.uuid4().hex[:10]}"
    settings = CaptureSettings(slot=name, publication=name, batch_changes=5_000)
    engine = sa.create_engine(postgres_url)
    try:
        enable_capture(engine, settings.publication, settings.slot)
        yield CapturedSource(dataset, settings)
    finally:
        disable_capture(engine, settings.publication, settings.slot)
        with engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT count(*) FROM pg_replication_slots WHERE slot_name = :s"),
                {"s": name},
            ).scalar()
        engine.dispose()
        assert left == 0, f"slot {name} was left behind"
