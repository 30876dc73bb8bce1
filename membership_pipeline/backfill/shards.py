"""Computing one shard of a backfill: read its identity-id range, evaluate the plan's segments on
it, audit its share of the sample against flag-engine. An identity's membership depends only on
its own traits, so the shards' union is exactly the whole environment's answer."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pyroaring import BitMap

from membership_pipeline.evaluation import reads_identifiers, referenced_trait_keys
from membership_pipeline.evaluation.reference_audit import AuditReport, audit_against_flag_engine
from membership_pipeline.evaluation.tuning import DEFAULT_TUNING, EvaluationTuning
from membership_pipeline.model.shard_plan import ShardSpec
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore, StagedPlan

if TYPE_CHECKING:
    from membership_pipeline.evaluation import MembershipResult


@dataclass(frozen=True)
class ShardTask:
    """What a shard step works on: the backfill's plan and its own range."""

    plan: StagedPlan
    spec: ShardSpec


@dataclass
class ShardOutcome:
    """What one shard computed, before it is staged."""

    plan: StagedPlan
    spec: ShardSpec
    result: MembershipResult
    audit: AuditReport
    seconds: dict[str, float]
    trait_rows: int
    unreadable_traits: int
    trait_keys: tuple[str, ...]  # the only keys read: those the segments reference


class IdentitiesChanged(RuntimeError):
    """An incremental shard read other identities than the base version holds (they changed
    after planning): nothing is published; the next backfill is a full one."""


def compute_shard(
    source: FlagsmithSource,
    plan: StagedPlan,
    spec: ShardSpec,
    *,
    audit_sample_size: int,
    audit_seed: int,
    expected_identities: BitMap | None = None,
) -> ShardOutcome:
    """Read the shard's id range, evaluate the plan's segments on it, and audit its share of the
    sample against flag-engine. ``expected_identities``: an incremental shard's ids in the base
    version; reading others raises ``IdentitiesChanged``."""
    # The engine (numba kernels) loads here, in the step's process, not with the definitions.
    from membership_pipeline.evaluation import engine

    info = plan.environment
    context = info.context
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    trait_keys = referenced_trait_keys(plan.segments)  # no other trait changes an answer
    tuning = tuning_for(plan)
    identifiers = reads_identifiers(plan.segments)  # else every answer is the same without
    # An incremental shard whose segments read no identifier takes its identity ids from the
    # base version and checks them against the source's count, largest and sum of ids.
    known = None
    if not identifiers and expected_identities is not None:
        known = np.asarray(expected_identities.to_array(), dtype=np.int64)
    read = source.read_identity_range(
        info,
        spec.first_id,
        spec.last_id,
        trait_keys,
        parallel_reads=tuning.read_connections,
        identifiers=identifiers,
        known_ids=known,
    )
    if known is not None and read.checksum != checksum_of(known):
        raise IdentitiesChanged(
            f"shard {spec.index} (ids {spec.first_id}..{spec.last_id}) of {info.api_key!r}: "
            f"the source holds {read.checksum[0] if read.checksum else '?'} identities there, "
            f"version {plan.base_version_id} {len(known)} (or other ids); this incremental "
            "backfill shares its bitmaps with that version: run a full backfill"
        )
    seconds["read"] = time.perf_counter() - started
    started = time.perf_counter()
    result = engine.evaluate_environment(
        context, read.identities, read.traits, plan.segments, tuning
    )
    seconds["evaluate"] = time.perf_counter() - started
    if expected_identities is not None and expected_identities != result.universe:
        added = len(result.universe - expected_identities)
        removed = len(expected_identities - result.universe)
        raise IdentitiesChanged(
            f"shard {spec.index} (ids {spec.first_id}..{spec.last_id}) of "
            f"{info.api_key!r}: {added} identities added and {removed} removed since version "
            f"{plan.base_version_id}, which this incremental backfill shares bitmaps with; "
            "run a full backfill"
        )
    started = time.perf_counter()
    audit = audit_against_flag_engine(
        context,
        read.identities,
        read.traits,
        plan.segments,
        result.segments,
        sample_size=audit_share(audit_sample_size, spec.identities, plan.identity_count),
        seed=audit_seed + spec.index,
    )
    seconds["audit"] = time.perf_counter() - started
    return ShardOutcome(
        plan,
        spec,
        result,
        audit,
        seconds,
        len(read.traits),
        read.unreadable_traits,
        tuple(sorted(trait_keys)),
    )


def checksum_of(ids: np.ndarray) -> tuple[int, int, int]:
    """Count, largest (-1: none) and sum of sorted ``ids``: what the source reports for a
    range."""
    if not len(ids):
        return 0, -1, 0
    return len(ids), int(ids[-1]), int(ids.sum())


def expected_identities(store: MembershipStore, plan: StagedPlan, spec: ShardSpec) -> BitMap | None:
    """An incremental shard's identities as its base version holds them (None when full)."""
    if not plan.incremental or plan.base_version_id is None:
        return None
    return store.universe_between(plan.base_version_id, spec.first_id, spec.last_id)


def tuning_for(plan: StagedPlan) -> EvaluationTuning:
    """A lone shard reads and hashes on every core; shards of a larger plan use one connection
    and one thread: their sibling steps already keep the other cores busy, and more per shard
    would only contend with them (or exceed a pod's one-CPU request)."""
    if len(plan.shards) == 1:
        return DEFAULT_TUNING
    return dataclasses.replace(DEFAULT_TUNING, hash_threads=1, read_connections=1)


def audit_share(sample_size: int, shard_identities: int, total_identities: int) -> int:
    """A shard audits its share of the backfill's sample (at least one identity if it has any),
    so the whole backfill audits about ``sample_size`` identities however it is sharded."""
    if total_identities <= 0 or shard_identities <= 0 or sample_size <= 0:
        return 0
    return max(1, math.ceil(sample_size * shard_identities / total_identities))
