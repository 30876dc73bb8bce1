"""The synthetic environment: deterministic, Flagsmith-shaped, and evaluated like flag-engine."""

from __future__ import annotations

import json

import pandas as pd

from membership_pipeline.demo.synthetic import synthetic_environment, synthetic_segments
from membership_pipeline.evaluation import TRAIT_COLUMNS, evaluate_environment
from membership_pipeline.evaluation.environment_data import VALUE_COLUMN_BY_TYPE
from membership_pipeline_tests.evaluation.flag_engine_oracle import identity_contexts, mismatches


def test_same_seed_same_environment() -> None:
    first, second = synthetic_environment(500, 20, seed=3), synthetic_environment(500, 20, seed=3)
    pd.testing.assert_frame_equal(first.traits, second.traits)
    assert first.segments == second.segments
    assert synthetic_environment(500, 20, seed=4).segments != first.segments


def test_shape_follows_flagsmith_storage() -> None:
    env = synthetic_environment(2_000, 50, seed=0)
    assert list(env.traits.columns) == list(TRAIT_COLUMNS)
    assert set(env.traits["value_type"]) == set(VALUE_COLUMN_BY_TYPE)
    assert env.identities["id"].is_unique and env.identities["id"].is_monotonic_increasing
    assert 2.5 < len(env.traits) / len(env.identities) < 3.5  # about three traits per identity


def test_realistic_catalogue_agrees_with_flag_engine() -> None:
    env = synthetic_environment(3_000, 120, seed=11)
    result = evaluate_environment(env.environment, env.identities, env.traits, env.segments)
    assert result.failures == {}
    traits: dict[int, dict] = {}
    for row in env.traits.itertuples(index=False):
        value = getattr(row, VALUE_COLUMN_BY_TYPE[row.value_type])
        traits.setdefault(row.identity_id, {})[row.trait_key] = (
            value.item() if hasattr(value, "item") else value
        )
    contexts = identity_contexts(env.environment, env.identities, traits)
    computed = {key: set(bitmap) for key, bitmap in result.segments.items()}
    assert mismatches(contexts, env.segments, computed) == []
    assert any(len(bitmap) for bitmap in result.segments.values())


def test_any_catalogue_of_twenty_segments_uses_every_operator() -> None:
    from membership_pipeline.benchmarks.engine_benchmark import _operator_mix
    from membership_pipeline.demo.synthetic import synthetic_segments
    from membership_pipeline.evaluation.segment_model import Operator

    for seed in range(3):
        assert set(_operator_mix(synthetic_segments(20, seed=seed))) == set(Operator)


def test_segment_names_are_unique_in_a_catalogue_and_in_each_demo_project(tmp_path) -> None:
    from membership_pipeline.demo.dataset import write_demo_dataset
    from membership_pipeline.sources.flagsmith_source import FlagsmithSource

    names = [s["name"] for s in synthetic_segments(300, seed=4)]
    assert len(set(names)) == 300
    assert any(name.endswith(" (2)") for name in names)  # a drawn-again name is numbered
    written = write_demo_dataset(
        f"sqlite:///{tmp_path / 'flagsmith.sqlite'}", identities=50, segments_per_project=60
    )
    source = FlagsmithSource(written.url)
    for info in source.environments():
        project_names = [s["name"] for s in source.read_environment(info.api_key).segments]
        assert len(project_names) == len(set(project_names)) == 60, info.api_key
    source.close()


def test_the_demos_catalogue_holds_no_segment_twice(tmp_path) -> None:
    """The demo's projects draw a definition again rather than repeat one (the plain catalogue,
    which the benchmarks measure, keeps its duplicates: the same rules for every seed)."""
    from membership_pipeline.demo.dataset import write_demo_dataset
    from membership_pipeline.sources.flagsmith_source import FlagsmithSource

    def rules(segments):
        return [json.dumps(s["rules"], sort_keys=True) for s in segments]

    for seed in range(5):
        plain, distinct = (synthetic_segments(40, seed=seed, distinct=d) for d in (False, True))
        assert len(set(rules(distinct))) == 40
        assert rules(distinct)[:19] == rules(plain)[:19]  # every shape, as drawn before
    assert any(len(set(rules(synthetic_segments(40, seed=s)))) < 40 for s in range(5))
    written = write_demo_dataset(
        f"sqlite:///{tmp_path / 'flagsmith.sqlite'}", identities=50, distinct_segments=True
    )
    with FlagsmithSource(written.url) as source:
        for info in source.environments():
            segments = source.read_environment(info.api_key).segments
            assert len(set(rules(segments))) == len(segments) == 40, info.api_key
