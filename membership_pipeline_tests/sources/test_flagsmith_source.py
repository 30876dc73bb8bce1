"""The Flagsmith source on real PostgreSQL and SQLite: what it reads equals what was written,
and the bitmaps computed from it equal flag-engine's answers for each identity built from the
same rows."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from membership_pipeline.demo.dataset import DemoDataset, write_demo_dataset
from membership_pipeline.evaluation import MalformedRuleTree, UnknownOperator, evaluate_environment
from membership_pipeline.evaluation.environment_data import VALUE_COLUMN_BY_TYPE
from membership_pipeline.model.errors import EnvironmentNotFound
from membership_pipeline.sources import flagsmith_source
from membership_pipeline.sources import flagsmith_tables as tables
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.sources.trait_index import COVERING_INDEX_SQL
from membership_pipeline_tests.evaluation.flag_engine_oracle import mismatches, reference_members


def _small_dataset(url: str) -> DemoDataset:
    return write_demo_dataset(
        url,
        identities=1_200,
        organisations=2,
        projects_per_organisation=1,
        environments_per_project=2,
        segments_per_project=30,
        seed=5,
    )


def _contexts_from_rows(url: str, environment: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Each identity's flag-engine context, built row by row with plain SQL (not the source)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        identities = (
            conn.execute(
                sa.select(tables.identities).where(
                    tables.identities.c.environment_id == environment["id"]
                )
            )
            .mappings()
            .all()
        )
        trait_rows = (
            conn.execute(
                sa.select(tables.traits)
                .join(tables.identities)
                .where(tables.identities.c.environment_id == environment["id"])
            )
            .mappings()
            .all()
        )
    engine.dispose()
    traits: dict[int, dict[str, Any]] = {row["id"]: {} for row in identities}
    for row in trait_rows:
        value = row[VALUE_COLUMN_BY_TYPE[row["value_type"]]]
        if value is not None:
            traits[row["identity_id"]][row["trait_key"]] = value
    contexts = {}
    for row in identities:
        system = row["system_traits"]
        system = json.loads(system) if isinstance(system, str) else system
        identity = {
            "identifier": row["identifier"],
            "traits": {**traits[row["id"]], **(system or {})},
        }
        identity["key"] = (
            f"{environment['api_key']}_{row['identifier']}"
            if environment["use_mv_v2_evaluation"]
            else str(row["id"])
        )
        contexts[row["id"]] = {
            "environment": {"key": environment["api_key"], "name": environment["name"]},
            "identity": identity,
        }
    return contexts


def test_membership_from_the_database_equals_flag_engine(database_url: str) -> None:
    written = _small_dataset(database_url)
    source = FlagsmithSource(database_url, chunk_rows=500)
    assert [e.api_key for e in source.environments()] == [
        e["api_key"] for e in written.environments
    ]
    for environment in written.environments:
        snapshot = source.read_environment(environment["api_key"])
        expected_segments = written.segments_by_project[environment["project_id"]]
        assert snapshot.segments == expected_segments  # deleted and old versions left out
        result = evaluate_environment(
            snapshot.environment, snapshot.identities, snapshot.traits, snapshot.segments
        )
        assert result.failures == {}
        contexts = _contexts_from_rows(database_url, environment)
        computed = {key: set(bitmap) for key, bitmap in result.segments.items()}
        assert mismatches(contexts, expected_segments, computed) == []
        assert len(result.universe) == environment["identity_count"]
    source.close()


def test_system_traits_override_user_traits(database_url: str) -> None:
    written = _small_dataset(database_url)
    source = FlagsmithSource(database_url)
    # "device" is a system trait no segment reads: all_traits keeps it in view.
    snapshot = source.read_environment(written.environments[0]["api_key"], all_traits=True)
    assert snapshot.overridden_by_system_traits > 0
    with_device = snapshot.traits[snapshot.traits["trait_key"] == "device"]
    overriders = set(with_device["identity_id"])
    plans = snapshot.traits[
        (snapshot.traits["trait_key"] == "plan") & snapshot.traits["identity_id"].isin(overriders)
    ]
    assert set(plans["string_value"]) == {"enterprise"}
    assert not snapshot.traits.duplicated(["identity_id", "trait_key"]).any()
    source.close()


def test_a_source_without_system_traits_reads_its_identities_own_traits(database_url: str) -> None:
    """Flagsmith before ``system_traits``: the column's absence is looked up on each read (the
    same source object reads on after the migration adds it)."""
    written = _small_dataset(database_url)
    api_key = written.environments[0]["api_key"]
    source = FlagsmithSource(database_url)
    before = source.read_environment(api_key, all_traits=True)
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE environments_identity DROP COLUMN system_traits")
    engine.dispose()
    without = source.read_environment(api_key, all_traits=True)
    source.close()
    assert before.overridden_by_system_traits > 0
    assert without.overridden_by_system_traits == 0
    assert "device" not in set(without.traits["trait_key"])
    assert set(without.identities["id"]) == set(before.identities["id"])


def test_chunk_size_does_not_change_what_is_read(database_url: str) -> None:
    written = _small_dataset(database_url)
    api_key = written.environments[0]["api_key"]
    small, large = FlagsmithSource(database_url, chunk_rows=7), FlagsmithSource(database_url)
    a, b = small.read_environment(api_key), large.read_environment(api_key)
    pd.testing.assert_frame_equal(a.identities, b.identities)
    pd.testing.assert_frame_equal(_in_order(a.traits), _in_order(b.traits))
    small.close()
    large.close()


def _in_order(traits: pd.DataFrame) -> pd.DataFrame:
    """Row order (and so category order) follows the chunks; the content must not."""
    plain = traits.astype({"trait_key": object, "value_type": object})
    return plain.sort_values(["identity_id", "trait_key"]).reset_index(drop=True)


def test_the_source_only_reads(database_url: str) -> None:
    _small_dataset(database_url)
    source = FlagsmithSource(database_url)
    with pytest.raises(sa.exc.DBAPIError), source.engine.begin() as conn:
        conn.execute(sa.delete(tables.traits))
    source.close()


def test_unknown_environment(database_url: str) -> None:
    _small_dataset(database_url)
    with pytest.raises(EnvironmentNotFound, match="nope"):
        FlagsmithSource(database_url).read_environment("nope")


def test_bad_rows_give_clear_answers(database_url: str) -> None:
    """Unreadable traits read as missing and are reported; a rule without a type or a condition
    with an unknown operator fails its own segment only."""
    written = _small_dataset(database_url)
    environment = written.environments[0]
    writer = sa.create_engine(database_url)
    with writer.begin() as conn:
        identity = conn.execute(
            sa.select(tables.identities.c.id)
            .where(tables.identities.c.environment_id == environment["id"])
            .limit(1)
        ).scalar_one()
        conn.execute(
            sa.insert(tables.traits),
            [
                {
                    "id": 10**7,
                    "identity_id": identity,
                    "trait_key": "broken_int",
                    "value_type": "int",
                    "integer_value": None,
                    "string_value": "42",  # the wrong column for its type
                },
                {
                    "id": 10**7 + 1,
                    "identity_id": identity,
                    "trait_key": "odd_type",
                    "integer_value": None,
                    "value_type": "text",
                    "string_value": "x",
                },
            ],
        )
        conn.execute(
            sa.insert(tables.segments).values(
                id=900, name="typeless", project_id=environment["project_id"], version_of_id=None
            )
        )
        conn.execute(sa.insert(tables.segment_rules).values(id=900, segment_id=900, type=None))
        conn.execute(
            sa.insert(tables.segments).values(
                id=901, name="odd operator", project_id=environment["project_id"], version_of_id=901
            )
        )
        conn.execute(sa.insert(tables.segment_rules).values(id=901, segment_id=901, type="ALL"))
        conn.execute(
            sa.insert(tables.conditions).values(
                id=900, rule_id=901, operator="SOUNDS_LIKE", property="plan", value="pro"
            )
        )
        # A segment reading both broken keys, so the source reads them.
        conn.execute(
            sa.insert(tables.segments).values(
                id=902, name="broken set", project_id=environment["project_id"], version_of_id=902
            )
        )
        conn.execute(sa.insert(tables.segment_rules).values(id=902, segment_id=902, type="ANY"))
        conn.execute(
            sa.insert(tables.conditions),
            [
                {"id": 901 + i, "rule_id": 902, "operator": "IS_SET", "property": key}
                for i, key in enumerate(("broken_int", "odd_type"))
            ],
        )
    writer.dispose()
    source = FlagsmithSource(database_url)
    with capture_logs() as events:
        snapshot = source.read_environment(environment["api_key"])
    assert snapshot.unreadable_traits == 2
    assert {"broken_int", "odd_type"}.isdisjoint(set(snapshot.traits["trait_key"]))
    assert any(
        e["event"] == "segment_membership.source.unreadable_traits" and e["rows"] == 2
        for e in events
    )
    result = evaluate_environment(
        snapshot.environment, snapshot.identities, snapshot.traits, snapshot.segments
    )
    assert isinstance(result.failures["900"], MalformedRuleTree)
    assert isinstance(result.failures["901"], UnknownOperator)
    assert identity not in result.segments["902"]  # unreadable traits are missing
    assert len(result.segments) == len(written.segments_by_project[environment["project_id"]]) + 1
    source.close()


def test_oracle_agrees_on_a_hand_checked_identity(sqlite_url: str) -> None:
    """A guard on the test's own oracle: one identity, checked by hand."""
    written = _small_dataset(sqlite_url)
    environment = written.environments[0]
    contexts = _contexts_from_rows(sqlite_url, environment)
    everyone = {"key": "x", "name": "all", "rules": [{"type": "ALL", "conditions": []}]}
    assert reference_members(contexts, everyone) == set(contexts)


def _frames_equal(left: pd.DataFrame, right: pd.DataFrame, by: list[str]) -> None:
    """Same rows and values, whatever the order and the string or category dtypes."""

    def plain(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({c: object for c in frame.columns if c not in ("float_value",)})
        return frame.sort_values(by).reset_index(drop=True)

    pd.testing.assert_frame_equal(plain(left), plain(right), check_dtype=False)


def test_only_referenced_trait_keys_are_read(database_url: str) -> None:
    """Keys no segment reads are skipped: the frames hold only referenced keys, and the
    bitmaps equal those computed from every trait."""
    written = write_demo_dataset(
        database_url,
        identities=900,
        organisations=1,
        projects_per_organisation=1,
        environments_per_project=1,
        segments_per_project=25,
        seed=3,
        unreferenced_traits=5,
    )
    source = FlagsmithSource(database_url)
    api_key = written.environments[0]["api_key"]
    lean = source.read_environment(api_key)
    full = source.read_environment(api_key, all_traits=True)
    assert lean.trait_keys is not None and "plan" in lean.trait_keys
    assert set(lean.traits["trait_key"]) <= lean.trait_keys
    assert {f"attribute_{i:02d}" for i in range(5)} <= set(full.traits["trait_key"])
    assert len(lean.traits) < len(full.traits) - 5 * 800
    bitmaps = [
        evaluate_environment(s.environment, s.identities, s.traits, s.segments)
        for s in (lean, full)
    ]
    assert bitmaps[0].segments == bitmaps[1].segments
    source.close()


@pytest.mark.parametrize("parallel_reads", [1, 3])
def test_postgres_columnar_paths_read_the_same_rows(postgres_url: str, parallel_reads: int) -> None:
    """ADBC with or without the identity join, on one or several connections, reads exactly
    what the generic (pandas) path reads: the same identities, keys and traits."""
    written = _small_dataset(postgres_url)
    writer = sa.create_engine(postgres_url)
    # Another environment's identity inside the first's id span: the join-free read must
    # drop its traits.
    first = written.environments[0]
    with writer.begin() as conn:
        low = conn.execute(
            sa.select(sa.func.min(tables.identities.c.id)).where(
                tables.identities.c.environment_id == first["id"]
            )
        ).scalar_one()
        conn.execute(
            sa.update(tables.identities)
            .where(tables.identities.c.id == low + 3)
            .values(environment_id=written.environments[1]["id"], identifier="moved-away")
        )
        # A row written again lands after rows of larger ids: the heap is out of id order.
        conn.execute(
            sa.update(tables.identities)
            .where(tables.identities.c.id == low + 1)
            .values(identifier="renamed")
        )
    writer.dispose()
    generic = FlagsmithSource(postgres_url, columnar=False)
    info = generic.environment(first["api_key"])
    expected = generic.read_identity_range(info, 0, 10**9)
    for own_span_share in (0.0, 10.0):  # the join, then the join-free read
        source = FlagsmithSource(
            postgres_url, parallel_reads=parallel_reads, own_span_share=own_span_share
        )
        read = source.read_identity_range(info, 0, 10**9)
        _frames_equal(read.identities, expected.identities, ["id"])
        _frames_equal(read.traits, expected.traits, ["identity_id", "trait_key"])
        assert low + 3 not in set(read.identities["id"])
        assert low + 3 not in set(read.traits["identity_id"])
        assert (read.identities["id"].diff().dropna() > 0).all()  # ordered by id
        source.close()
    generic.close()


def test_the_covering_index_reads_the_same_rows_and_is_found(postgres_url: str) -> None:
    """With and without the trait table's covering index (``trait_index``), a range read of some
    keys or of all gives exactly the generic path's rows; the read says which, and only an index
    that covers (trait_key, identity_id) and every value column counts."""
    written = _small_dataset(postgres_url)
    first = written.environments[0]
    generic = FlagsmithSource(postgres_url, columnar=False)
    info = generic.environment(first["api_key"])
    keys = {"plan", "age", "email"}
    expected = {k: generic.read_identity_range(info, 0, 10**9, k) for k in (None, frozenset(keys))}
    writer = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")

    def read_all(covering: str) -> None:
        source = FlagsmithSource(postgres_url, parallel_reads=2, own_span_share=10.0)
        for trait_keys, want in expected.items():
            with capture_logs() as logs:
                read = source.read_identity_range(info, 0, 10**9, trait_keys)
            _frames_equal(read.identities, want.identities, ["id"])
            _frames_equal(read.traits, want.traits, ["identity_id", "trait_key"])
            reads = [e for e in logs if e["event"] == "segment_membership.source.read"]
            assert [e["trait_index"] for e in reads] == [covering]
        source.close()

    read_all("none")
    with writer.connect() as conn:  # an index that lacks a value column does not cover
        conn.exec_driver_sql(
            "CREATE INDEX partial_cover ON environments_trait (trait_key, identity_id) "
            "INCLUDE (value_type, string_value)"
        )
        conn.exec_driver_sql("CREATE INDEX by_identity ON environments_trait (identity_id) "
                             "INCLUDE (trait_key, value_type, boolean_value, integer_value, "
                             "string_value, float_value)")  # fmt: skip
    read_all("none")
    with writer.connect() as conn:
        conn.exec_driver_sql(COVERING_INDEX_SQL)  # as the README tells operators
        conn.exec_driver_sql("VACUUM ANALYZE environments_trait")
    read_all("covering")
    writer.dispose()
    generic.close()


def test_a_large_read_without_the_covering_index_says_how_to_make_it(postgres_url: str) -> None:
    written = _small_dataset(postgres_url)
    info = FlagsmithSource(postgres_url).environment(written.environments[0]["api_key"])
    source = FlagsmithSource(postgres_url)
    with capture_logs() as logs, pytest.MonkeyPatch.context() as patch:
        patch.setattr(flagsmith_source, "COVERING_INDEX_ADVICE_IDENTITIES", 100)
        source.read_identity_range(info, 0, 10**9)
        source.read_identity_range(info, 0, 10**9)  # said once per source
    advice = [e for e in logs if e["event"] == "segment_membership.source.no_covering_index"]
    assert len(advice) == 1 and advice[0]["statement"] == COVERING_INDEX_SQL
    source.close()


EDGE_FLOATS = [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, -2.5e-308, 123456789.12345679]
EDGE_FLOATS += [float("inf"), float("-inf")]


def _edge_trait(identity_id: int, value_type: str, **value: object) -> dict[str, object]:
    columns = ("string_value", "integer_value", "float_value", "boolean_value")
    return {"identity_id": identity_id, "trait_key": "edge", "value_type": value_type} | {
        column: value.get(column) for column in columns
    }


def test_typed_values_travel_exactly(postgres_url: str) -> None:
    """Trait values cross the columnar read as text and come back as the same values: floats
    bit for bit (signed zero, subnormals, the extremes, infinities), integers at int4's ends,
    booleans; rows whose type is unknown or whose typed column is null stay unreadable."""
    written = _small_dataset(postgres_url)
    first = written.environments[0]
    writer = sa.create_engine(postgres_url)
    with writer.begin() as conn:
        ids = (
            conn.execute(
                sa.select(tables.identities.c.id)
                .where(tables.identities.c.environment_id == first["id"])
                .order_by(tables.identities.c.id)
                .limit(len(EDGE_FLOATS) + 6)
            )
            .scalars()
            .all()
        )
        rows = [
            _edge_trait(i, "float", float_value=v) for i, v in zip(ids, EDGE_FLOATS, strict=False)
        ]
        rest = ids[len(EDGE_FLOATS) :]
        rows += [
            _edge_trait(rest[0], "int", integer_value=-(2**31)),
            _edge_trait(rest[1], "int", integer_value=2**31 - 1),
            _edge_trait(rest[2], "bool", boolean_value=False),
            _edge_trait(rest[3], "unicode", string_value='x,\\n"y"\n'),
            _edge_trait(rest[4], "decimal", string_value="1"),  # an unknown type
            _edge_trait(rest[5], "int", string_value="2"),  # its typed column is null
        ]
        next_id = conn.execute(sa.select(sa.func.max(tables.traits.c.id))).scalar_one() + 1
        conn.execute(
            tables.traits.insert(), [{"id": next_id + n} | row for n, row in enumerate(rows)]
        )
        # psycopg2 writes -0.0 as the SQL literal -0.0, which PostgreSQL reads as 0.
        conn.execute(
            sa.text(
                "UPDATE environments_trait SET float_value = CAST('-0' AS float8) "
                "WHERE trait_key = 'edge' AND float_value = 0"
            )
        )
    writer.dispose()
    source = FlagsmithSource(postgres_url)
    info = source.environment(first["api_key"])
    read = source.read_identity_range(info, 0, 10**9, trait_keys={"edge"})
    source.close()
    edge = read.traits.set_index("identity_id")
    floats = edge.loc[list(ids[: len(EDGE_FLOATS)]), "float_value"].to_numpy()
    assert floats.tobytes() == np.array(EDGE_FLOATS).tobytes()  # bit for bit
    assert edge.loc[rest[0], "integer_value"] == -(2**31)
    assert edge.loc[rest[1], "integer_value"] == 2**31 - 1
    assert not edge.loc[rest[2], "boolean_value"]
    assert edge.loc[rest[3], "string_value"] == 'x,\\n"y"\n'
    assert rest[4] not in edge.index and rest[5] not in edge.index  # unreadable: left out
    assert read.unreadable_traits == 2
