"""Where environments come from and where their bitmaps go, and the dispatcher's policy.
Environment differences (embedded SQLite or PostgreSQL, cooldowns, caps) are configuration of
these resources, never code branches. Every field has a default (the embedded one) and a
description, both shown in the launchpad; a deployment sets a field by its ``MEMBERSHIP_*``
variable, which ``deployment.py`` binds as a ``dg.EnvVar`` (read by Dagster at launch)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from membership_pipeline.changes.capture import (
    DEFAULT_BATCH_CHANGES,
    CaptureSettings,
    ChangeCapture,
)
from membership_pipeline.database.urls import database_url
from membership_pipeline.dispatch.orphaned_runs import DEFAULT_ORPHANED_RUN_GRACE
from membership_pipeline.dispatch.policy import PolicySettings
from membership_pipeline.dispatch.settings import POLICY_SETTINGS, policy_settings
from membership_pipeline.model.shard_plan import DEFAULT_INCREMENTAL_SHARD_IDENTITIES
from membership_pipeline.sources.change_feed import ROWS_PER_TICK
from membership_pipeline.sources.flagsmith_source import EMBEDDED_SOURCE_URL, FlagsmithSource
from membership_pipeline.sources.replication import DEFAULT_PUBLICATION, DEFAULT_SLOT
from membership_pipeline.storage import DEFAULT_STORE_URL, MembershipStore
from membership_pipeline.storage.reader import DEFAULT_CACHE_BYTES
from membership_pipeline.storage.store import (
    DEFAULT_CHANGE_COOLDOWN,
    DEFAULT_COOLDOWN,
    DEFAULT_LEASE,
)


class FlagsmithSourceResource(dg.ConfigurableResource):
    """Flagsmith's core database, read-only."""

    url: str = Field(
        default=EMBEDDED_SOURCE_URL,
        description="Flagsmith's core database, as a database URL (postgresql://... "
        "or sqlite:///...); read-only. Deployment: $MEMBERSHIP_SOURCE_URL.",
    )
    detection_rows_per_tick: int = Field(
        default=ROWS_PER_TICK,
        description="Change detection looks at no more than this many new rows per table per "
        "tick, and catches up over later ticks (a bulk import never makes one scan longer than "
        "the sensor's timeout). Deployment: $MEMBERSHIP_DETECTION_ROWS_PER_TICK.",
    )

    _kept: FlagsmithSource | None = PrivateAttr(default=None)

    def open(self) -> contextlib.AbstractContextManager[FlagsmithSource]:
        """The source, once a connection to it was made: an unreachable database is one line
        naming its URL (password masked) and the driver's reason, at the start of the step.
        Inside ``kept_open``: the source it keeps (left open at the end of the block)."""
        if self._kept is not None:
            return contextlib.nullcontext(self._kept)
        return FlagsmithSource(self.url).require_reachable()

    @contextlib.contextmanager
    def kept_open(self) -> Iterator[None]:
        """For a process that runs one backfill after another (``membership-capture``): every
        ``open`` of this resource in the block shares one source, its engine and its pooled
        connections, instead of connecting and looking up the source's columns again for each
        step of each run."""
        with FlagsmithSource(self.url, pre_ping=True).require_reachable() as source:
            self._kept = source
            try:
                yield
            finally:
                self._kept = None

    def organisations(self) -> dict[str, str]:
        """Live environments (api key) → their organisation id."""
        with self.open() as source:
            return {info.api_key: str(info.organisation_id) for info in source.environments()}


class MembershipStoreResource(dg.ConfigurableResource):
    """The bitmap store and the backfill guard's settings."""

    url: str = Field(
        default=DEFAULT_STORE_URL,
        description="The membership store, as a database URL (postgresql://... in "
        "production, sqlite:///... embedded). Deployment: $MEMBERSHIP_STORE_URL.",
    )
    cooldown_seconds: int = Field(
        default=int(DEFAULT_COOLDOWN.total_seconds()),
        description="After a backfill of an environment ends, no other starts for this many "
        "seconds (force: true skips it). Deployment: $MEMBERSHIP_COOLDOWN_SECONDS.",
    )
    change_cooldown_seconds: int = Field(
        default=int(DEFAULT_CHANGE_COOLDOWN.total_seconds()),
        description="The cooldown before a delta or incremental backfill (one that costs what "
        "changed): short, so a burst of trait writes or segment edits keeps an environment "
        "seconds behind, not a minute. Deployment: $MEMBERSHIP_CHANGE_COOLDOWN_SECONDS.",
    )
    lease_seconds: int = Field(
        default=int(DEFAULT_LEASE.total_seconds()),
        description="A backfill's claim lapses this many seconds after its last renewal (each "
        "step renews it every third of it). Deployment: $MEMBERSHIP_LEASE_SECONDS.",
    )
    orphaned_run_grace_seconds: int = Field(
        default=int(DEFAULT_ORPHANED_RUN_GRACE.total_seconds()),
        description="A started run whose claim has ended and whose log has been quiet this many "
        "seconds is ended as failed. Deployment: $MEMBERSHIP_ORPHANED_RUN_GRACE_SECONDS.",
    )
    chunk_cache_mb: int = Field(
        default=DEFAULT_CACHE_BYTES >> 20,
        description="Deserialized bitmap chunks a process keeps between delta backfills (MB). "
        "While every payload a delta touches fits in half of it, deltas read each payload once; "
        "beyond that they read them in bounded batches each time. Deployment: "
        "$MEMBERSHIP_CHUNK_CACHE_MB.",
    )
    _store: MembershipStore | None = PrivateAttr(default=None)

    def get(self) -> MembershipStore:
        """One store (and connection pool) per process that uses this resource."""
        if self._store is None:
            self._store = MembershipStore(
                self.url,
                cooldown=timedelta(seconds=self.cooldown_seconds),
                change_cooldown=timedelta(seconds=self.change_cooldown_seconds),
                lease=timedelta(seconds=self.lease_seconds),
                cache_bytes=self.chunk_cache_mb << 20,
            )
        return self._store

    @property
    def orphaned_run_grace(self) -> timedelta:
        return timedelta(seconds=self.orphaned_run_grace_seconds)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _policy_field(name: str) -> Any:
    setting = POLICY_SETTINGS[name]
    return Field(
        default=setting.default,
        description=f"{setting.description} Deployment: ${setting.variable}.",
    )


class DispatchPolicyResource(dg.ConfigurableResource):
    """The dispatcher's policy settings (see ``dispatch/settings.py``)."""

    coalesce_seconds: int = _policy_field("coalesce_seconds")
    dedup_ttl_seconds: int = _policy_field("dedup_ttl_seconds")
    launches_per_organisation_per_minute: int = _policy_field(
        "launches_per_organisation_per_minute"
    )
    delta_launches_per_organisation_per_minute: int = _policy_field(
        "delta_launches_per_organisation_per_minute"
    )
    organisation_caps: str = _policy_field("organisation_caps")
    max_request_age_seconds: int = _policy_field("max_request_age_seconds")
    max_attempts: int = _policy_field("max_attempts")
    incremental_max_share: float = Field(
        default=0.5,
        description="A segments-only request naming more than this share of the environment's "
        "segments runs as a full backfill.",
    )
    edit_job_max_identities: int = Field(
        default=DEFAULT_INCREMENTAL_SHARD_IDENTITIES,
        description="An incremental backfill of an environment of at most this many identities "
        "(one shard) runs as segment_membership_edit: every step in the run's process.",
    )

    def settings(self) -> PolicySettings:
        return policy_settings(self.model_dump())


class ChangeCaptureResource(dg.ConfigurableResource):
    """Change data capture from the source's logical replication slot (set up once by
    ``membership capture enable``)."""

    slot: str = Field(
        default=DEFAULT_SLOT,
        description="The source's logical replication slot (pgoutput). Deployment: "
        "$MEMBERSHIP_CAPTURE_SLOT.",
    )
    publication: str = Field(
        default=DEFAULT_PUBLICATION,
        description="The publication of the identity, trait and segment tables. Deployment: "
        "$MEMBERSHIP_CAPTURE_PUBLICATION.",
    )
    batch_changes: int = Field(
        default=DEFAULT_BATCH_CHANGES,
        description="Replication messages read per tick (whole transactions; the rest waits "
        "for the next tick). Deployment: $MEMBERSHIP_CAPTURE_BATCH_CHANGES.",
    )

    def consumer(self, source_url: str) -> ChangeCapture:
        return ChangeCapture(
            source_url, CaptureSettings(self.slot, self.publication, self.batch_changes)
        )


class FlagsmithCountsResource(dg.ConfigurableResource):
    """Flagsmith's database as the writer of its own membership counts table (the export is
    off, and not in the definitions, while its URL is unset)."""

    url: str = Field(
        default="",
        description="Flagsmith's database with write access to "
        "segment_membership_segmentmembershipcount (only that table), as an SQLAlchemy URL. "
        "Deployment: $MEMBERSHIP_FLAGSMITH_COUNTS_URL.",
    )

    @contextlib.contextmanager
    def engine(self) -> Iterator[sa.Engine]:
        engine = sa.create_engine(database_url(self.url))
        try:
            yield engine
        finally:
            engine.dispose()
