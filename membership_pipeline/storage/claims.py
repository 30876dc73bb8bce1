"""The backfill claim: who may write an environment's next version, and when.

``claim`` is a compare-and-set on the environment's row: it succeeds only when the environment is
not ``running`` and its last backfill started and completed longer ago than the cooldown
(``force`` skips the cooldown, never the running guard). A refused claim changes nothing and
returns a falsy ``ClaimRefused`` that says why. A claim carries its owner and a lease the owner
renews; ``reconcile_stale_claims`` fails claims whose owner is gone or whose lease has lapsed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa

from membership_pipeline.database.engines import StoreDatabase, insert_if_absent
from membership_pipeline.model.errors import ClaimLost
from membership_pipeline.storage.environment_metadata import (
    BackfillStatus,
    EnvironmentMembershipMetadata,
    read_metadata,
)
from membership_pipeline.storage.tables import environment, version
from membership_pipeline.structured_logging import get_logger

log = get_logger("store")

ERROR_SUMMARY_CHARS = 2000
RUNNING = BackfillStatus.RUNNING.value


@dataclass(frozen=True)
class Claim:
    """The right to write and publish one version of an environment."""

    environment_key: str
    owner: str
    token: str
    started_at: datetime
    lease_expires_at: datetime

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class ClaimRefused:
    """Why a claim was refused; falsy, so ``if claim := store.claim(...)`` reads naturally."""

    environment_key: str
    reason: Literal["running", "cooldown"]
    retry_after: timedelta | None  # cooldown: time left; running: None (until it finishes)
    holder: str | None  # running: the owner of the claim that blocks
    lease_expired: bool  # running, but the holder stopped renewing its lease

    def __bool__(self) -> bool:
        return False

    def describe(self) -> str:
        if self.reason == "cooldown":
            assert self.retry_after is not None
            return f"in cooldown for another {self.retry_after.total_seconds():.0f}s"
        lapsed = " (its lease has lapsed: reconcile it)" if self.lease_expired else ""
        return f"a backfill is running, claimed by {self.holder}{lapsed}"


@dataclass(frozen=True)
class ReconciledClaim:
    environment_key: str
    owner: str | None
    reason: Literal["owner_gone", "lease_expired"]


def claim(
    database: StoreDatabase,
    environment_key: str,
    owner: str,
    *,
    now: datetime,
    cooldown: timedelta,
    lease: timedelta,
    force: bool = False,
) -> Claim | ClaimRefused:
    if not environment_key:
        raise ValueError("environment_key must be a non-empty string")
    token = uuid.uuid4().hex
    cutoff = now - cooldown
    conditions = [
        environment.c.environment_key == environment_key,
        sa.or_(
            environment.c.last_backfill_status.is_(None),
            environment.c.last_backfill_status != RUNNING,
        ),
    ]
    if not force:
        conditions += [
            sa.or_(
                environment.c.last_backfill_started_at.is_(None),
                environment.c.last_backfill_started_at <= cutoff,
            ),
            sa.or_(
                environment.c.last_backfill_completed_at.is_(None),
                environment.c.last_backfill_completed_at <= cutoff,
            ),
        ]
    with database.writer.begin() as conn:
        insert_if_absent(conn, environment, {"environment_key": environment_key, "updated_at": now})
        won = conn.execute(
            environment.update()
            .where(*conditions)
            .values(
                last_backfill_status=RUNNING,
                last_backfill_started_at=now,
                claim_owner=owner,
                claim_token=token,
                claim_lease_expires_at=now + lease,
                updated_at=now,
            )
        ).rowcount
        current = None if won else read_metadata(conn, environment_key)
    if won:
        log.info(
            "segment_membership.store.claimed",
            environment=environment_key,
            owner=owner,
            forced=force,
        )
        return Claim(environment_key, owner, token, now, now + lease)
    assert current is not None
    refused = refusal(current, now=now, cooldown=cooldown)
    if refused is None:  # the row changed since the update (a race): report 0 s of cooldown
        refused = ClaimRefused(environment_key, "cooldown", timedelta(0), None, lease_expired=False)
    log.info(
        "segment_membership.store.claim_refused",
        environment=environment_key,
        owner=owner,
        reason=refused.reason,
        detail=refused.describe(),
    )
    return refused


def refusal(
    current: EnvironmentMembershipMetadata | None, *, now: datetime, cooldown: timedelta
) -> ClaimRefused | None:
    """Why a claim on this environment would be refused now (None: it would not). What the
    compare-and-set in ``claim`` decides atomically, for callers that only look (the sensors)."""
    if current is None:
        return None
    if current.last_backfill_status is BackfillStatus.RUNNING:
        expires = current.claim_lease_expires_at
        return ClaimRefused(
            current.environment_key,
            "running",
            None,
            current.claim_owner,
            lease_expired=expires is not None and expires < now,
        )
    times = (current.last_backfill_started_at, current.last_backfill_completed_at)
    last = max((t for t in times if t is not None), default=None)
    if last is None or last + cooldown <= now:
        return None
    return ClaimRefused(
        current.environment_key, "cooldown", last + cooldown - now, None, lease_expired=False
    )


def running_claim(conn: sa.Connection, environment_key: str, owner: str) -> Claim | None:
    """The running claim of ``owner`` on the environment, as its holder would have it (another
    step or host of the same backfill picks it up); None when it does not hold one."""
    row = conn.execute(
        sa.select(environment).where(
            environment.c.environment_key == environment_key,
            environment.c.claim_owner == owner,
            environment.c.last_backfill_status == RUNNING,
        )
    ).one_or_none()
    if row is None or row.claim_token is None:
        return None
    return Claim(
        environment_key,
        owner,
        row.claim_token,
        row.last_backfill_started_at,
        row.claim_lease_expires_at,
    )


def renew_lease(database: StoreDatabase, held: Claim, *, now: datetime, lease: timedelta) -> Claim:
    """Heartbeat: extend the lease of a claim that still holds, or raise ``ClaimLost``."""
    expires = now + lease
    with database.writer.begin() as conn:
        renewed = conn.execute(
            environment.update()
            .where(_holds(held.environment_key, held.token))
            .values(claim_lease_expires_at=expires, updated_at=now)
        ).rowcount
    if not renewed:
        raise ClaimLost(f"the claim of {held.owner} on {held.environment_key!r} no longer holds")
    return Claim(held.environment_key, held.owner, held.token, held.started_at, expires)


def fail(database: StoreDatabase, held: Claim, error: str, *, now: datetime) -> bool:
    """Mark the backfill failed and discard its shadow versions; the published version stays.
    Returns False when the claim had already been released (e.g. reconciled)."""
    return _fail_token(database, held.environment_key, held.token, error, now=now, discard=True)


def reconcile_stale_claims(
    database: StoreDatabase,
    *,
    now: datetime,
    is_owner_alive: Callable[[str | None], bool | None] | None = None,
) -> list[ReconciledClaim]:
    """Fail running claims whose owner is gone. ``is_owner_alive`` answers True (alive: leave
    it), False (gone: fail it) or None (unknown); without an answer, a lapsed lease decides.
    Their shadow versions are left to ``collect_garbage`` (deleting them can take a while)."""
    with database.reader.connect() as conn:
        running = conn.execute(
            sa.select(
                environment.c.environment_key,
                environment.c.claim_owner,
                environment.c.claim_token,
                environment.c.claim_lease_expires_at,
            ).where(environment.c.last_backfill_status == RUNNING)
        ).all()
    reconciled = []
    for row in running:
        alive = is_owner_alive(row.claim_owner) if is_owner_alive else None
        if alive is False:
            reason: Literal["owner_gone", "lease_expired"] = "owner_gone"
        elif alive is None and row.claim_lease_expires_at < now:
            reason = "lease_expired"
        else:
            continue
        lapsed = f"{row.claim_lease_expires_at:%Y-%m-%d %H:%M:%S}Z"
        message = (
            f"the backfill's owner {row.claim_owner} is gone"
            if reason == "owner_gone"
            else f"the lease of {row.claim_owner} lapsed at {lapsed}"
        )
        token = row.claim_token
        if _fail_token(database, row.environment_key, token, message, now=now, discard=False):
            reconciled.append(ReconciledClaim(row.environment_key, row.claim_owner, reason))
            log.warning(
                "segment_membership.store.reconciled",
                environment=row.environment_key,
                owner=row.claim_owner,
                reason=reason,
            )
    return reconciled


def _holds(environment_key: str, token: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        environment.c.environment_key == environment_key,
        environment.c.claim_token == token,
        environment.c.last_backfill_status == RUNNING,
    )


def end_claim(
    environment_key: str, token: str, status: BackfillStatus, *, now: datetime, error: str | None
) -> sa.Update:
    """The update that ends a claim still held, with the backfill's outcome (0 rows if not)."""
    return (
        environment.update()
        .where(_holds(environment_key, token))
        .values(
            last_backfill_status=status.value,
            last_backfill_completed_at=now,
            last_error=error,
            claim_token=None,
            claim_lease_expires_at=None,
            updated_at=now,
        )
    )


def _fail_token(
    database: StoreDatabase,
    environment_key: str,
    token: str,
    error: str,
    *,
    now: datetime,
    discard: bool,
) -> bool:
    summary = error if len(error) <= ERROR_SUMMARY_CHARS else error[: ERROR_SUMMARY_CHARS - 1] + "…"
    with database.writer.begin() as conn:
        failed = conn.execute(
            end_claim(environment_key, token, BackfillStatus.FAILED, now=now, error=summary)
        ).rowcount
        # The shadow versions of this claim are abandoned whether or not it still held.
        discarded = 0
        if discard:
            discarded = conn.execute(
                version.delete().where(
                    version.c.claim_token == token, version.c.state.in_(("shadow", "sealed"))
                )
            ).rowcount
    if failed:
        log.error(
            "segment_membership.store.failed",
            environment=environment_key,
            error=summary,
            shadow_versions_discarded=discarded,
        )
    return bool(failed)
