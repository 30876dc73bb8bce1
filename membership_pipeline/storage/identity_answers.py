"""The published answers by identity: for every identity of an environment, one bit per bitmap
(the universe, then each segment by key) of the version these rows describe.

A delta must know each changed identity's previous answer for every segment, to write only the
bits that flip and keep each chunk's cardinality exact. Reading them from the chunks means
reading every chunk holding a changed identity: at 10M identities, 1,000 changed identities
fall in nearly every chunk of every segment (the whole version, 360 MB). Read by identity, the
same answers are 1,000 rows of a few hundred bytes.

- A full version writes its answers beside its chunks (rows of ``rows_per_group`` consecutive
  identities, a shard its own), under its own version id; publishing it makes them **live**
  (``membership_environment.answers_*``: the version described, the id the rows are stored
  under, the column order). A failed full backfill leaves the live rows as they were.
- A delta whose base is the version the live rows describe reads its identities' rows, and
  stages their replacements under its own id; publishing it folds them in (same transaction as
  the flip), so the rows then describe the delta.
- An incremental version, or a delta with segment edits, marks the segments it evaluated on
  every identity **stale** (a delta reads those from their chunks); a rollback, or a version
  published without answers, leaves the rows describing another version, so deltas read
  chunks until the next full version.
- The garbage collector removes rows that are neither live nor staged by a version in writing.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.database.engines import StoreDatabase
from membership_pipeline.database.key_probes import key_arrays, probed_rows
from membership_pipeline.storage.tables import (
    bitmap,
    environment,
    identity_answers,
    version,
    version_plan,
)

UNIVERSE_COLUMN = ""  # the universe's key, first column
ROW_BYTES = 1536  # a row's answers stay under PostgreSQL's 2 kB TOAST threshold: stored inline
_IN_WRITING = ("shadow", "sealed")


def column_keys(segment_keys: Sequence[str]) -> list[str]:
    """The column order: the universe, then the segments by key."""
    return [UNIVERSE_COLUMN, *sorted(segment_keys)]


def rows_per_group(columns: int) -> int:
    return max(4, ROW_BYTES // ((columns + 7) // 8 + 4))


def answer_rows(
    environment_key: str, version_id: int, ids: np.ndarray, matrix: np.ndarray, columns: int
) -> list[dict[str, Any]]:
    """Rows of ``ids`` (ascending) and their answers (``matrix``: a row of packed bits per id,
    ``columns`` bits; built by ``evaluation.bitmaps.membership_matrix``)."""
    return _rows(environment_key, version_id, ids, matrix, rows_per_group(columns))


def _few_answers(ids: np.ndarray, columns: Sequence[BitMap | None]) -> np.ndarray:
    """``membership_matrix`` for a delta's identities (numpy; each column's members are among
    ``ids``, which are sorted: a binary search each, no compiled kernel needed)."""
    matrix = np.zeros((len(ids), max((len(columns) + 7) // 8, 1)), dtype=np.uint8)
    for column, members in enumerate(columns):
        if members and len(ids):
            found = np.frombuffer(members.to_array(), dtype=np.uint32)
            at = np.minimum(np.searchsorted(ids, found), len(ids) - 1)
            at = at[ids[at] == found]
            matrix[at, column >> 3] |= np.uint8(1 << (column & 7))
    return matrix


def _rows(
    environment_key: str,
    version_id: int,
    ids: np.ndarray,
    matrix: np.ndarray,
    group: int,
    replaces: int | None = None,
) -> list[dict[str, Any]]:
    return [
        {
            "environment_key": environment_key,
            "version_id": version_id,
            "first_id": int(ids[start]),
            "last_id": int(ids[min(start + group, len(ids)) - 1]),
            "identity_count": len(ids[start : start + group]),
            "ids": ids[start : start + group].tobytes(),
            "bits": matrix[start : start + group].tobytes(),
            "replaces_first_id": replaces,
        }
        for start in range(0, len(ids), group)
    ]


def record_answer_keys(conn: sa.Connection, version_id: int, keys: Sequence[str]) -> None:
    conn.execute(
        version.update()
        .where(version.c.version_id == version_id)
        .values(answer_keys=json.dumps(list(keys)))
    )


@dataclass(frozen=True)
class _LiveRow:
    first_id: int
    last_id: int
    ids: np.ndarray
    bits: np.ndarray  # identity_count × width


@dataclass
class PreviousAnswers:
    """The live rows holding (or whose id range would hold) some changed identities, as the
    delta's base published them."""

    environment_key: str
    keys: list[str]
    stale: set[str]
    rows: list[_LiveRow]
    before: np.ndarray  # the changed ids found in a row, ascending
    before_bits: np.ndarray  # their rows of bits

    def usable(self, key: str) -> bool:
        return key in self._columns and key not in self.stale

    def members(self, key: str) -> BitMap:
        """The changed identities that were members of column ``key`` (usable keys only)."""
        column = self._columns[key]
        mask = (self.before_bits[:, column >> 3] >> (column & 7)) & 1
        return BitMap(self.before[mask.astype(bool)])

    @cached_property
    def _columns(self) -> dict[str, int]:
        return {key: index for index, key in enumerate(self.keys)}


def previous_answers(
    conn: sa.Connection, environment_key: str, base_version_id: int | None, changed: BitMap
) -> PreviousAnswers | None:
    """The changed identities' answers in the base version, or None when the live rows do not
    describe it (then a delta reads chunks)."""
    state = conn.execute(
        sa.select(
            environment.c.answers_version_id,
            environment.c.answers_generation_id,
            environment.c.answers_keys,
            environment.c.answers_stale,
        ).where(environment.c.environment_key == environment_key)
    ).one_or_none()
    if state is None or base_version_id is None or state.answers_version_id != base_version_id:
        return None
    keys = json.loads(state.answers_keys)
    generation = int(state.answers_generation_id)
    starts = _row_starts(conn, environment_key, generation, changed)
    if conn.dialect.name == "postgresql":  # one index probe per row
        found = conn.execute(
            sa.text(
                "SELECT r.first_id, r.last_id, r.ids, r.bits FROM "
                f"{_probed_live_rows('first_id', 'last_id', 'ids', 'bits')} ORDER BY r.first_id"
            ),
            _probe_params(environment_key, generation, starts),
        ).all()
    else:
        found = conn.execute(
            sa.select(
                identity_answers.c.first_id,
                identity_answers.c.last_id,
                identity_answers.c.ids,
                identity_answers.c.bits,
            )
            .where(
                identity_answers.c.environment_key == environment_key,
                identity_answers.c.version_id == generation,
                identity_answers.c.first_id.in_(starts),
            )
            .order_by(identity_answers.c.first_id)
        ).all()
    width = (len(keys) + 7) // 8
    rows = [
        _LiveRow(
            int(r.first_id),
            int(r.last_id),
            np.frombuffer(r.ids, dtype=np.uint32),
            np.frombuffer(r.bits, dtype=np.uint8).reshape(-1, width),
        )
        for r in found
    ]
    # The rows cover increasing id ranges: their ids, concatenated, are sorted.
    held = np.concatenate([row.ids for row in rows]) if rows else np.zeros(0, dtype=np.uint32)
    wanted = np.frombuffer(changed.to_array(), dtype=np.uint32)
    at = np.minimum(np.searchsorted(held, wanted), max(len(held) - 1, 0))
    hit = held[at] == wanted if len(held) else np.zeros(len(wanted), dtype=bool)
    held_bits = (
        np.concatenate([row.bits for row in rows]) if rows else np.zeros((0, width), np.uint8)
    )
    return PreviousAnswers(
        environment_key,
        keys,
        set(json.loads(state.answers_stale or "[]")),
        rows,
        wanted[hit],
        held_bits[at[hit]],
    )


def _probed_live_rows(*columns: str) -> str:
    """PostgreSQL: a generation's rows whose first ids are bound, as ``r`` (see key_probes)."""
    return probed_rows(
        identity_answers, ["first_id"], columns, fixed=["environment_key", "version_id"]
    )


def _probe_params(environment_key: str, generation: int, first_ids: list[int]) -> dict:
    return {
        "environment_key": environment_key,
        "version_id": generation,
        **key_arrays(["first_id"], [(first_id,) for first_id in first_ids]),
    }


def _row_starts(
    conn: sa.Connection, environment_key: str, generation: int, changed: BitMap
) -> list[int]:
    """The first ids of the live rows the changed ids fall in: for each id, the row with the
    greatest first id at or below it (the first row for ids below every row)."""
    live = sa.and_(
        identity_answers.c.environment_key == environment_key,
        identity_answers.c.version_id == generation,
    )
    ids = [int(i) for i in changed]
    if conn.dialect.name == "postgresql":  # one index probe per id
        found = conn.execute(
            sa.text(
                "SELECT DISTINCT z.first_id FROM unnest(CAST(:ids AS bigint[])) AS c(id) "
                "LEFT JOIN LATERAL (SELECT first_id FROM membership_identity_answers a "
                "WHERE a.environment_key = :env AND a.version_id = :generation "
                "AND a.first_id <= c.id ORDER BY a.first_id DESC LIMIT 1) z ON true"
            ),
            {"ids": ids, "env": environment_key, "generation": generation},
        ).scalars()
        starts = set(found)
        if None in starts:  # ids below every row: the first row's
            starts.discard(None)
            first = conn.execute(
                sa.select(sa.func.min(identity_answers.c.first_id)).where(live)
            ).scalar()
            if first is not None:
                starts.add(first)
        return sorted(int(start) for start in starts)
    every = sorted(conn.execute(sa.select(identity_answers.c.first_id).where(live)).scalars())
    if not every:
        return []
    return sorted({every[max(bisect.bisect_right(every, i) - 1, 0)] for i in ids})


def replacement_rows(
    previous: PreviousAnswers,
    version_id: int,
    changed: BitMap,
    universe: BitMap,
    segments: Mapping[str, BitMap],
) -> list[dict[str, Any]]:
    """The delta's replacements for every live row its identities fall in (a row emptied is
    staged as a tombstone: no identities), and rows for identities no live row's range holds
    (only when there are no live rows)."""
    keys = previous.keys
    present = np.frombuffer((changed & universe).to_array(), dtype=np.uint32)
    now = _few_answers(present, [universe, *(segments.get(key) for key in keys[1:])])
    group = rows_per_group(len(keys))
    if not previous.rows:
        return _rows(previous.environment_key, version_id, present, now, group)
    # Vectorised over every touched row (a delta costs what changed, not rows × identities):
    # the rows' identities minus the changed ones, plus the present changed ones, each labelled
    # with its row (the row with the greatest first id at or below it, else the first row).
    # Sorted by id, each row's identities are contiguous: rows cover increasing id ranges.
    firsts = np.asarray([row.first_id for row in previous.rows], dtype=np.int64)
    old_ids = np.concatenate([row.ids for row in previous.rows])
    old_bits = np.concatenate([row.bits for row in previous.rows])
    changed_ids = np.frombuffer(changed.to_array(), dtype=np.uint32)
    at = np.minimum(np.searchsorted(changed_ids, old_ids), len(changed_ids) - 1)
    keep = changed_ids[at] != old_ids
    ids = np.concatenate([old_ids[keep], present])
    bits = np.concatenate([old_bits[keep], now])
    order = np.argsort(ids, kind="stable")
    ids, bits = ids[order], bits[order]
    labels = np.maximum(np.searchsorted(firsts, ids, side="right") - 1, 0)
    bounds = np.searchsorted(labels, np.arange(len(firsts) + 1))
    rows: list[dict[str, Any]] = []
    for position, row in enumerate(previous.rows):
        start, stop = bounds[position], bounds[position + 1]
        if start == stop:  # emptied: a tombstone
            rows.append(
                {
                    "environment_key": previous.environment_key,
                    "version_id": version_id,
                    "first_id": row.first_id,
                    "last_id": row.last_id,
                    "identity_count": 0,
                    "ids": b"",
                    "bits": b"",
                    "replaces_first_id": row.first_id,
                }
            )
            continue
        # a row grown past twice its size splits (new identities join the last row)
        size = group if stop - start > 2 * group else stop - start
        rows.extend(
            _rows(
                previous.environment_key, version_id, ids[start:stop], bits[start:stop], size,
                replaces=row.first_id,
            )
        )  # fmt: skip
    return rows


def publish_answers(conn: sa.Connection, environment_key: str, published: sa.Row[Any]) -> None:
    """In the flip's transaction: keep the live answers describing the published version."""
    state = conn.execute(
        sa.select(
            environment.c.answers_version_id,
            environment.c.answers_generation_id,
            environment.c.answers_stale,
        )
        .where(environment.c.environment_key == environment_key)
        .with_for_update()
    ).one()
    mode = published.mode or "full"
    values: dict[str, Any]
    if mode == "full":
        if published.answer_keys is None:  # written without answers: none describe it
            values = {"answers_version_id": None, "answers_generation_id": None}
        else:
            values = {
                "answers_version_id": published.version_id,
                "answers_generation_id": published.version_id,
                "answers_keys": published.answer_keys,
                "answers_stale": "[]",
            }
    elif state.answers_version_id is None or state.answers_version_id != published.base_version_id:
        return  # the rows describe another version: nothing to keep up to date
    elif mode == "incremental":
        reevaluated = conn.execute(
            sa.select(bitmap.c.key).where(
                bitmap.c.version_id == published.version_id,
                bitmap.c.kind == "segment",
                bitmap.c.chunk_version_id.is_(None),
            )
        ).scalars()
        stale = sorted(set(json.loads(state.answers_stale or "[]")) | set(reevaluated))
        values = {"answers_version_id": published.version_id, "answers_stale": json.dumps(stale)}
    else:
        _fold(conn, environment_key, int(state.answers_generation_id), published.version_id)
        values = {"answers_version_id": published.version_id}
        rebuilt = conn.execute(
            sa.select(version_plan.c.rebuilt_segments).where(
                version_plan.c.version_id == published.version_id
            )
        ).scalar()
        if rebuilt and json.loads(rebuilt):  # segment edits it evaluated on every identity
            stale = set(json.loads(state.answers_stale or "[]")) | set(json.loads(rebuilt))
            values["answers_stale"] = json.dumps(sorted(stale))
    conn.execute(
        environment.update()
        .where(environment.c.environment_key == environment_key)
        .values(**values)
    )


def _fold(conn: sa.Connection, environment_key: str, generation: int, delta_id: int) -> None:
    this_env = identity_answers.c.environment_key == environment_key
    staged = sa.and_(this_env, identity_answers.c.version_id == delta_id)
    replaced = sorted(
        conn.execute(
            sa.select(identity_answers.c.replaces_first_id).where(
                staged, identity_answers.c.replaces_first_id.is_not(None)
            )
        ).scalars()
    )
    if replaced and conn.dialect.name == "postgresql":  # by key, one index probe per row
        conn.execute(
            sa.text(
                "DELETE FROM membership_identity_answers WHERE ctid = ANY(ARRAY("
                f"SELECT r.ctid FROM {_probed_live_rows('ctid')}))"
            ),
            _probe_params(environment_key, generation, replaced),
        )
    elif replaced:  # by key (a list, not a subquery: the planner would scan every live row)
        conn.execute(
            identity_answers.delete().where(
                this_env,
                identity_answers.c.version_id == generation,
                identity_answers.c.first_id.in_(replaced),
            )
        )
    conn.execute(identity_answers.delete().where(staged, identity_answers.c.identity_count == 0))
    conn.execute(
        identity_answers.update()
        .where(staged)
        .values(version_id=generation, replaces_first_id=None)
    )


def delete_staged_answers(
    environment_key: str, version_id: int, first_id: int | None = None, last_id: int | None = None
) -> sa.Delete:
    """A retried attempt's rows (a shard's: those starting in its id range). By the primary
    key's leading columns: without the environment, every row of every environment is scanned
    (30-45 ms per delta at 10M identities)."""
    condition = [
        identity_answers.c.environment_key == environment_key,
        identity_answers.c.version_id == version_id,
    ]
    if first_id is not None and last_id is not None:
        condition.append(identity_answers.c.first_id.between(first_id, last_id))
    return identity_answers.delete().where(*condition)


def describe_answers(conn: sa.Connection) -> dict[str, str]:
    """Per environment with a published version: whether the answers by identity describe it
    (what a delta reads), in words."""
    described: dict[str, str] = {}
    for row in conn.execute(
        sa.select(
            environment.c.environment_key,
            environment.c.published_version_id,
            environment.c.answers_version_id,
            environment.c.answers_stale,
        ).where(environment.c.published_version_id.is_not(None))
    ):
        if row.answers_version_id != row.published_version_id:
            described[row.environment_key] = (
                "none (its deltas read previous answers from the chunks until the next full "
                "backfill)"
            )
            continue
        stale = len(json.loads(row.answers_stale or "[]"))
        described[row.environment_key] = "live" + (
            f", {stale} segments edited since (read from their chunks)" if stale else ""
        )
    return described


def forget_reused_id(conn: sa.Connection, version_id: int) -> None:
    """A new version's id names no answers. SQLite reuses the greatest id once its row is
    deleted (an abandoned shadow collected, say); answers stored or described under it then
    belonged to another version. PostgreSQL's sequence never reuses one: nothing to do (the
    delete alone would scan every environment's rows, 45 ms at 10M identities)."""
    if conn.dialect.name == "postgresql":
        return
    conn.execute(identity_answers.delete().where(identity_answers.c.version_id == version_id))
    conn.execute(
        environment.update()
        .where(
            sa.or_(
                environment.c.answers_version_id == version_id,
                environment.c.answers_generation_id == version_id,
            )
        )
        .values(answers_version_id=None, answers_generation_id=None)
    )


def collect_answers(conn: sa.Connection) -> int:
    """Delete rows neither live nor staged by a version still being written; returns how many."""
    live = (
        sa.select(environment.c.answers_generation_id)
        .where(environment.c.environment_key == identity_answers.c.environment_key)
        .scalar_subquery()
    )
    writing = sa.exists().where(
        version.c.version_id == identity_answers.c.version_id, version.c.state.in_(_IN_WRITING)
    )
    return conn.execute(
        identity_answers.delete().where(
            identity_answers.c.version_id.is_distinct_from(live), ~writing
        )
    ).rowcount


def vacuum_answers(database: StoreDatabase) -> float | None:
    """PostgreSQL: ``VACUUM (ANALYZE)`` the answers by identity; returns its seconds (None on
    SQLite; a vacuum already running on the table is left to it: ``SKIP_LOCKED``).

    A full version writes a row per ~30 identities and each delta's fold replaces some. Until a
    vacuum marks their pages all-visible, each delta's probe of a row start fetches its heap
    page (at 10M identities, 1,000 probes: 0.13 s from the page cache, 0.03 s index-only), and
    the planner's statistics predate the rows. Autovacuum does it within minutes where it is
    on; the publish of a full version and garbage collection do it at once, whatever the
    server's settings."""
    if database.dialect != "postgresql":
        return None
    started = time.perf_counter()
    with database.probe.connect() as conn:  # autocommit: VACUUM runs outside a transaction
        conn.exec_driver_sql(f"VACUUM (ANALYZE, SKIP_LOCKED) {identity_answers.name}")
    return time.perf_counter() - started
