"""The codec between a backfill request and its run's tags: what the dispatcher writes, the
retry sensor reads back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from membership_pipeline.dispatch.requests import BackfillRequest, Reason
from membership_pipeline.dispatch.run_tags import (
    ENVIRONMENT_NAME_TAG,
    MAX_RUNTIME_TAG,
    PARTITION_TAG,
    SEGMENTS_TAG,
    TAG_VALUE_CHARS,
    is_dispatched,
    request_from_tags,
    request_tags,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)
keys = st.text(alphabet="0123456789", min_size=1, max_size=6)


@given(
    reason=st.sampled_from(list(Reason)),
    attempt=st.integers(1, 5),
    minutes=st.integers(0, 10_000),
    segments=st.none() | st.lists(keys, min_size=1, max_size=40).map(tuple),
)
def test_a_request_comes_back_from_its_run_tags(reason, attempt, minutes, segments):
    request = BackfillRequest.new(
        organisation="12",
        environment="env_1",
        window_start=T0,
        window_end=T0 + timedelta(minutes=minutes),
        reason=reason,
        created_at=T0,
        max_attempts=5,
        segments=segments,
    )
    request = BackfillRequest(**{**request.__dict__, "attempt": attempt})
    tags = request_tags(request, display_name="Acme / Web / Production")
    assert is_dispatched(tags) and tags[ENVIRONMENT_NAME_TAG] == "Acme / Web / Production"
    assert int(tags[MAX_RUNTIME_TAG]) > 0
    later = T0 + timedelta(hours=1)
    back = request_from_tags({**tags, PARTITION_TAG: "env_1"}, created_at=later)
    fits = segments is None or len(" ".join(segments)) <= TAG_VALUE_CHARS
    expected_segments = segments if fits else ()  # too long for a tag: the mode only
    assert back == BackfillRequest(
        **{**request.__dict__, "created_at": later, "segments": expected_segments}
    )
    assert (SEGMENTS_TAG in tags) == (segments is not None and fits)


def test_runs_the_dispatcher_did_not_launch_carry_no_request():
    assert not is_dispatched({PARTITION_TAG: "env_1", "dagster/backfill": "x"})
