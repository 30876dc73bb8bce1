"""What a request that cannot be answered gets: a status and one line, ``{"error": "..."}``.

``ApiError`` is the service's own refusal (an unknown key, a scope, a bad combination of
parameters); ``STATUS_OF`` is the one table from the store's errors (and a bad cursor) to the
status and line a client sees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from membership_pipeline.model.errors import (
    NotYetPublished,
    SegmentUnavailable,
    UnknownEnvironment,
    UnknownIdentity,
    UnknownSegment,
    VersionCollected,
)
from membership_pipeline.serving.cursor import CursorInvalid

COLLECTED = "the listing's version has been collected: start again without cursor"


class ApiError(Exception):
    """An answer other than 200, with a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _no_version(error: Any) -> str:
    return f"environment {error.environment_key!r} has no published version yet"


STATUS_OF: dict[type[Exception], tuple[int, Callable[[Any], str]]] = {
    UnknownEnvironment: (404, _no_version),
    NotYetPublished: (404, _no_version),
    UnknownSegment: (404, lambda e: f"segment {e.segment_key!r} is not in version {e.version_id}"),
    UnknownIdentity: (404, lambda e: f"identity {e.identity_id} is not in version {e.version_id}"),
    SegmentUnavailable: (409, lambda e: f"segment {e.segment_key!r} could not be evaluated: {e}"),
    # Collected between a cursor's check and the chunks' read, or before the cursor came back.
    VersionCollected: (410, lambda _: COLLECTED),
    CursorInvalid: (400, str),
}


def api_error(error: Exception) -> ApiError:
    """The answer for ``error`` (one of ``STATUS_OF``'s types, or an ``ApiError``)."""
    if isinstance(error, ApiError):
        return error
    for kind, (status, message) in STATUS_OF.items():
        if isinstance(error, kind):
            return ApiError(status, message(error))
    raise TypeError(f"{type(error).__name__} has no HTTP status") from error
