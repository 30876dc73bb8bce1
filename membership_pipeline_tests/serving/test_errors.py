"""The one table from the store's errors to what a client sees: a status and one line."""

from __future__ import annotations

import pytest

from membership_pipeline.model.errors import (
    ClaimLost,
    NotYetPublished,
    SegmentUnavailable,
    UnknownEnvironment,
    UnknownIdentity,
    UnknownSegment,
    VersionCollected,
)
from membership_pipeline.serving.cursor import CursorInvalid
from membership_pipeline.serving.errors import STATUS_OF, ApiError, api_error


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (UnknownEnvironment("env_1"), 404, "environment 'env_1' has no published version yet"),
        (NotYetPublished("env_1", "running"), 404, "environment 'env_1' has no published "
                                                   "version yet"),
        (UnknownSegment("env_1", "17", 4), 404, "segment '17' is not in version 4"),
        (UnknownIdentity("env_1", 9, 4), 404, "identity 9 is not in version 4"),
        (SegmentUnavailable("env_1", "17", "invalid_regex", "bad"), 409,
         "segment '17' could not be evaluated: segment '17' of environment 'env_1' has no "
         "bitmap in the published version: invalid_regex: bad"),
        (VersionCollected("gone"), 410, "the listing's version has been collected: start again "
                                        "without cursor"),
        (CursorInvalid("cursor is malformed: pass next_cursor from a page"), 400,
         "cursor is malformed: pass next_cursor from a page"),
        (ApiError(403, "this API key may not read environment 'x'"), 403,
         "this API key may not read environment 'x'"),
    ],
)  # fmt: skip
def test_each_refusal_is_a_status_and_one_line(error, status, message):
    answer = api_error(error)
    assert (answer.status, answer.message) == (status, message)
    assert "\n" not in answer.message


def test_the_table_covers_every_error_a_read_can_raise_and_nothing_else():
    assert set(STATUS_OF) == {
        UnknownEnvironment,
        NotYetPublished,
        UnknownSegment,
        UnknownIdentity,
        SegmentUnavailable,
        VersionCollected,
        CursorInvalid,
    }
    with pytest.raises(TypeError, match="ClaimLost has no HTTP status"):
        api_error(ClaimLost("a writer's error, never a reader's"))
