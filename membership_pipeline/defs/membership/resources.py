"""Where environments come from and where their bitmaps go. Environment differences (embedded
SQLite or PostgreSQL, cooldowns) are configuration of these resources, never code branches."""

from datetime import timedelta

import dagster as dg
from pydantic import PrivateAttr

from membership_pipeline.dispatch.orphaned_runs import DEFAULT_ORPHANED_RUN_GRACE
from membership_pipeline.sources.demo_dataset import DEFAULT_URL as DEMO_SOURCE_URL
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import DEFAULT_STORE_URL, MembershipStore


class FlagsmithSourceResource(dg.ConfigurableResource):
    """Flagsmith's core database, read-only."""

    url: str = DEMO_SOURCE_URL

    def open(self) -> FlagsmithSource:
        """The source, once a connection to it was made: an unreachable database is one line
        naming its URL (password masked) and the driver's reason, at the start of the step."""
        return FlagsmithSource(self.url).require_reachable()

    def organisations(self) -> dict[str, str]:
        """Live environments (api key) → their organisation id."""
        source = self.open()
        try:
            return {info.api_key: str(info.organisation_id) for info in source.environments()}
        finally:
            source.close()


class MembershipStoreResource(dg.ConfigurableResource):
    """The bitmap store and the backfill guard's settings."""

    url: str = DEFAULT_STORE_URL
    cooldown_seconds: float = 60.0
    lease_seconds: float = 600.0
    # A run whose claim ended and whose log has been quiet this long is ended as failed.
    orphaned_run_grace_seconds: float = DEFAULT_ORPHANED_RUN_GRACE.total_seconds()
    _store: MembershipStore | None = PrivateAttr(default=None)

    def get(self) -> MembershipStore:
        """One store (and connection pool) per process that uses this resource."""
        if self._store is None:
            self._store = MembershipStore(
                self.url,
                cooldown=timedelta(seconds=self.cooldown_seconds),
                lease=timedelta(seconds=self.lease_seconds),
            )
        return self._store

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
