"""One batch of Flagsmith's replication stream, read as what a membership store needs: which
identities changed in which environment (a trait inserted, updated or deleted; an identity
created or deleted), which projects' segments changed, and the position after the last whole
transaction read.

A trait row names its identity, not its environment: the batch's own identity rows tell, then
one primary-key lookup per batch on the source. A change the lookup cannot place (its identity
deleted in an earlier batch, which already recorded it) is skipped and said once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa

from membership_pipeline.sources.pgoutput import (
    PgOutputDecoder,
    RowChange,
    Truncate,
    parse_lsn,
)
from membership_pipeline.sources.replication import (
    CAPTURED_TABLES,
    IDENTITY_TABLE,
    TRAIT_TABLE,
    peek,
)


@dataclass
class StreamBatch:
    end: int | None = None  # after the last whole transaction read (None: nothing new)
    # environment id → identity id → the position (transaction end) that last changed it
    identities: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    segment_projects: set[int] = field(default_factory=set)
    truncated: list[str] = field(default_factory=list)  # captured tables truncated: refresh all
    skipped: list[str] = field(default_factory=list)  # one line per change that was skipped
    messages: int = 0
    transactions: int = 0
    # The WAL position before the peek, when the peek read everything up to the end of the WAL
    # (fewer messages than its bound): no transaction committed before it is left unread, so
    # the slot may be confirmed up to it even when nothing the publication covers changed
    # (else the slot would hold the cluster's WAL, and each peek decode it, until a change).
    read_through: int | None = None
    already_recorded: int = 0  # transactions at or below the store's position (a crash's repeat)

    @property
    def changed_identities(self) -> int:
        return sum(len(ids) for ids in self.identities.values())


def read_batch(
    conn: sa.Connection, slot: str, publication: str, max_changes: int, after: int | None
) -> StreamBatch:
    """Peek up to about ``max_changes`` messages; transactions ending at or before ``after``
    (what the store already recorded) are left out."""
    batch = StreamBatch()
    decoder = PgOutputDecoder()
    traits: list[tuple[int, int]] = []  # (identity id, position): environment looked up below
    rules: dict[int, int] = {}  # segment rule id → position
    # Flushed WAL only: the peek decodes up to the flush position at its start, never less.
    flushed = sa.text("SELECT pg_current_wal_flush_lsn()::text")
    before = parse_lsn(conn.execute(flushed).scalar_one())
    for position, message in peek(conn, slot, publication, max_changes):
        batch.messages += 1
        done = decoder.feed(position, message)
        if done is None:
            continue
        batch.end = done.end
        if after is not None and done.end <= after:
            batch.already_recorded += 1
            continue
        batch.transactions += 1
        for change in done.changes:
            if isinstance(change, Truncate):
                batch.truncated.extend(t for t in change.tables if t in CAPTURED_TABLES)
                continue
            _place(batch, change, done.end, traits, rules)
    if batch.messages < max_changes:
        batch.read_through = before
    _place_traits(conn, batch, traits)
    _place_rules(conn, batch, rules)
    return batch


def _place(
    batch: StreamBatch,
    change: RowChange,
    position: int,
    traits: list[tuple[int, int]],
    rules: dict[int, int],
) -> None:
    row = change.new if change.new is not None else change.old or {}
    if change.table == IDENTITY_TABLE:
        identity, environment = row.get("id"), row.get("environment_id")
        if identity is None or environment is None:
            batch.skipped.append(f"{change.kind} of an identity without id or environment")
            return
        batch.identities[int(environment)][int(identity)] = position
    elif change.table == TRAIT_TABLE:
        identities = {row.get("identity_id")}
        if change.kind == "update" and change.old is not None:  # the trait moved identity
            identities.add(change.old.get("identity_id"))
        for identity in identities - {None}:
            traits.append((int(identity), position))  # type: ignore[arg-type]
    elif change.table == "segments_segment":
        if row.get("project_id") is not None:
            batch.segment_projects.add(int(row["project_id"]))  # type: ignore[arg-type]
    elif change.table == "segments_segmentrule":
        parent = row.get("segment_id")
        if parent is not None:
            rules[-int(parent)] = position  # a negative key: a segment id, not a rule id
        elif row.get("rule_id") is not None:
            rules[int(row["rule_id"])] = position  # type: ignore[arg-type]
    elif change.table == "segments_condition" and row.get("rule_id") is not None:
        rules[int(row["rule_id"])] = position  # type: ignore[arg-type]


def _place_traits(conn: sa.Connection, batch: StreamBatch, traits: list[tuple[int, int]]) -> None:
    known = {
        identity: environment for environment, ids in batch.identities.items() for identity in ids
    }
    unknown = sorted({identity for identity, _ in traits if identity not in known})
    if unknown:
        rows = conn.execute(
            sa.text(
                "SELECT id, environment_id FROM environments_identity "
                "WHERE id = ANY(CAST(:ids AS bigint[]))"
            ),
            {"ids": unknown},
        )
        known.update({int(r.id): int(r.environment_id) for r in rows})
    for identity, position in traits:
        environment = known.get(identity)
        if environment is None:
            batch.skipped.append(f"a trait of identity {identity}, which no longer exists")
            continue
        held = batch.identities[environment]
        held[identity] = max(held.get(identity, 0), position)


def _place_rules(conn: sa.Connection, batch: StreamBatch, rules: dict[int, int]) -> None:
    """Segment rules and conditions → their segment's project (rules nest: walk up)."""
    if not rules:
        return
    segments = [-key for key in rules if key < 0]
    rule_ids = [key for key in rules if key > 0]
    projects = conn.execute(
        sa.text(
            """
            WITH RECURSIVE up(id, segment_id, rule_id) AS (
                SELECT id, segment_id, rule_id FROM segments_segmentrule
                WHERE id = ANY(CAST(:rules AS bigint[]))
                UNION
                SELECT r.id, r.segment_id, r.rule_id FROM segments_segmentrule r
                JOIN up ON r.id = up.rule_id
            )
            SELECT DISTINCT s.project_id FROM segments_segment s
            WHERE s.id IN (SELECT segment_id FROM up WHERE segment_id IS NOT NULL)
               OR s.id = ANY(CAST(:segments AS bigint[]))
            """
        ),
        {"rules": rule_ids, "segments": segments},
    ).scalars()
    found = {int(p) for p in projects}
    if not found:
        batch.skipped.append(f"{len(rules)} segment rule or condition changes of unknown segments")
    batch.segment_projects |= found
