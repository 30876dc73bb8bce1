"""``MembershipStore``: the store's operations over one database, with the clock and the policy
settings (cooldown, lease, chunk size, retention) in one place.

    store = MembershipStore("sqlite:///.membership/store.sqlite")   # after `membership migrate`
    if claim := store.claim("env-key", owner="run-123"):
        shadow = store.stage(claim, as_of=snapshot.as_of)
        stage_membership_result(shadow, result)
        store.publish(claim, shadow)          # or store.fail(claim, "why") on any error
    store.reader().count("env-key", "segment-key")
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pyroaring import BitMap

from membership_pipeline.database.engines import StoreDatabase, open_database
from membership_pipeline.database.schema import require_current_schema, require_reachable
from membership_pipeline.database.timestamps import Clock, utc_now
from membership_pipeline.model.backfill_plan import BackfillPlan
from membership_pipeline.model.refresh_mode import BaseVersion
from membership_pipeline.model.shard_plan import ShardSpec
from membership_pipeline.storage import (
    base_versions,
    claims,
    delta_versions,
    garbage,
    identity_answers,
    pending_identities,
    plans,
    sealing,
    versions,
)
from membership_pipeline.storage.chunking import DEFAULT_CHUNK_BYTES
from membership_pipeline.storage.claims import Claim, ClaimRefused, ReconciledClaim
from membership_pipeline.storage.delta_versions import DeltaAnswers, DeltaTotals
from membership_pipeline.storage.environment_metadata import (
    EnvironmentMembershipMetadata,
    read_all_metadata,
    read_metadata,
    read_metadata_many,
)
from membership_pipeline.storage.garbage import GarbageReport
from membership_pipeline.storage.pending_identities import PendingIdentities
from membership_pipeline.storage.plans import StagedPlan
from membership_pipeline.storage.reader import (
    DEFAULT_CACHE_BYTES,
    MAX_IDENTITY_ID,
    ChunkCache,
    MembershipReader,
)
from membership_pipeline.storage.sealing import SealedTotals
from membership_pipeline.storage.shard_writer import ShardReport, ShardWriter, shard_reports
from membership_pipeline.storage.versions import Publication, ShadowVersion

DEFAULT_STORE_URL = "sqlite:///.membership/membership_store.sqlite"  # the embedded default
DEFAULT_COOLDOWN = timedelta(seconds=60)
_CACHES: dict[tuple[str, int], ChunkCache] = {}  # per store URL and bound, for this process
_CACHES_LOCK = threading.Lock()
# A delta or incremental backfill costs what changed (identities, segments), and a burst of SDK
# writes arrives as one delta per capture tick: a short cooldown keeps an environment seconds
# behind its writes, never a minute (the running guard still holds one backfill at a time).
DEFAULT_CHANGE_COOLDOWN = timedelta(seconds=2)
DEFAULT_LEASE = timedelta(minutes=10)


class MembershipStore:
    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utc_now,
        cooldown: timedelta = DEFAULT_COOLDOWN,
        change_cooldown: timedelta = DEFAULT_CHANGE_COOLDOWN,
        lease: timedelta = DEFAULT_LEASE,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        pool_size: int = 5,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if cooldown < timedelta(0) or lease <= timedelta(0):
            raise ValueError(f"cooldown must be ≥ 0 and lease > 0 (got {cooldown}, {lease})")
        self.database: StoreDatabase = open_database(url, pool_size=pool_size)
        try:
            require_reachable(self.database)
            require_current_schema(self.database)
        except Exception:
            self.database.dispose()
            raise
        self.clock = clock
        self.cooldown = cooldown
        self.change_cooldown = change_cooldown
        self.lease = lease
        self.chunk_bytes = chunk_bytes
        self.cache_bytes = cache_bytes

    @property
    def url(self) -> str:
        return self.database.url

    def close(self) -> None:
        self.database.dispose()

    def __enter__(self) -> MembershipStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # EnvironmentMembershipMetadata
    def metadata(self, environment_key: str) -> EnvironmentMembershipMetadata | None:
        with self.database.reader.connect() as conn:
            return read_metadata(conn, environment_key)

    def all_metadata(self) -> list[EnvironmentMembershipMetadata]:
        with self.database.reader.connect() as conn:
            return read_all_metadata(conn)

    # The backfill lifecycle
    def claim(
        self, environment_key: str, owner: str, *, force: bool = False, quick: bool = False
    ) -> Claim | ClaimRefused:
        """``quick``: a delta or incremental backfill's claim, under the (short) change
        cooldown."""
        return claims.claim(
            self.database,
            environment_key,
            owner,
            now=self.clock(),
            cooldown=self.change_cooldown if quick else self.cooldown,
            lease=self.lease,
            force=force,
        )

    def refusal(self, environment_key: str) -> ClaimRefused | None:
        """Why a claim would be refused now, without claiming (the sensors' look-ahead)."""
        return claims.refusal(
            self.metadata(environment_key), now=self.clock(), cooldown=self.cooldown
        )

    def refusals(
        self, environment_keys: list[str], quick: frozenset[str] = frozenset()
    ) -> dict[str, ClaimRefused]:
        """``refusal`` for many environments in one query; only those that would refuse.
        ``quick``: those whose backfill would be a delta or incremental one (the change
        cooldown applies)."""
        now = self.clock()
        with self.database.reader.connect() as conn:
            found = read_metadata_many(conn, environment_keys)
        refused = {
            key: claims.refusal(
                found.get(key),
                now=now,
                cooldown=self.change_cooldown if key in quick else self.cooldown,
            )
            for key in environment_keys
        }
        return {key: why for key, why in refused.items() if why is not None}

    def running_claim(self, environment_key: str, owner: str) -> Claim | None:
        with self.database.reader.connect() as conn:
            return claims.running_claim(conn, environment_key, owner)

    def renew_lease(self, held: Claim) -> Claim:
        return claims.renew_lease(self.database, held, now=self.clock(), lease=self.lease)

    def stage(self, held: Claim, *, as_of: datetime) -> ShadowVersion:
        return ShadowVersion(
            self.database, held, as_of=as_of, now=self.clock(), chunk_bytes=self.chunk_bytes
        )

    def publish(self, held: Claim, shadow: ShadowVersion | int) -> Publication:
        """Flip to a shadow (sealed first if need be) or to a sealed version by id."""
        if isinstance(shadow, ShadowVersion) and not shadow.sealed:
            shadow.seal(now=self.clock())
        version_id = shadow if isinstance(shadow, int) else shadow.version_id
        return versions.publish(self.database, held, version_id, now=self.clock())

    # Sharded versions: one plan, a writer per shard attempt, one seal, then ``publish``
    def stage_plan(self, held: Claim, plan: BackfillPlan) -> StagedPlan:
        return plans.stage_plan(self.database, held, plan, now=self.clock())

    def refresh_base(self, environment_key: str) -> BaseVersion | None:
        """The published version as an incremental backfill's base (None: none published)."""
        return base_versions.refresh_base(self.database, environment_key)

    def universe_between(self, version_id: int, first_id: int, last_id: int) -> BitMap:
        return base_versions.universe_between(
            self.database, self.chunks_cache, version_id, first_id, last_id
        )

    def universe(self, version_id: int) -> BitMap:
        """Every identity id ``version_id`` holds."""
        return self.universe_between(version_id, 0, MAX_IDENTITY_ID)

    def load_plan(self, environment_key: str, owner: str) -> StagedPlan:
        return plans.load_plan(self.database, environment_key, owner)

    def shard_writer(self, plan: StagedPlan, spec: ShardSpec) -> ShardWriter:
        return ShardWriter(
            self.database, plan, spec, now=self.clock(), chunk_bytes=self.chunk_bytes
        )

    def seal_shards(self, plan: StagedPlan) -> SealedTotals:
        """Seal the staged version: a delta's directory is complete once staged, a sharded
        version's shards are merged first."""
        if plan.delta:
            return delta_versions.seal_delta(self.database, plan, now=self.clock())
        return sealing.seal_shards(self.database, plan, now=self.clock())

    def write_delta(
        self, plan: StagedPlan, answers: DeltaAnswers, report: Mapping[str, Any]
    ) -> DeltaTotals:
        return delta_versions.write_delta(
            self.database, plan, answers, report=report, now=self.clock(),
            chunks_cache=self.chunks_cache, chunk_bytes=self.chunk_bytes,
        )  # fmt: skip

    @functools.cached_property
    def chunks_cache(self) -> ChunkCache:
        """Deserialized chunks kept across delta backfills: one cache per store database and
        process, whichever store object asks (a run's resources open a store of their own, and
        a capture process runs many deltas: each base chunk is read once). Chunks never
        change, so a cached one is never stale."""
        with _CACHES_LOCK:
            shared = _CACHES.setdefault(
                (self.url, self.cache_bytes), ChunkCache(self.database, self.cache_bytes)
            )
        return shared.using(self.database)

    def pending_identities(self, environment_key: str) -> PendingIdentities:
        return pending_identities.pending_identities(self.database, environment_key)

    def pending_counts(self) -> dict[str, int]:
        return pending_identities.pending_counts(self.database)

    def answers_by_identity(self) -> dict[str, str]:
        """Per published environment, whether deltas read its answers by identity (words)."""
        with self.database.reader.connect() as conn:
            return identity_answers.describe_answers(conn)

    def vacuum_answers(self) -> float | None:
        return identity_answers.vacuum_answers(self.database)

    def shard_reports(self, version_id: int) -> list[ShardReport]:
        return shard_reports(self.database, version_id)

    def fail(self, held: Claim, error: str) -> bool:
        return claims.fail(self.database, held, error, now=self.clock())

    def reconcile_stale_claims(
        self, is_owner_alive: Callable[[str | None], bool | None] | None = None
    ) -> list[ReconciledClaim]:
        return claims.reconcile_stale_claims(
            self.database, now=self.clock(), is_owner_alive=is_owner_alive
        )

    # Operations
    def rollback(self, environment_key: str, to_version: int | None = None) -> Publication:
        return versions.rollback(
            self.database, environment_key, now=self.clock(), to_version=to_version
        )

    def collect_garbage(
        self, keep_retired: int = 2, retired_grace: timedelta = timedelta(minutes=5)
    ) -> GarbageReport:
        return garbage.collect_garbage(
            self.database, now=self.clock(), keep_retired=keep_retired, retired_grace=retired_grace
        )

    def reader(
        self, *, cache_bytes: int = DEFAULT_CACHE_BYTES, pointer_ttl: float = 0.0
    ) -> MembershipReader:
        return MembershipReader(self.database, cache_bytes=cache_bytes, pointer_ttl=pointer_ttl)
