"""The dispatch policy, pure and Dagster-free: given the pending requests and what the world
looks like now, decide what each request becomes. Every request gets exactly one decision.

Order of the rules, per tick:
1. **Max age / attempts**: a request older than ``max_age``, or past its ``max_attempts``, is
   dropped (reported).
2. **Coalesce**: per environment, requests whose windows overlap or lie within
   ``coalesce_window`` of each other merge into one covering the union; it keeps the earliest
   created-at and the most urgent reason (the others are reported as coalesced into it). Their
   segment sets merge too: a full request makes the merge full. Deltas merge into one delta;
   with segment edits (and no full request) they are one delta carrying the edits, whose
   backfill does both (the edited segments on every identity, the changed identities on every
   segment) in one version.
   **Escalate**: a request naming more than ``incremental_max_share`` of the environment's
   segments becomes a full backfill (every decision says its mode and why).
3. In urgency order, each merged request is **dedup-suppressed** if its dedup key is locked,
   **deferred** (kept queued) if its environment is running or cooling down, or has already
   been launched this tick, **rate-limited**
   (kept queued) if its organisation reached its cap (deltas have a cap of their own)
   in the rolling minute, else **published**: launched, its dedup key locked for ``dedup_ttl``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import groupby
from typing import Literal

from membership_pipeline.dispatch.requests import BackfillRequest

RATE_WINDOW = timedelta(minutes=1)


class Outcome(StrEnum):
    PUBLISHED = "published"
    COALESCED = "coalesced"
    DEDUP_SUPPRESSED = "dedup-suppressed"
    DEFERRED_RUNNING = "deferred-running"
    DEFERRED_COOLDOWN = "deferred-cooldown"
    RATE_LIMITED = "rate-limited"
    DROPPED_STALE = "dropped-stale"
    DROPPED_MAX_ATTEMPTS = "dropped-max-attempts"

    @property
    def stays_queued(self) -> bool:
        return self in {Outcome.DEFERRED_RUNNING, Outcome.DEFERRED_COOLDOWN, Outcome.RATE_LIMITED}


@dataclass(frozen=True)
class Decision:
    job_id: str
    environment: str
    organisation: str
    outcome: Outcome
    detail: str
    request: BackfillRequest  # for a merged request, the merged form
    into: str | None = None  # coalesced: the job id it was merged into
    mode_detail: str = ""  # why the request's backfill is full or incremental

    @property
    def mode(self) -> str:
        return self.request.mode


@dataclass(frozen=True)
class PolicySettings:
    coalesce_window: timedelta = timedelta(minutes=5)
    dedup_ttl: timedelta = timedelta(minutes=10)
    launches_per_organisation_per_minute: int = 10
    organisation_caps: Mapping[str, int] = field(default_factory=dict)  # 0 = deny-listed
    max_age: timedelta = timedelta(hours=24)
    incremental_max_share: float = 0.5
    # Deltas cost what changed (about a second each), and one environment under steady SDK
    # writes makes one every few seconds: they count against a cap of their own, so a burst of
    # writes neither waits behind the full-backfill cap nor uses it up.
    delta_launches_per_organisation_per_minute: int = 60

    def cap(self, organisation: str, delta: bool = False) -> int:
        """An organisation's launches per rolling minute (a deny-listed one launches nothing)."""
        cap = self.organisation_caps.get(organisation, self.launches_per_organisation_per_minute)
        if delta:
            return 0 if cap == 0 else self.delta_launches_per_organisation_per_minute
        return cap


@dataclass(frozen=True)
class WorldView:
    """What the policy needs to know at ``now``."""

    guarded: Mapping[str, tuple[Literal["running", "cooldown"], str]]  # env → (why, detail)
    dedup_locks: Mapping[str, datetime]  # dedup key → lock expiry
    recent_launches: Sequence[tuple[str, datetime]]  # (organisation, launched at): not deltas
    recent_delta_launches: Sequence[tuple[str, datetime]] = ()  # counted against their own cap


@dataclass
class TickResult:
    decisions: list[Decision]

    @property
    def launches(self) -> list[BackfillRequest]:
        return [d.request for d in self.decisions if d.outcome is Outcome.PUBLISHED]

    @property
    def still_queued(self) -> list[BackfillRequest]:
        return [d.request for d in self.decisions if d.outcome.stays_queued]

    def summary(self) -> str:
        counts = Counter(d.outcome.value for d in self.decisions)
        return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no requests"


def decide(
    pending: Iterable[BackfillRequest], world: WorldView, settings: PolicySettings, now: datetime
) -> TickResult:
    decisions: list[Decision] = []
    alive: list[BackfillRequest] = []
    for request in pending:
        if request.attempt > request.max_attempts:
            decisions.append(
                _decided(
                    request,
                    Outcome.DROPPED_MAX_ATTEMPTS,
                    f"attempt {request.attempt} of {request.max_attempts}",
                )
            )
        elif now - request.created_at > settings.max_age:
            decisions.append(
                _decided(
                    request,
                    Outcome.DROPPED_STALE,
                    f"created {request.created_at.isoformat()}, older than {settings.max_age}",
                )
            )
        else:
            alive.append(request)
    merged, absorbed = _coalesce(alive, settings.coalesce_window)
    escalated = [escalate(r, settings.incremental_max_share) for r in merged]
    merged = [request for request, _ in escalated]
    by_job = {request.job_id: request for request in merged}
    mode_details = {request.job_id: detail for request, detail in escalated}
    absorbed = [
        dataclasses.replace(d, request=by_job[d.into or ""], mode_detail=mode_details[d.into or ""])
        for d in absorbed
    ]
    decisions.extend(absorbed)

    launched_orgs = Counter(
        (org, delta)
        for delta, launches in ((False, world.recent_launches), (True, world.recent_delta_launches))
        for org, at in launches
        if now - at < RATE_WINDOW
    )
    launched_envs: set[str] = set()
    for request in sorted(merged, key=_priority):
        lock = world.dedup_locks.get(request.dedup_key)
        guarded = world.guarded.get(request.environment)
        if lock is not None and lock > now:
            outcome, detail = (
                Outcome.DEDUP_SUPPRESSED,
                f"{request.dedup_key} locked until {lock.isoformat()}",
            )
        elif request.environment in launched_envs:
            outcome, detail = Outcome.DEFERRED_RUNNING, "launched this tick"
        elif guarded is not None and not (request.force and guarded[0] == "cooldown"):
            kind, detail = guarded
            outcome = Outcome.DEFERRED_RUNNING if kind == "running" else Outcome.DEFERRED_COOLDOWN
        elif launched_orgs[request.organisation, request.delta] >= (
            cap := settings.cap(request.organisation, request.delta)
        ):
            outcome = Outcome.RATE_LIMITED
            detail = f"organisation {request.organisation}: cap {cap}/min" + (
                " (deltas)" if request.delta else ""
            )
        else:
            outcome, detail = Outcome.PUBLISHED, f"reason {request.reason.value}"
            launched_orgs[request.organisation, request.delta] += 1
            launched_envs.add(request.environment)
        decisions.append(_decided(request, outcome, detail, mode_details[request.job_id]))
    return TickResult(decisions)


def escalate(request: BackfillRequest, max_share: float) -> tuple[BackfillRequest, str]:
    """The request, made full when its segment set is most of the environment; and why its
    backfill is full, incremental or delta."""
    if request.segments is None:
        if request.delta:
            return request, "delta: the identities captured as changed, on every segment"
        return request, "full: identities, traits or the whole environment"
    count, total = len(request.segments), request.segment_total
    if total is not None and count > max_share * max(total, 1):
        return (
            dataclasses.replace(request, segments=None, delta=False),
            f"full: {count} of {total} segments changed (more than {max_share:.0%})",
        )
    of = f" of {total}" if total is not None else ""
    if request.delta:
        return request, (
            "delta: the identities captured as changed, on every segment, and "
            f"{count}{of} edited segments on every identity"
        )
    return request, f"incremental: {count} segments changed{of}"


def _priority(request: BackfillRequest) -> tuple[int, datetime, str]:
    return (request.reason.urgency, request.created_at, request.job_id)


def _decided(
    request: BackfillRequest, outcome: Outcome, detail: str, mode_detail: str = ""
) -> Decision:
    return Decision(
        request.job_id,
        request.environment,
        request.organisation,
        outcome,
        detail,
        request,
        mode_detail=mode_detail,
    )


def _merged_segments(run: Sequence[BackfillRequest]) -> tuple[str, ...] | None:
    """The edits' segments (None: a full request makes the merge full; deltas alone name
    none)."""
    if any(r.segments is None and not r.delta for r in run):
        return None
    edited = {k for r in run for k in r.segments or ()}
    if not edited:
        return None
    return tuple(sorted(edited, key=lambda k: (len(k), k)))


def _coalesce(
    requests: list[BackfillRequest], window: timedelta
) -> tuple[list[BackfillRequest], list[Decision]]:
    merged: list[BackfillRequest] = []
    absorbed: list[Decision] = []
    by_environment = sorted(
        requests, key=lambda r: (r.environment, r.window_start, r.window_end, r.job_id)
    )
    for _, group in groupby(by_environment, key=lambda r: r.environment):
        runs: list[list[BackfillRequest]] = []
        end = None
        for request in group:
            if runs and end is not None and request.window_start <= end + window:
                runs[-1].append(request)
                end = max(end, request.window_end)
            else:
                runs.append([request])
                end = request.window_end
        for run in runs:
            keeper = min(run, key=lambda r: (r.created_at, r.job_id))
            if len(run) == 1:
                merged.append(keeper)
                continue
            union = dataclasses.replace(
                keeper,
                window_start=min(r.window_start for r in run),
                window_end=max(r.window_end for r in run),
                reason=min((r.reason for r in run), key=lambda reason: reason.urgency),
                attempt=max(r.attempt for r in run),
                force=any(r.force for r in run),
                segments=_merged_segments(run),
                # Deltas merge into one delta (their identities are all pending in the store),
                # carrying any segment edits; a full request makes the merge full.
                delta=any(r.delta for r in run)
                and not any(r.segments is None and not r.delta for r in run),
                segment_total=max((r.segment_total or 0 for r in run), default=0) or None,
                coalesced=tuple(
                    sorted(
                        {
                            *keeper.coalesced,
                            *(j for r in run if r is not keeper for j in (r.job_id, *r.coalesced)),
                        }
                    )
                ),
            )
            merged.append(union)
            absorbed.extend(
                Decision(
                    r.job_id,
                    r.environment,
                    r.organisation,
                    Outcome.COALESCED,
                    f"merged into {keeper.job_id}",
                    union,
                    into=keeper.job_id,
                )
                for r in run
                if r is not keeper
            )
    return merged, absorbed
