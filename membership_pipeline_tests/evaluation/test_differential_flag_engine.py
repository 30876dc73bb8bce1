"""Our bitmaps against flag-engine's per-identity evaluator, on random environments and trees.

Each property runs twice: with the default tuning, and with tuning that forces the fast paths
(vectorised MD5, percentage splits hashed within a rule's scope) even on tiny environments.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membership_pipeline.evaluation import EvaluationTuning, evaluate_environment, traits_frame
from membership_pipeline_tests.evaluation.flag_engine_oracle import identity_contexts, mismatches
from membership_pipeline_tests.evaluation.segment_strategies import (
    STRING_POOL,
    TRAIT_KEYS,
    environments,
    segments,
)

TUNINGS = {
    "default": EvaluationTuning(),
    "fast-paths-forced": EvaluationTuning(
        expensive_split_distinct_values=0,
        scoped_share=2.0,
        hash_threads=2,
        hash_messages_per_thread=1,
        value_bitmaps_max_values=10**9,
        value_bitmaps_min_atoms=1,
    ),
}


def _assert_agrees(environment, identities, traits, segs, tuning) -> None:
    result = evaluate_environment(environment, identities, traits_frame(traits), segs, tuning)
    assert result.failures == {}
    computed = {key: set(bitmap) for key, bitmap in result.segments.items()}
    contexts = identity_contexts(environment, identities, traits)
    assert mismatches(contexts, segs, computed) == []


@pytest.mark.parametrize("tuning", TUNINGS.values(), ids=TUNINGS.keys())
def test_every_identity_and_segment_agrees_with_flag_engine(
    tuning: EvaluationTuning, differential_examples: int
) -> None:
    @settings(
        max_examples=differential_examples,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(env=environments(), segs=segments())
    def check(env: tuple, segs: list) -> None:
        environment, identities, traits = env
        _assert_agrees(environment, identities, traits, segs, tuning)

    check()


@pytest.mark.parametrize("tuning", TUNINGS.values(), ids=TUNINGS.keys())
def test_large_environment_agrees_with_flag_engine(
    tuning: EvaluationTuning, differential_examples: int
) -> None:
    """5,000 identities: past the default thresholds of the vectorised and scoped paths."""

    @settings(max_examples=max(3, differential_examples // 50), derandomize=True, deadline=None)
    @given(segs=segments(count=12), seed=st.integers(0, 2**16))
    def check(segs: list, seed: int) -> None:
        rng = random.Random(seed)
        ids = rng.sample(range(2**32), 5000)
        identities = pd.DataFrame(
            {"id": ids, "identifier": [f"user-{rng.randrange(10**6)}" for _ in ids], "key": None}
        )
        pools = [STRING_POOL, [0, 1, 17, 18, 42, -5], [0.5, -0.0, 2.5], [True, False]]
        traits = {
            identity_id: {
                key: rng.choice(rng.choice(pools)) for key in TRAIT_KEYS if rng.random() < 0.6
            }
            for identity_id in ids
        }
        environment = {"key": "env_large", "name": "Large"}
        _assert_agrees(environment, identities, traits, segs, tuning)

    check()
