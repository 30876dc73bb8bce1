"""Renews a backfill's claim while its run works, so only a run that stopped loses it."""

from __future__ import annotations

import threading
from types import TracebackType

from membership_pipeline.model.errors import ClaimLost
from membership_pipeline.storage import Claim, MembershipStore
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")


class LeaseHeartbeat:
    """``with LeaseHeartbeat(store, claim):`` renews the lease every third of its length."""

    def __init__(self, store: MembershipStore, claim: Claim) -> None:
        self._store = store
        self.claim = claim
        self._interval = store.lease.total_seconds() / 3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="membership-lease", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.claim = self._store.renew_lease(self.claim)
            except ClaimLost:
                log.warning(
                    "segment_membership.backfill.lease_lost",
                    environment=self.claim.environment_key,
                    owner=self.claim.owner,
                )
                return
