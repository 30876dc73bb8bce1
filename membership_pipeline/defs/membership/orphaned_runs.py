"""Ends the Dagster runs of backfills whose process is gone, with the store's verdict.

A run's guard tag (``membership/guard``: ``claiming``, then ``claimed``) marks a run that tried
to claim its environment; ``dispatch.orphaned_runs`` decides from the store whether such a run,
still "started" in Dagster, can only be a dead one. Ending it is Dagster's own
``report_run_failed`` (the run failure sensor then retries a dispatched backfill that did not
publish), with ``membership/store_verdict``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from membership_pipeline.defs.membership.backfill_events import CLAIMED, CLAIMING, GUARD_TAG
from membership_pipeline.dispatch.orphaned_runs import StoreVerdict, verdict_for_quiet_run
from membership_pipeline.dispatch.run_tags import PARTITION_TAG
from membership_pipeline.storage import MembershipStore
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")

VERDICT_TAG = "membership/store_verdict"


@dataclass(frozen=True)
class EndedRun:
    run_id: str
    environment_key: str
    verdict: StoreVerdict


def end_orphaned_runs(
    instance: dg.DagsterInstance, store: MembershipStore, grace: timedelta
) -> list[EndedRun]:
    tried_to_claim = {GUARD_TAG: [CLAIMING, CLAIMED]}
    started = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags=tried_to_claim)
    )
    ended = []
    for run in started:
        environment_key = run.tags.get(PARTITION_TAG)
        last = instance.get_records_for_run(run.run_id, limit=1, ascending=False).records
        if environment_key is None or not last:
            continue
        quiet_for = timedelta(seconds=time.time() - last[0].timestamp)
        verdict = verdict_for_quiet_run(
            run.run_id,
            metadata=store.metadata(environment_key),
            quiet_for=quiet_for,
            grace=grace,
        )
        if verdict is None:
            continue
        instance.add_run_tags(run.run_id, {VERDICT_TAG: verdict.kind})
        instance.report_run_failed(
            run,
            f"The run's process is gone (no event for {quiet_for.total_seconds():.0f} s); "
            f"the membership store says {verdict.detail}.",
        )
        log.warning(
            "segment_membership.backfill.run_ended",
            environment=environment_key,
            run_id=run.run_id,
            verdict=verdict.kind,
            detail=verdict.detail,
            quiet_seconds=round(quiet_for.total_seconds()),
        )
        ended.append(EndedRun(run.run_id, environment_key, verdict))
    return ended
