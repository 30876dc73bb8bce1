"""A dispatched request as a Dagster run request: its tags (the codec) and its run config."""

from __future__ import annotations

from membership_pipeline.defs.membership.run_requests import run_request
from membership_pipeline.dispatch.run_tags import MODE_TAG, SEGMENTS_TAG
from membership_pipeline_tests.dispatch.test_segment_requests import request


def test_the_run_request_carries_the_mode_and_segments():
    incremental = run_request(request(5, ("8", "21")))
    assert incremental.tags[MODE_TAG] == "incremental"
    assert incremental.tags[SEGMENTS_TAG] == "8 21"
    config = incremental.run_config["ops"]["segment_membership_bitmaps"]["config"]
    assert config == {"force": False, "mode": "incremental"}
    full = run_request(request(5, None))
    assert full.tags[MODE_TAG] == "full" and SEGMENTS_TAG not in full.tags
    many = run_request(request(5, tuple(str(10_000 + k) for k in range(100)), total=500))
    assert many.tags[MODE_TAG] == "incremental" and SEGMENTS_TAG not in many.tags  # too long
