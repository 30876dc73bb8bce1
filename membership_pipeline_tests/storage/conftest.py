from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

import pytest
from pyroaring import BitMap

from membership_pipeline.database.schema import migrate
from membership_pipeline.storage import Claim, MembershipStore, Publication


class FakeClock:
    """The store's injectable clock, moved by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_url(database_url: str) -> str:
    """A migrated store on each backend (an SQLite file; a PostgreSQL schema of its own)."""
    migrate(database_url)
    return database_url


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[MembershipStore]:
    with MembershipStore(store_url, clock=clock, chunk_bytes=512) as opened:
        yield opened


def write_version(
    store: MembershipStore,
    held: Claim,
    segments: Mapping[str, BitMap],
    universe: BitMap | None = None,
    failed: Mapping[str, str] | None = None,
) -> Publication:
    """Stage and publish one version: the given segments, the universe their union unless given."""
    shadow = store.stage(held, as_of=store.clock())
    shadow.add_universe(universe if universe is not None else BitMap().union(*segments.values()))
    for key, members in segments.items():
        shadow.add_segment(key, key.upper(), members)
    for key, message in (failed or {}).items():
        shadow.add_failed_segment(key, None, "invalid_regex", message)
    return store.publish(held, shadow)


def backfill(
    store: MembershipStore, environment_key: str, segments: Mapping[str, BitMap], **kwargs: object
) -> Publication:
    """A whole successful backfill, claimed with force so tests need not wait out the cooldown."""
    held = store.claim(environment_key, "test-run", force=True)
    assert isinstance(held, Claim), held
    return write_version(store, held, segments, **kwargs)  # type: ignore[arg-type]
