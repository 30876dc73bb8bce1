"""The guard a sensor or schedule applies before it launches a backfill: no run for an environment
whose backfill is running or whose last one is within the cooldown. (A run launched anyway —
the UI, the CLI — meets the same rule in the store's atomic claim.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

from membership_pipeline.storage import MembershipStore
from membership_pipeline.structured_logging import get_logger

log = get_logger("backfill")

REASON_TAG = "membership/reason"
MAX_RUNTIME_SECONDS = 4 * 3600  # dagster/max_runtime: a hung run is stopped, then reconciled


@dataclass
class GuardedLaunches:
    run_requests: list[dg.RunRequest] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # environment → why not

    def skip_reason(self) -> dg.SkipReason:
        shown = "; ".join(f"{env}: {why}" for env, why in list(self.refused.items())[:10])
        more = f" (+{len(self.refused) - 10} more)" if len(self.refused) > 10 else ""
        return dg.SkipReason(f"no backfill launched. {shown}{more}" if shown else "nothing to do")


def guarded_launches(
    store: MembershipStore, environment_keys: Iterable[str], reason: str
) -> GuardedLaunches:
    launches = GuardedLaunches()
    for environment_key in environment_keys:
        refused = store.refusal(environment_key)
        why = None
        if refused is not None and refused.reason == "running":
            why = f"running (claimed by {refused.holder})"
        elif refused is not None:
            assert refused.retry_after is not None
            why = f"cooldown ({refused.retry_after.total_seconds():.0f}s left)"
        if why is not None:
            launches.refused[environment_key] = why
            log.info(
                "segment_membership.backfill.guarded",
                environment=environment_key,
                reason=reason,
                detail=why,
            )
            continue
        launches.run_requests.append(
            dg.RunRequest(
                # Unique per request: a run key reused would suppress the environment for good.
                run_key=f"{reason}:{environment_key}:{uuid.uuid4().hex[:12]}",
                partition_key=environment_key,
                tags={REASON_TAG: reason, "dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
            )
        )
    return launches
