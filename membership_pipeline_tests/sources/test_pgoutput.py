"""pgoutput's messages decoded from their documented byte layout: relations, inserts, updates
with an old key, deletes by replica identity, unchanged TOAST values, truncates; anything that
does not parse is one line naming the position."""

from __future__ import annotations

import struct

import pytest

from membership_pipeline.model.errors import UndecodableMessage
from membership_pipeline.sources.pgoutput import (
    PgOutputDecoder,
    RowChange,
    Truncate,
    format_lsn,
    parse_lsn,
)


def string(text: str) -> bytes:
    return text.encode() + b"\x00"


def relation(oid: int, name: str, columns: list[str]) -> bytes:
    body = struct.pack(">i", oid) + string("public") + string(name) + b"d"
    body += struct.pack(">h", len(columns))
    for column in columns:
        body += b"\x00" + string(column) + struct.pack(">ii", 23, -1)
    return b"R" + body


def values(*items: str | bytes | None) -> bytes:
    out = struct.pack(">h", len(items))
    for item in items:
        if item is None:
            out += b"n"
        elif item == b"u":
            out += b"u"
        else:
            data = str(item).encode()
            out += b"t" + struct.pack(">i", len(data)) + data
    return out


BEGIN = b"B" + struct.pack(">qqi", 100, 0, 7)
COMMIT = b"C" + b"\x00" + struct.pack(">qqq", 100, 0x1_0000_00A0, 0)


def test_a_transaction_of_every_kind_of_change():
    decoder = PgOutputDecoder()
    columns = ["id", "identity_id", "trait_key", "string_value"]
    messages = [
        BEGIN,
        relation(16385, "environments_trait", columns),
        b"I" + struct.pack(">i", 16385) + b"N" + values("1", "10", "plan", "gold"),
        # an update that moved the key: old key first, then the new row (a TOASTed value kept)
        b"U" + struct.pack(">i", 16385) + b"K" + values(None, "10", "plan", None)
        + b"N" + values("1", "11", "plan", b"u"),
        b"D" + struct.pack(">i", 16385) + b"K" + values(None, "12", "tier", None),
        b"T" + struct.pack(">ib", 1, 0) + struct.pack(">i", 16385),
        b"Y" + struct.pack(">i", 99) + string("public") + string("mood"),
    ]  # fmt: skip
    assert all(decoder.feed(1, m) is None for m in messages)
    done = decoder.feed(2, COMMIT)
    assert done is not None and done.end == 0x1_0000_00A0
    inserted, updated, deleted, truncated = done.changes
    assert inserted == RowChange(
        "insert",
        "environments_trait",
        {"id": "1", "identity_id": "10", "trait_key": "plan", "string_value": "gold"},
        None,
    )
    assert isinstance(updated, RowChange) and updated.old is not None and updated.new is not None
    assert updated.old["identity_id"] == "10" and updated.new["identity_id"] == "11"
    assert "string_value" not in updated.new  # unchanged TOAST: not sent
    assert deleted == RowChange(
        "delete",
        "environments_trait",
        None,
        {"id": None, "identity_id": "12", "trait_key": "tier", "string_value": None},
    )
    assert truncated == Truncate(("environments_trait",))


@pytest.mark.parametrize(
    "message, problem",
    [
        (b"Z", "unknown message type b'Z'"),
        (b"I" + struct.pack(">i", 4242) + b"N", "4242"),  # a relation never announced
        (b"C\x00" + struct.pack(">qq", 1, 2), "message ends at byte"),
    ],
)
def test_what_does_not_parse_is_one_line_naming_the_position(message, problem):
    decoder = PgOutputDecoder()
    decoder.feed(1, BEGIN)
    with pytest.raises(UndecodableMessage) as refused:
        decoder.feed(0x16B3748, message)
    said = str(refused.value)
    assert "\n" not in said and "at 0/16B3748" in said and problem in said


def test_positions_print_as_postgresql_does():
    assert format_lsn(parse_lsn("1A/2B3C")) == "1A/2B3C"
    assert parse_lsn("0/16B3748") == 0x16B3748
