"""The members listing's cursor: which version a listing reads, where it stopped, and which
listing it belongs to, opaque to clients. Pure (no HTTP, no store): a malformed cursor, or one
brought to another listing, is one ``CursorInvalid`` naming why."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from membership_pipeline.storage.reader import MAX_IDENTITY_ID

MAX_VERSION_ID = (1 << 63) - 1  # the store's version ids are BIGINT
FORM = 2  # form 1 (no listing) was the previous release's: its cursors are refused as malformed
MALFORMED = "cursor is malformed: pass next_cursor from a page"
ELSEWHERE = (
    "cursor belongs to another listing (environment, segment or search): pass next_cursor "
    "from a page of this listing, or start again without cursor"
)


class CursorInvalid(ValueError):
    """A cursor this service did not make, or made for another listing."""


def listing_of(environment_key: str, segment_key: str, search: str | None) -> str:
    """What a listing is, in a few bytes: a cursor continues only the listing that made it."""
    named = json.dumps([environment_key, segment_key, search], ensure_ascii=False)
    return hashlib.blake2b(named.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


@dataclass(frozen=True)
class Cursor:
    version_id: int  # every page of a listing reads the version of its first page
    after_id: int  # the last identity id the previous page scanned
    listing: str  # ``listing_of`` the listing that made it

    def encode(self) -> str:
        raw = json.dumps(
            [FORM, self.version_id, self.after_id, self.listing], separators=(",", ":")
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, listing: str) -> Cursor:
        """The cursor ``text`` names, if it was made for ``listing``."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            form, version_id, after_id, made_for = json.loads(raw)
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise CursorInvalid(MALFORMED) from None
        ints = all(type(v) is int for v in (form, version_id, after_id))
        if (
            not ints
            or form != FORM
            or type(made_for) is not str
            or not (0 < version_id <= MAX_VERSION_ID and 0 <= after_id <= MAX_IDENTITY_ID)
        ):
            raise CursorInvalid(MALFORMED)
        if made_for != listing:
            raise CursorInvalid(ELSEWHERE)
        return cls(version_id, after_id, made_for)
