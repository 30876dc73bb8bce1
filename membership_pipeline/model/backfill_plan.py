"""A backfill's plan, as values: what one backfill of one environment will do, decided from one
snapshot of the source (see ``backfill.planning``) and kept by the store with its shadow version
(``storage.plans``), so every shard step, on any host, evaluates the same definitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.model.refresh_mode import RefreshMode, SourceMarks
from membership_pipeline.model.shard_plan import ShardSpec


@dataclass(frozen=True, kw_only=True)
class BackfillPlan:
    environment: EnvironmentInfo
    as_of: datetime  # when the source was read
    # The segment definitions the shards evaluate: every segment, or an incremental plan's new
    # and edited ones.
    segments: list[dict[str, Any]]
    identity_count: int
    shard_identities: int
    shards: tuple[ShardSpec, ...]
    mode: RefreshMode = RefreshMode.FULL
    mode_reason: str = ""
    # Incremental and delta plans: the published version they build on; an incremental plan's
    # segments whose bitmaps it shares with it; segments gone from the source.
    base_version_id: int | None = None
    reused_segments: tuple[str, ...] = ()
    dropped_segments: tuple[str, ...] = ()
    # The source as planned, recorded so the next backfill can tell what changed (None: a plan
    # read back by a step, which needs no marks).
    marks: SourceMarks | None = field(default=None, compare=False)
    # The capture position of the pending identities this backfill covers (a full or delta
    # plan; they are cleared when it publishes), and a delta plan's identities.
    pending_position: int | None = None
    delta_identities: tuple[int, ...] = field(default=(), compare=False, repr=False)
    # A delta plan's new and edited segments (keys), evaluated on every identity and written
    # whole; its ``dropped_segments`` are those deleted since its base.
    rebuilt_segments: tuple[str, ...] = ()

    @property
    def incremental(self) -> bool:
        return self.mode is RefreshMode.INCREMENTAL

    @property
    def delta(self) -> bool:
        return self.mode is RefreshMode.DELTA

    def shard(self, mapping_key: str) -> ShardSpec:
        for spec in self.shards:
            if spec.mapping_key == mapping_key:
                return spec
        raise KeyError(f"the plan has no shard {mapping_key!r}")
