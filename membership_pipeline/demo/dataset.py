"""A demo Flagsmith deployment written into a database (SQLite file by default, PostgreSQL by URL).

    membership-demo-dataset [--url URL] [--identities N] [--organisations K] ...

Organisations → projects → environments with identities, traits and each project's segment
catalogue (every operator, nested ALL / ANY / NONE rules), in Flagsmith's own tables and columns
(:mod:`membership_pipeline.sources.flagsmith_tables`). Deterministic by seed. It also writes the
rows that Flagsmith leaves behind and the source must skip: a soft-deleted segment, an older
(non-canonical) version of a segment, soft-deleted rules and conditions, and identities whose
``system_traits`` override a user trait.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from membership_pipeline.database.urls import database_url
from membership_pipeline.demo.synthetic import synthetic_environment, synthetic_segments
from membership_pipeline.sources import flagsmith_tables as tables
from membership_pipeline.sources.flagsmith_source import EMBEDDED_SOURCE_URL

DEFAULT_URL = EMBEDDED_SOURCE_URL  # where the embedded default reads Flagsmith from
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class DemoDataset:
    """What was written, for summaries and for tests that check the source against it."""

    url: str
    environments: list[dict[str, Any]] = field(default_factory=list)
    segments_by_project: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    identities: int = 0
    traits: int = 0


# Names people would give them (the CLI, run tags and the UI show "organisation / project /
# environment"); a long catalogue numbers its repeats.
_ORGANISATIONS = ("Acme Retail", "Northwind Games", "Globex Travel", "Initech Health")
_PROJECTS = ("Web shop", "Mobile app", "Checkout API", "Loyalty", "Search", "Support portal")


def _numbered(names: tuple[str, ...], index: int) -> str:
    name = names[index % len(names)]
    return name if index < len(names) else f"{name} {index // len(names) + 1}"


def write_demo_dataset(
    url: str = DEFAULT_URL,
    *,
    identities: int = 20_000,
    organisations: int = 2,
    projects_per_organisation: int = 2,
    environments_per_project: int = 2,
    segments_per_project: int = 40,
    seed: int = 0,
    unreferenced_traits: int = 0,
    distinct_segments: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> DemoDataset:
    """(Re)create Flagsmith's tables at ``url`` and fill them. The first project's production
    environment gets ``identities`` identities; later projects and environments get fewer.
    ``unreferenced_traits``: that many more traits per identity, of keys no segment reads.
    ``distinct_segments``: no project holds two segments with the same rules (the demo's
    catalogue; see ``synthetic_segments``)."""
    _ensure_sqlite_directory(url)
    engine = sa.create_engine(database_url(url), future=True)
    tables.metadata.drop_all(engine)
    tables.metadata.create_all(engine)
    written = DemoDataset(url=url)
    ids = _IdCounters()
    rng = np.random.default_rng(seed)
    try:
        with engine.begin() as conn:
            for org in range(organisations):
                org_id = ids.next("organisation")
                name = _numbered(_ORGANISATIONS, org)
                _insert(
                    conn,
                    tables.organisations,
                    [{"id": org_id, "name": name, "created_date": _EPOCH}],
                )
                for project in range(projects_per_organisation):
                    project_id = ids.next("project")
                    _insert(
                        conn,
                        tables.projects,
                        [
                            {
                                "id": project_id,
                                "name": _numbered(_PROJECTS, project),
                                "organisation_id": org_id,
                                "created_date": _EPOCH,
                                "deleted_at": None,
                            }
                        ],
                    )
                    catalogue = synthetic_segments(
                        segments_per_project,
                        seed=seed * 1000 + project_id,
                        distinct=distinct_segments,
                    )
                    written.segments_by_project[project_id] = _write_segments(
                        conn, project_id, catalogue, ids, rng
                    )
                    for environment in range(environments_per_project):
                        # Production is the largest; smaller projects and environments follow.
                        ordinal = org * projects_per_organisation + project
                        size = max(identities // ((1 + ordinal) * (1 + 3 * environment)), 10)
                        env = _write_environment(
                            conn,
                            project_id,
                            environment,
                            size,
                            ids,
                            rng,
                            seed,
                            written,
                            unreferenced_traits,
                        )
                        progress(f"environment {env['api_key']}: {size:,} identities")
    finally:
        engine.dispose()
    return written


_INSERT_SLICE_ROWS = 1_000_000


class _IdCounters:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def next(self, kind: str, count: int = 1) -> int:
        """The first of ``count`` fresh ids of this kind."""
        first = self.counters.get(kind, 0) + 1
        self.counters[kind] = first + count - 1
        return first


def _write_environment(
    conn: sa.Connection,
    project_id: int,
    index: int,
    size: int,
    ids: _IdCounters,
    rng: np.random.Generator,
    seed: int,
    written: DemoDataset,
    unreferenced_traits: int,
) -> dict[str, Any]:
    env_id = ids.next("environment")
    api_key = f"env_{project_id}_{index + 1}_{rng.integers(16**6):06x}"
    row = {
        "id": env_id,
        "name": ["Production", "Staging", "Development"][index % 3],
        "api_key": api_key,
        "project_id": project_id,
        # Alternate the two percentage-split keys Flagsmith knows.
        "use_mv_v2_evaluation": env_id % 2 == 1,
        "created_date": _EPOCH,
        "updated_at": _EPOCH,
        "deleted_at": None,
    }
    _insert(conn, tables.environments, [row])
    synthetic = synthetic_environment(
        size,
        1,
        seed=seed * 7919 + env_id,
        environment_key=api_key,
        unreferenced_traits=unreferenced_traits,
    )
    first_identity = ids.next("identity", size)
    id_map = pd.Series(
        np.arange(first_identity, first_identity + size), index=synthetic.identities["id"]
    )
    identifiers = synthetic.identities["identifier"].to_numpy(dtype=object).copy()
    identifiers[::97] = [f"{identifier}-日本" for identifier in identifiers[::97]]  # unicode ones
    new_ids = id_map.to_numpy()
    system = np.full(size, None, dtype=object)
    for position in range(5, size, 501):
        system[position] = {"plan": "enterprise", "device": "ios"}
    identity_frame = pd.DataFrame(
        {
            "id": new_ids,
            "identifier": identifiers,
            "environment_id": env_id,
            "created_date": _EPOCH + pd.to_timedelta(rng.integers(0, 300 * 86400, size), unit="s"),
            "system_traits": system,
        }
    )
    _bulk_insert(conn, tables.identities, identity_frame)
    trait_frame = synthetic.traits.copy()
    trait_frame["identity_id"] = id_map.loc[trait_frame["identity_id"]].to_numpy()
    first_trait = ids.next("trait", len(trait_frame))
    trait_frame.insert(0, "id", np.arange(first_trait, first_trait + len(trait_frame)))
    trait_frame["created_date"] = _EPOCH + timedelta(days=300)
    for start in range(0, len(trait_frame), _INSERT_SLICE_ROWS):  # bounded COPY buffers
        _bulk_insert(conn, tables.traits, trait_frame.iloc[start : start + _INSERT_SLICE_ROWS])
    written.identities += size
    written.traits += len(trait_frame)
    environment = {**row, "identity_count": size}
    written.environments.append(environment)
    return environment


def _write_segments(
    conn: sa.Connection,
    project_id: int,
    catalogue: list[dict[str, Any]],
    ids: _IdCounters,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Write the catalogue (keys become segment ids) plus rows the source must skip; return the
    live segments as the engine should see them."""
    live = []
    segment_rows, rule_rows, condition_rows = [], [], []
    stamp = _EPOCH + timedelta(days=200)

    def add_rules(
        rules: list[dict], segment_id: int | None, parent: int | None, deleted: bool
    ) -> None:
        for rule in rules:
            rule_id = ids.next("rule")
            rule_rows.append(
                {
                    "id": rule_id,
                    "segment_id": segment_id,
                    "rule_id": parent,
                    "type": rule["type"],
                    "created_at": stamp,
                    "updated_at": stamp,
                    "deleted_at": stamp if deleted else None,
                }
            )
            for condition in rule.get("conditions") or ():
                condition_rows.append(
                    {
                        "id": ids.next("condition"),
                        "rule_id": rule_id,
                        **condition,
                        "created_at": stamp,
                        "updated_at": stamp,
                        "deleted_at": None,
                    }
                )
            add_rules(rule.get("rules") or [], None, rule_id, False)

    for segment in map(_as_stored, catalogue):
        segment_id = ids.next("segment")
        segment_rows.append(_segment_row(segment_id, segment["name"], project_id, stamp))
        add_rules(segment["rules"], segment_id, None, False)
        live.append({**segment, "key": str(segment_id)})

    # What Flagsmith leaves behind, which must not count:
    # a soft-deleted segment, and an older version of the first segment (version_of → it) ...
    deleted_id = ids.next("segment")
    segment_rows.append(
        {**_segment_row(deleted_id, "deleted", project_id, stamp), "deleted_at": stamp}
    )
    add_rules(
        [
            {
                "type": "ALL",
                "conditions": [{"property": None, "operator": "PERCENTAGE_SPLIT", "value": "100"}],
            }
        ],
        deleted_id,
        None,
        False,
    )
    old_version = ids.next("segment")
    first_live = int(live[0]["key"])
    segment_rows.append(
        {
            **_segment_row(old_version, "old version", project_id, stamp),
            "version_of_id": first_live,
            "version": 1,
        }
    )
    add_rules(
        [
            {
                "type": "ALL",
                "conditions": [{"property": None, "operator": "PERCENTAGE_SPLIT", "value": "100"}],
            }
        ],
        old_version,
        None,
        False,
    )
    # ... and a soft-deleted rule and condition inside a live segment.
    add_rules(
        [
            {
                "type": "ALL",
                "conditions": [{"property": "plan", "operator": "EQUAL", "value": "nobody"}],
            }
        ],
        first_live,
        None,
        True,
    )
    condition_rows.append(
        {
            "id": ids.next("condition"),
            "rule_id": rule_rows[0]["id"],
            "property": "plan",
            "operator": "EQUAL",
            "value": "nobody",
            "created_at": stamp,
            "updated_at": stamp,
            "deleted_at": stamp,
        }
    )
    _insert(conn, tables.segments, segment_rows)
    _insert(conn, tables.segment_rules, rule_rows)
    _insert(conn, tables.conditions, condition_rows)
    return live


def _as_stored(segment: dict[str, Any]) -> dict[str, Any]:
    """The segment as it reads back from Flagsmith's tables: every rule with its (possibly
    empty) lists of conditions and sub-rules, and IN lists as the comma-joined text Flagsmith
    stores."""

    def rule(raw: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": raw["type"],
            "conditions": [
                {
                    "property": c["property"],
                    "operator": c["operator"],
                    "value": ",".join(c["value"]) if isinstance(c["value"], list) else c["value"],
                }
                for c in raw.get("conditions") or ()
            ],
            "rules": [rule(sub) for sub in raw.get("rules") or ()],
        }

    return {**segment, "rules": [rule(r) for r in segment["rules"]]}


def _segment_row(segment_id: int, name: str, project_id: int, stamp: datetime) -> dict[str, Any]:
    return {
        "id": segment_id,
        "name": name,
        "description": None,
        "project_id": project_id,
        "feature_id": None,
        "version": 1,
        "version_of_id": segment_id,
        "created_at": stamp,
        "updated_at": stamp,
        "deleted_at": None,
    }


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(table.insert(), rows)


def _bulk_insert(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> None:
    """Large tables: PostgreSQL's COPY, else batched executemany."""
    frame = frame[[c.name for c in table.columns if c.name in frame.columns]]
    if conn.dialect.name == "postgresql":
        frame = frame.assign(
            **{
                c.name: frame[c.name].map(lambda v: None if v is None else json.dumps(v))
                for c in table.columns
                if isinstance(c.type, sa.JSON) and c.name in frame.columns
            }
        )
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, header=False, na_rep="\\N", quoting=csv.QUOTE_MINIMAL)
        buffer.seek(0)
        cursor = conn.connection.cursor()
        columns = ", ".join(frame.columns)
        cursor.copy_expert(
            f"COPY {table.name} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer
        )
        return
    # Elsewhere (SQLite): the driver's executemany over plain tuples, in the text forms
    # SQLAlchemy itself stores (JSON as text, timestamps as ISO text, booleans as 0/1).
    placeholders = ", ".join("?" for _ in frame.columns)
    statement = f"INSERT INTO {table.name} ({', '.join(frame.columns)}) VALUES ({placeholders})"
    columns = [_sqlite_values(frame[column], table.c[column].type) for column in frame.columns]
    conn.connection.cursor().executemany(statement, zip(*columns, strict=True))


def _sqlite_values(values: pd.Series, kind: sa.types.TypeEngine) -> list[Any]:
    if isinstance(kind, sa.JSON):
        return [None if v is None else json.dumps(v) for v in values]
    if isinstance(kind, sa.DateTime):
        stamps = pd.to_datetime(values, utc=True).dt.tz_localize(None)
        return stamps.dt.strftime("%Y-%m-%d %H:%M:%S.%f").where(stamps.notna(), None).tolist()
    if isinstance(kind, sa.Boolean):
        return [None if pd.isna(v) else int(bool(v)) for v in values]
    plain = values.astype(object)
    return plain.where(plain.notna(), None).tolist()


def _ensure_sqlite_directory(url: str) -> None:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"SQLAlchemy URL (default {DEFAULT_URL})"
    )
    parser.add_argument("--identities", type=int, default=20_000, help="in the first environment")
    parser.add_argument("--organisations", type=int, default=2)
    parser.add_argument("--projects", type=int, default=2, help="per organisation")
    parser.add_argument("--environments", type=int, default=2, help="per project")
    parser.add_argument("--segments", type=int, default=40, help="per project")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--unreferenced-traits", type=int, default=0, help="more traits per identity, unread"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    written = write_demo_dataset(
        args.url,
        identities=args.identities,
        organisations=args.organisations,
        projects_per_organisation=args.projects,
        environments_per_project=args.environments,
        segments_per_project=args.segments,
        seed=args.seed,
        unreferenced_traits=args.unreferenced_traits,
        distinct_segments=True,
        progress=lambda line: print(f"[demo-dataset] {line}", file=sys.stderr, flush=True),
    )
    print(
        f"wrote {len(written.environments)} environments, {written.identities:,} identities, "
        f"{written.traits:,} traits to {args.url} in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
