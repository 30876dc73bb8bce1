"""A sharded backfill's plan in the store: recorded with a new shadow version, read back by any
step on any host. The plan holds the segment definitions every shard evaluates (read once, so no
segment mixes two definitions) and the shards' id ranges; the version row holds how it was made
(full or incremental, its base) and the source's marks."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.model.backfill_plan import BackfillPlan
from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.model.errors import ClaimLost
from membership_pipeline.model.refresh_mode import RefreshMode
from membership_pipeline.model.shard_plan import ShardSpec
from membership_pipeline.storage.claims import Claim, running_claim
from membership_pipeline.storage.tables import environment, shard, version, version_plan
from membership_pipeline.storage.versions import create_shadow, require_shadow
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")


@dataclass(frozen=True, kw_only=True)
class StagedPlan(BackfillPlan):
    """A plan as the store holds it: its claim and its shadow version."""

    claim: Claim
    version_id: int

    @property
    def environment_key(self) -> str:
        return self.claim.environment_key


def stage_plan(
    database: StoreDatabase, held: Claim, plan: BackfillPlan, *, now: datetime
) -> StagedPlan:
    """A new shadow version with ``plan``; the environment's row takes its display name."""
    version_id = create_shadow(database, held, as_of=plan.as_of, now=now)
    marks = plan.marks
    with database.writer.begin() as conn:
        require_shadow(conn, version_id, held)
        conn.execute(
            version_plan.insert().values(
                version_id=version_id,
                environment=json.dumps(dataclasses.asdict(plan.environment)),
                segments=json.dumps(plan.segments),
                identity_count=plan.identity_count,
                shard_identities=plan.shard_identities,
                shard_count=len(plan.shards),
                reused_segments=json.dumps(list(plan.reused_segments)),
                dropped_segments=json.dumps(list(plan.dropped_segments)),
                mode_reason=plan.mode_reason,
                pending_position=plan.pending_position,
                delta_identities=BitMap(plan.delta_identities).serialize() if plan.delta else None,
                rebuilt_segments=json.dumps(list(plan.rebuilt_segments)),
            )
        )
        conn.execute(
            version.update()
            .where(version.c.version_id == version_id)
            .values(
                mode=plan.mode.value,
                base_version_id=plan.base_version_id,
                source_identity_count=marks.identity_count if marks else None,
                source_max_identity_id=marks.max_identity_id if marks else None,
                source_max_trait_id=marks.max_trait_id if marks else None,
                environment_digest=marks.environment_digest if marks else None,
                source_xmin=_source_xmin(conn, plan),
            )
        )
        conn.execute(
            environment.update()
            .where(environment.c.environment_key == held.environment_key)
            .values(display_name=plan.environment.display_name)
        )
        conn.execute(
            shard.insert(),
            [
                {
                    "version_id": version_id,
                    "shard_index": spec.index,
                    "first_id": spec.first_id,
                    "last_id": spec.last_id,
                    "identity_count": spec.identities,
                    "state": "planned",
                    "attempts": 0,
                }
                for spec in plan.shards
            ],
        )
    log.info(
        "segment_membership.store.shards_planned",
        environment=held.environment_key,
        version=version_id,
        identities=plan.identity_count,
        shards=len(plan.shards),
        shard_identities=plan.shard_identities,
        mode=plan.mode.value,
    )
    return StagedPlan(**_fields(plan), claim=held, version_id=version_id)


def load_plan(database: StoreDatabase, environment_key: str, owner: str) -> StagedPlan:
    """The plan of the running backfill of ``environment_key`` claimed by ``owner`` (a run id);
    ``ClaimLost`` when that claim no longer holds or its shadow version is gone."""
    with database.reader.connect() as conn:
        claim = running_claim(conn, environment_key, owner)
        found = None
        if claim is not None:
            found = conn.execute(
                sa.select(
                    version.c.version_id,
                    version.c.as_of,
                    version.c.mode,
                    version.c.base_version_id,
                    version_plan,
                )
                .join(version_plan, version_plan.c.version_id == version.c.version_id)
                .where(version.c.claim_token == claim.token, version.c.state == "shadow")
            ).one_or_none()
        if claim is None or found is None:
            raise ClaimLost(
                f"the backfill of {environment_key!r} by {owner} no longer holds its claim "
                "(failed, reconciled or finished)"
            )
        shard_rows = conn.execute(
            sa.select(shard)
            .where(shard.c.version_id == found.version_id)
            .order_by(shard.c.shard_index)
        ).all()
    return StagedPlan(
        claim=claim,
        version_id=found.version_id,
        environment=EnvironmentInfo(**json.loads(found.environment)),
        as_of=found.as_of,
        segments=json.loads(found.segments),
        identity_count=found.identity_count,
        shard_identities=found.shard_identities,
        shards=tuple(
            ShardSpec(r.shard_index, r.first_id, r.last_id, r.identity_count or 0)
            for r in shard_rows
        ),
        mode=RefreshMode(found.mode or RefreshMode.FULL.value),
        mode_reason=found.mode_reason or "",
        base_version_id=found.base_version_id,
        reused_segments=tuple(json.loads(found.reused_segments or "[]")),
        dropped_segments=tuple(json.loads(found.dropped_segments or "[]")),
        pending_position=found.pending_position,
        delta_identities=tuple(BitMap.deserialize(found.delta_identities))
        if found.delta_identities is not None
        else (),
        rebuilt_segments=tuple(json.loads(found.rebuilt_segments or "[]")),
    )


def _source_xmin(conn: sa.Connection, plan: BackfillPlan) -> int | None:
    """A full version's own snapshot; a version that shares its base's bitmaps or answers holds
    what the base read, so it takes the base's (``model.slot_coverage``)."""
    if plan.mode is RefreshMode.FULL:
        return plan.marks.snapshot_xmin if plan.marks else None
    return conn.execute(
        sa.select(version.c.source_xmin).where(version.c.version_id == plan.base_version_id)
    ).scalar()


def _fields(plan: BackfillPlan) -> dict[str, object]:
    return {f.name: getattr(plan, f.name) for f in dataclasses.fields(BackfillPlan)}
