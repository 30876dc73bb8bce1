"""Staging what the engine computed into the store: a whole ``MembershipResult`` into a version
(or a shard's part of one), and a computed shard with its report (a fresh attempt replaces
whatever an earlier attempt wrote)."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from membership_pipeline.backfill.shards import ShardOutcome
from membership_pipeline.process_memory import peak_rss_mb
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.bitmap_writer import BitmapWriter
from membership_pipeline.storage.identity_answers import column_keys

if TYPE_CHECKING:
    from membership_pipeline.evaluation import MembershipResult

MISMATCHES_KEPT = 20  # per shard, in its report


def stage_membership_result(
    shadow: BitmapWriter, result: MembershipResult, *, with_universe: bool = True
) -> None:
    """Universe, every segment (bitmap or failure) and the atoms shared by several segments.
    Without the universe (an incremental version shares its base's), only its size is kept;
    with it, the answers by identity a later delta reads."""
    from membership_pipeline.evaluation.bitmaps import membership_matrix  # compiled: in steps

    if with_universe:
        shadow.add_universe(result.universe)
        keys = column_keys([*result.segments, *result.failures])
        ids = np.frombuffer(result.universe.to_array(), dtype=np.uint32)
        columns = [result.universe, *(result.segments.get(key) for key in keys[1:])]
        shadow.add_answers(ids, membership_matrix(ids, columns), keys)
    else:
        shadow.identity_count = len(result.universe)
    for key, members in result.segments.items():
        shadow.add_segment(key, result.segment_names.get(key), members)
    for key, failure in result.failures.items():
        shadow.add_failed_segment(
            key, result.segment_names.get(key), failure.reason_code, str(failure)
        )
    for atom, members in result.shared_atoms.items():
        # Labels can be long; the key is a stable digest of the label, the label its name.
        key = hashlib.sha256(atom.label.encode()).hexdigest()[:32]
        shadow.add_atom(key, atom.label, members)


def stage_shard(store: MembershipStore, outcome: ShardOutcome) -> dict[str, Any]:
    """Write the shard's bitmaps into the shadow version (a fresh attempt: whatever an earlier
    attempt wrote is replaced) and record its report; returns the report."""
    started = time.perf_counter()
    writer = store.shard_writer(outcome.plan, outcome.spec)
    stage_membership_result(writer, outcome.result, with_universe=not outcome.plan.incremental)
    seconds = outcome.seconds | {"write": time.perf_counter() - started}
    audit = outcome.audit
    report = {
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "identities": len(outcome.result.universe),
        "trait_rows": outcome.trait_rows,
        "trait_keys_read": list(outcome.trait_keys),
        "unreadable_traits": outcome.unreadable_traits,
        "segments": len(outcome.result.segments),
        "failed_segments": len(outcome.result.failures),
        "audit": {
            "identities": audit.identities,
            "pairs": audit.pairs,
            "mismatch_count": audit.mismatch_count,
            "mismatches": [list(m) for m in audit.mismatches[:MISMATCHES_KEPT]],
        },
        "attempt": writer.attempt,
        "peak_rss_mb": round(peak_rss_mb()),  # of the step's process (one per step, multiprocess)
    }
    writer.finish(now=store.clock(), report=report)
    return report
