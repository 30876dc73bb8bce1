"""Read one Flagsmith deployment's core database: environments, identities, traits, segments.

The same code reads PostgreSQL (production) and SQLite (the embedded default) through
SQLAlchemy; connections are read-only. An environment's identities and traits stream in bounded
chunks, each turned into compact columns at once (categorical keys and types), so memory follows
the environment being read, never the database.

Rules that decide correctness, following Flagsmith's models:

* the partition key of an environment is its ``api_key``; its segments are its project's;
* only canonical, live segments count: ``deleted_at`` is null and ``version_of_id`` is the
  segment itself (or null, for rows from before segment versioning); soft-deleted rules and
  conditions are ignored;
* a trait's value is the column its ``value_type`` names (``unicode``, ``int``, ``float``,
  ``bool``); like Flagsmith's ``Trait.trait_value``, a row whose type is unknown or whose column
  is null has no value, and reads as a missing trait — such rows are counted and reported
  (``segment_membership.source.unreadable_traits``), not guessed;
* ``environments_identity.system_traits`` (optional JSON object) overrides user traits of the
  same key;
* ``use_mv_v2_evaluation`` (``use_identity_composite_key_for_hashing``) chooses the
  percentage-split key: ``"{api_key}_{identifier}"`` when set, else ``str(identity id)``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from membership_pipeline.evaluation.environment_data import TRAIT_COLUMNS, VALUE_COLUMN_BY_TYPE
from membership_pipeline.evaluation.trait_frames import traits_frame_from_rows
from membership_pipeline.sources.segment_tree import (
    MAX_RULE_DEPTH,
    ConditionRow,
    RuleRow,
    SegmentRow,
    build_segment_trees,
)
from membership_pipeline.structured_logging import get_logger

log = get_logger("source")

DEFAULT_CHUNK_ROWS = 200_000


class EnvironmentNotFound(LookupError):
    """No live environment has this api key."""


@dataclass(frozen=True, slots=True)
class EnvironmentInfo:
    id: int
    api_key: str
    name: str
    project_id: int
    organisation_id: int
    organisation_name: str
    use_composite_hash_key: bool


@dataclass(frozen=True, slots=True)
class ChangeTimes:
    """When an environment's inputs last changed, and how many identities it has.

    Flagsmith stamps identities and traits only when they are created, so an edited trait value
    does not move ``traits_changed_at``; the counts catch deletions."""

    identities_changed_at: datetime | None
    traits_changed_at: datetime | None
    segments_changed_at: datetime | None
    identity_count: int

    @property
    def latest(self) -> datetime | None:
        stamps = [
            s
            for s in (self.identities_changed_at, self.traits_changed_at, self.segments_changed_at)
            if s is not None
        ]
        return max(stamps) if stamps else None


@dataclass(frozen=True)
class IdentityPlan:
    """What planning shards needs: the environment and its segments as of one snapshot, how many
    identities it has, its largest id, and the ids at every ``every``-th rank."""

    info: EnvironmentInfo
    segments: list[dict[str, Any]]
    identity_count: int
    max_id: int | None
    boundaries: list[int]
    every: int
    as_of: datetime


@dataclass
class IdentityRange:
    """The identities of one environment with ``first_id <= id <= last_id``, and their traits."""

    identities: pd.DataFrame
    traits: pd.DataFrame
    unreadable_traits: int = 0
    overridden_by_system_traits: int = 0


@dataclass
class EnvironmentSnapshot:
    """What the engine needs for one environment, read at ``as_of``."""

    info: EnvironmentInfo
    environment: dict[str, str]
    identities: pd.DataFrame
    traits: pd.DataFrame
    segments: list[dict[str, Any]]
    as_of: datetime
    unreadable_traits: int = 0
    overridden_by_system_traits: int = 0


class FlagsmithSource:
    """Read-only access to a Flagsmith core database by SQLAlchemy URL."""

    def __init__(self, url: str, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        self.url = url
        self.chunk_rows = chunk_rows
        self.engine = sa.create_engine(url, future=True)
        sa.event.listen(self.engine, "connect", _read_only)

    def close(self) -> None:
        self.engine.dispose()

    def environments(self) -> list[EnvironmentInfo]:
        """Live environments of live projects, with their organisation."""
        query = sa.text(
            """
            SELECT e.id, e.api_key, e.name, e.project_id, p.organisation_id,
                   o.name AS organisation_name, e.use_mv_v2_evaluation
            FROM environments_environment e
            JOIN projects_project p ON p.id = e.project_id
            JOIN organisations_organisation o ON o.id = p.organisation_id
            WHERE e.deleted_at IS NULL AND p.deleted_at IS NULL
            ORDER BY e.id
            """
        )
        with self.engine.connect() as conn:
            return [
                EnvironmentInfo(
                    id=row.id,
                    api_key=row.api_key,
                    name=row.name,
                    project_id=row.project_id,
                    organisation_id=row.organisation_id,
                    organisation_name=row.organisation_name,
                    use_composite_hash_key=bool(row.use_mv_v2_evaluation),
                )
                for row in conn.execute(query)
            ]

    def environment(self, api_key: str) -> EnvironmentInfo:
        for info in self.environments():
            if info.api_key == api_key:
                return info
        raise EnvironmentNotFound(f"no live environment has the api key {api_key!r}")

    def change_times(self) -> dict[str, ChangeTimes]:
        """Per environment api key: when identities, traits and segments last changed."""
        stamp = sa.DateTime(timezone=True)
        query = sa.text(
            f"""
            WITH RECURSIVE project_rules(id, project_id, depth) AS (
                SELECT r.id, s.project_id, 0
                FROM segments_segmentrule r JOIN segments_segment s ON s.id = r.segment_id
                UNION ALL
                SELECT c.id, t.project_id, t.depth + 1
                FROM segments_segmentrule c JOIN project_rules t ON c.rule_id = t.id
                WHERE t.depth < {MAX_RULE_DEPTH}
            ),
            segment_stamps(project_id, stamp) AS (
                {_stamps_of("segments_segment s", "s.project_id", "s")}
                UNION ALL
                {
                _stamps_of(
                    "segments_segmentrule r JOIN project_rules t ON t.id = r.id",
                    "t.project_id",
                    "r",
                )
            }
                UNION ALL
                {
                _stamps_of(
                    "segments_condition c JOIN project_rules t ON t.id = c.rule_id",
                    "t.project_id",
                    "c",
                )
            }
            )
            SELECT e.api_key,
                   (SELECT max(i.created_date) FROM environments_identity i
                    WHERE i.environment_id = e.id) AS identities_changed_at,
                   (SELECT count(*) FROM environments_identity i
                    WHERE i.environment_id = e.id) AS identity_count,
                   (SELECT max(t.created_date) FROM environments_trait t
                    JOIN environments_identity i ON i.id = t.identity_id
                    WHERE i.environment_id = e.id) AS traits_changed_at,
                   (SELECT max(stamp) FROM segment_stamps ss
                    WHERE ss.project_id = e.project_id) AS segments_changed_at
            FROM environments_environment e
            WHERE e.deleted_at IS NULL
            """
        ).columns(identities_changed_at=stamp, traits_changed_at=stamp, segments_changed_at=stamp)
        with self.engine.connect() as conn:
            return {
                row.api_key: ChangeTimes(
                    identities_changed_at=_utc(row.identities_changed_at),
                    traits_changed_at=_utc(row.traits_changed_at),
                    segments_changed_at=_utc(row.segments_changed_at),
                    identity_count=int(row.identity_count),
                )
                for row in conn.execute(query)
            }

    def read_environment(self, api_key: str) -> EnvironmentSnapshot:
        """Identities, traits and segments of one environment, in one read transaction."""
        info = self.environment(api_key)
        as_of = datetime.now(UTC)
        with self._snapshot() as conn:
            identities = self._read_range(conn, info, None)
            segments = self._segments(conn, info)
        return EnvironmentSnapshot(
            info=info,
            environment={"key": info.api_key, "name": info.name},
            identities=identities.identities,
            traits=identities.traits,
            segments=segments,
            as_of=as_of,
            unreadable_traits=identities.unreadable_traits,
            overridden_by_system_traits=identities.overridden_by_system_traits,
        )

    def plan_identities(self, api_key: str, every: int) -> IdentityPlan:
        """The environment, its segments, its identity count and largest id, and the ids at ranks
        0, ``every``, 2 × ``every``, ... in one snapshot: one ordered scan of the environment's
        ids on the server, whatever its size; only the boundaries travel."""
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        info = self.environment(api_key)
        as_of = datetime.now(UTC)
        with self._snapshot() as conn:
            totals = conn.execute(
                sa.text(
                    "SELECT count(*) AS n, max(id) AS max_id FROM environments_identity "
                    "WHERE environment_id = :environment_id"
                ),
                {"environment_id": info.id},
            ).one()
            boundaries = conn.execute(
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
            boundaries = [int(b) for b in boundaries]
            segments = self._segments(conn, info)
        return IdentityPlan(
            info=info,
            segments=segments,
            identity_count=int(totals.n),
            max_id=None if totals.max_id is None else int(totals.max_id),
            boundaries=boundaries,
            every=every,
            as_of=as_of,
        )

    def read_identity_range(
        self, info: EnvironmentInfo, first_id: int, last_id: int
    ) -> IdentityRange:
        """One shard's identities (``first_id <= id <= last_id``) and their traits, in one
        snapshot; index range scans on the identity and trait tables."""
        with self._snapshot() as conn:
            return self._read_range(conn, info, (first_id, last_id))

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # One snapshot for every read: a concurrent write lands in all or none.
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield conn

    def _read_range(
        self, conn: sa.Connection, info: EnvironmentInfo, id_range: tuple[int, int] | None
    ) -> IdentityRange:
        identity_columns = {
            c["name"] for c in sa.inspect(conn).get_columns("environments_identity")
        }
        identities, system_traits = self._identities(
            conn, info, "system_traits" in identity_columns, id_range
        )
        traits, unreadable = self._traits(conn, info, id_range)
        traits, overridden = _apply_system_traits(traits, system_traits)
        if unreadable:
            log.warning(
                "segment_membership.source.unreadable_traits",
                environment=info.api_key,
                rows=unreadable,
                rule="a trait whose value_type is unknown or whose value column is null is missing",
            )
        return IdentityRange(identities, traits, unreadable, overridden)

    def _chunks(
        self, conn: sa.Connection, query: sa.TextClause, **params: Any
    ) -> Iterator[pd.DataFrame]:
        streaming = conn.execution_options(stream_results=True, max_row_buffer=self.chunk_rows)
        yield from pd.read_sql_query(query, streaming, params=params, chunksize=self.chunk_rows)

    def _identities(
        self,
        conn: sa.Connection,
        info: EnvironmentInfo,
        with_system_traits: bool,
        id_range: tuple[int, int] | None,
    ) -> tuple[pd.DataFrame, list[tuple[int, Any]]]:
        extra = ", system_traits" if with_system_traits else ""
        in_range, bounds = _id_range_filter("id", id_range)
        query = sa.text(
            f"SELECT id, identifier{extra} FROM environments_identity "
            f"WHERE environment_id = :environment_id{in_range} ORDER BY id"
        )
        ids: list[np.ndarray] = []
        identifiers: list[np.ndarray] = []
        system_traits: list[tuple[int, Any]] = []
        for chunk in self._chunks(conn, query, environment_id=info.id, **bounds):
            ids.append(chunk["id"].to_numpy(dtype=np.int64))
            identifiers.append(chunk["identifier"].to_numpy(dtype=object))
            if with_system_traits:
                present = chunk[chunk["system_traits"].notna()]
                system_traits.extend(
                    zip(present["id"].tolist(), present["system_traits"], strict=True)
                )
        frame = pd.DataFrame(
            {
                "id": np.concatenate(ids) if ids else np.empty(0, dtype=np.int64),
                "identifier": np.concatenate(identifiers)
                if identifiers
                else np.empty(0, dtype=object),
            }
        )
        if not info.use_composite_hash_key:
            frame["key"] = frame["id"].astype(str).astype(object)
        return frame, system_traits

    def _traits(
        self, conn: sa.Connection, info: EnvironmentInfo, id_range: tuple[int, int] | None
    ) -> tuple[pd.DataFrame, int]:
        in_range, bounds = _id_range_filter("t.identity_id", id_range)
        query = sa.text(
            f"""
            SELECT t.identity_id, t.trait_key, t.value_type, t.string_value, t.integer_value,
                   t.float_value, t.boolean_value
            FROM environments_trait t JOIN environments_identity i ON i.id = t.identity_id
            WHERE i.environment_id = :environment_id{in_range}
            """
        )
        parts: list[pd.DataFrame] = []
        unreadable = 0
        for chunk in self._chunks(conn, query, environment_id=info.id, **bounds):
            readable, dropped = _compact_traits(chunk)
            parts.append(readable)
            unreadable += dropped
        if not parts:
            return traits_frame_from_rows([]), unreadable
        frame = pd.concat(parts, ignore_index=True)
        for column in ("trait_key", "value_type"):
            frame[column] = frame[column].astype(object).astype("category")
        return frame, unreadable

    def _segments(self, conn: sa.Connection, info: EnvironmentInfo) -> list[dict[str, Any]]:
        canonical = (
            "SELECT id FROM segments_segment WHERE project_id = :project_id "
            "AND deleted_at IS NULL AND (version_of_id IS NULL OR version_of_id = id)"
        )
        tree = f"""
            WITH RECURSIVE tree(id, segment_id, parent_rule_id, type, depth) AS (
                SELECT id, segment_id, rule_id, type, 0 FROM segments_segmentrule
                WHERE deleted_at IS NULL AND segment_id IN ({canonical})
                UNION ALL
                SELECT r.id, r.segment_id, r.rule_id, r.type, t.depth + 1
                FROM segments_segmentrule r JOIN tree t ON r.rule_id = t.id
                WHERE r.deleted_at IS NULL AND r.segment_id IS NULL AND t.depth < {MAX_RULE_DEPTH}
            )
        """
        params = {"project_id": info.project_id}
        segment_rows = conn.execute(
            sa.text(f"SELECT id, name FROM segments_segment WHERE id IN ({canonical})"), params
        )
        segments = [SegmentRow(row.id, row.name) for row in segment_rows]
        rules = [
            RuleRow(row.id, row.segment_id, row.parent_rule_id, row.type)
            for row in conn.execute(
                sa.text(f"{tree} SELECT id, segment_id, parent_rule_id, type FROM tree"), params
            )
        ]
        conditions = [
            ConditionRow(row.id, row.rule_id, row.operator, row.property, row.value)
            for row in conn.execute(
                sa.text(
                    f"{tree} SELECT c.id, c.rule_id, c.operator, c.property, c.value "
                    "FROM segments_condition c WHERE c.deleted_at IS NULL "
                    "AND c.rule_id IN (SELECT id FROM tree)"
                ),
                params,
            )
        ]
        built = build_segment_trees(segments, rules, conditions)
        if built.unreachable_rules or built.unreachable_conditions:
            log.warning(
                "segment_membership.source.unreachable_segment_rows",
                environment=info.api_key,
                rules=built.unreachable_rules,
                conditions=built.unreachable_conditions,
            )
        return built.segments


def _id_range_filter(column: str, id_range: tuple[int, int] | None) -> tuple[str, dict[str, int]]:
    """A bound ``AND column BETWEEN`` clause for an identity-id range (none for the whole)."""
    if id_range is None:
        return "", {}
    first, last = id_range
    return f" AND {column} BETWEEN :first_id AND :last_id", {"first_id": first, "last_id": last}


def _stamps_of(source: str, project: str, alias: str) -> str:
    """Every change stamp of a segment table as (project, stamp) rows; max() skips nulls, in
    both databases (unlike a row-wise greatest)."""
    return " UNION ALL ".join(
        f"SELECT {project}, {alias}.{column} FROM {source}"
        for column in ("created_at", "updated_at", "deleted_at")
    )


def _utc(stamp: datetime | None) -> datetime | None:
    if stamp is None:
        return None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    module = type(dbapi_connection).__module__
    if module.startswith("sqlite3"):
        cursor.execute("PRAGMA query_only = ON")
    else:
        cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        # SET is transactional in PostgreSQL: commit it, or the pool's reset rolls it back.
        dbapi_connection.commit()
    cursor.close()


def _compact_traits(chunk: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One chunk of trait rows: typed columns, readable rows only (see the module rules)."""
    value_type = chunk["value_type"].astype(object)
    readable = np.zeros(len(chunk), dtype=bool)
    for name, column in VALUE_COLUMN_BY_TYPE.items():
        readable |= (value_type == name).to_numpy() & chunk[column].notna().to_numpy()
    kept = chunk[readable]
    frame = pd.DataFrame(
        {
            "identity_id": kept["identity_id"].to_numpy(dtype=np.int64),
            "trait_key": kept["trait_key"].astype("category"),
            "value_type": kept["value_type"].astype("category"),
            "string_value": kept["string_value"].astype(object).to_numpy(),
            "integer_value": pd.array(kept["integer_value"], dtype="Int64"),
            "float_value": kept["float_value"].astype("float64").to_numpy(),
            "boolean_value": pd.array(kept["boolean_value"].astype(object), dtype="boolean"),
        },
        columns=list(TRAIT_COLUMNS),
    )
    return frame, int(len(chunk) - len(kept))


def _apply_system_traits(
    traits: pd.DataFrame, system_traits: list[tuple[int, Any]]
) -> tuple[pd.DataFrame, int]:
    """System traits win over user traits of the same key."""
    rows = []
    for identity_id, raw in system_traits:
        values = json.loads(raw) if isinstance(raw, str) else raw
        if isinstance(values, dict):
            rows.extend(
                (identity_id, str(key), value) for key, value in values.items() if value is not None
            )
    if not rows:
        return traits, 0
    extra = traits_frame_from_rows(rows)
    replaced = pd.MultiIndex.from_frame(traits[["identity_id", "trait_key"]].astype(object))
    overriding = pd.MultiIndex.from_frame(extra[["identity_id", "trait_key"]].astype(object))
    keep = ~replaced.isin(overriding)
    merged = pd.concat(
        [traits[keep].astype({"trait_key": object, "value_type": object}), extra], ignore_index=True
    )
    for column in ("trait_key", "value_type"):
        merged[column] = merged[column].astype("category")
    return merged, int((~keep).sum())
