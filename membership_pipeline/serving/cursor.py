"""The members listing's cursor: which version a listing reads and where it stopped, opaque to
clients. Pure (no HTTP, no store): a malformed cursor is one ``CursorInvalid`` naming why."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

MAX_ID = (1 << 63) - 1


class CursorInvalid(ValueError):
    """A cursor this service did not make (or made for another listing)."""


@dataclass(frozen=True)
class Cursor:
    version_id: int  # every page of a listing reads the version of its first page
    after_id: int  # the last identity id the previous page scanned

    def encode(self) -> str:
        raw = json.dumps([1, self.version_id, self.after_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            form, version_id, after_id = json.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise CursorInvalid("cursor is malformed: pass next_cursor from a page") from None
        ints = all(type(v) is int for v in (form, version_id, after_id))
        if not ints or form != 1 or not (0 < version_id <= MAX_ID and 0 <= after_id <= MAX_ID):
            raise CursorInvalid("cursor is malformed: pass next_cursor from a page")
        return cls(version_id, after_id)
