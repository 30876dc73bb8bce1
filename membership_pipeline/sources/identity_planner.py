"""What planning a backfill's shards reads, in one snapshot: the environment's segments, its
identity count and largest id, the ids at every k-th rank (one ordered scan of the environment's
ids on the server, whatever its size; only the boundaries travel), the trait table's largest id
and, when asked, how many of the environment's traits lie above a given trait id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from membership_pipeline.model.environment import EnvironmentInfo
from membership_pipeline.sources.segment_reader import read_segments


@dataclass(frozen=True)
class IdentityPlan:
    info: EnvironmentInfo
    segments: list[dict[str, Any]]
    identity_count: int
    max_id: int | None
    boundaries: list[int]
    every: int
    as_of: datetime
    max_trait_id: int | None = None  # the trait table's largest id (every environment's)
    # The environment's traits above ``traits_after`` (None: not asked, or more rows above it
    # than the check reads).
    new_traits: int | None = None
    # The oldest source transaction still running when the snapshot was taken (PostgreSQL; see
    # ``model.slot_coverage``).
    snapshot_xmin: int | None = None


def plan_identities(
    conn: sa.Connection,
    info: EnvironmentInfo,
    every: int,
    as_of: datetime,
    *,
    traits_after: int | None = None,
    trait_check_rows: int = 1_000_000,
) -> IdentityPlan:
    """In ``conn``'s snapshot: the ids at ranks 0, ``every``, 2 × ``every``, ...; with
    ``traits_after``, how many of the environment's traits lie above that trait id (a
    primary-key range scan of at most ``trait_check_rows`` rows)."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    xmin = snapshot_xmin(conn)  # the snapshot's first statement: it takes the snapshot
    totals = conn.execute(
        sa.text(
            "SELECT count(*) AS n, min(id) AS min_id, max(id) AS max_id "
            "FROM environments_identity WHERE environment_id = :environment_id"
        ),
        {"environment_id": info.id},
    ).one()
    if totals.n <= every:  # one shard: no need to rank the ids
        boundaries = [] if totals.min_id is None else [int(totals.min_id)]
    else:
        ranked = conn.execute(
            sa.text(
                """
                SELECT id FROM (
                    SELECT id, row_number() OVER (ORDER BY id) - 1 AS rank
                    FROM environments_identity WHERE environment_id = :environment_id
                ) ranked
                WHERE rank % :every = 0 ORDER BY id
                """
            ),
            {"environment_id": info.id, "every": every},
        ).scalars()
        boundaries = [int(b) for b in ranked]
    segments = read_segments(conn, info)
    max_trait_id = conn.execute(sa.text("SELECT max(id) FROM environments_trait")).scalar()
    new_traits = None
    if traits_after is not None:
        new_traits = traits_above(conn, info.id, traits_after, trait_check_rows)
    return IdentityPlan(
        info=info,
        segments=segments,
        identity_count=int(totals.n),
        max_id=None if totals.max_id is None else int(totals.max_id),
        boundaries=boundaries,
        every=every,
        as_of=as_of,
        max_trait_id=None if max_trait_id is None else int(max_trait_id),
        new_traits=new_traits,
        snapshot_xmin=xmin,
    )


def snapshot_xmin(conn: sa.Connection) -> int | None:
    """In a snapshot transaction: the oldest source transaction still running when the snapshot
    was taken (every lower id had ended); None where the source is not PostgreSQL."""
    if conn.dialect.name != "postgresql":
        return None
    return int(
        conn.execute(
            sa.text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        ).scalar_one()
    )


def traits_above(
    conn: sa.Connection, environment_id: int, after_id: int, max_rows: int
) -> int | None:
    """The environment's traits with an id above ``after_id``: a primary-key range scan of the
    rows above it (every environment's), each finding its environment by one primary-key lookup
    of its identity; None when more than ``max_rows`` rows lie above it."""
    scanned, own = conn.execute(
        sa.text(
            """
            SELECT count(*) AS scanned,
                   coalesce(sum(CASE WHEN i.environment_id = :environment_id THEN 1 ELSE 0 END), 0)
            FROM (SELECT identity_id FROM environments_trait WHERE id > :after_id
                  ORDER BY id LIMIT :limit) above
            LEFT JOIN environments_identity i ON i.id = above.identity_id
            """
        ),
        {"environment_id": environment_id, "after_id": after_id, "limit": max_rows + 1},
    ).one()
    return None if scanned > max_rows else int(own)


@dataclass(frozen=True)
class EnvironmentState:
    """What a delta backfill plans from (no identity scan): the segments and the trait table's
    largest id, in one snapshot."""

    info: EnvironmentInfo
    segments: list[dict[str, Any]]
    max_trait_id: int | None
    as_of: datetime


def environment_state(
    conn: sa.Connection, info: EnvironmentInfo, as_of: datetime
) -> EnvironmentState:
    max_trait_id = conn.execute(sa.text("SELECT max(id) FROM environments_trait")).scalar()
    return EnvironmentState(
        info, read_segments(conn, info), None if max_trait_id is None else int(max_trait_id), as_of
    )
