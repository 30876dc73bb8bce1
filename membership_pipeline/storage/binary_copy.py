"""Rows into a PostgreSQL table through ``COPY ... FROM STDIN (FORMAT binary)``.

A version's chunk rows are few (hundreds) but large (bitmap payloads, tens of MB in all). An
``INSERT`` sends each payload as hex text for the server to parse; binary ``COPY`` sends the
bytes as they are. The stream is PostgreSQL's documented binary format: a signature, then per
row a field count and each field as its length and its binary value (big-endian integers,
UTF-8 text, raw bytea).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # no OIDs, no extension
_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)


def copy_rows(conn: sa.Connection, table: sa.Table, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append ``rows`` (dicts by column name) to ``table`` in the connection's transaction."""
    columns = list(table.columns)
    encoders = [_encoder(column) for column in columns]
    stream = io.BytesIO()
    stream.write(_SIGNATURE)
    field_count = struct.pack(">h", len(columns))
    for row in rows:
        stream.write(field_count)
        for column, encode in zip(columns, encoders, strict=True):
            value = row.get(column.name)  # a column the row leaves out is null
            if value is None:
                stream.write(_NULL)
                continue
            data = encode(value)
            stream.write(struct.pack(">i", len(data)))
            stream.write(data)
    stream.write(_TRAILER)
    stream.seek(0)
    quote = conn.dialect.identifier_preparer
    names = ", ".join(quote.quote(column.name) for column in columns)
    statement = f"COPY {quote.format_table(table)} ({names}) FROM STDIN (FORMAT binary)"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.copy_expert(statement, stream)
    finally:
        cursor.close()


def _encoder(column: sa.Column) -> Callable[[Any], bytes]:
    kind = column.type
    if isinstance(kind, sa.BigInteger):
        return struct.Struct(">q").pack
    if isinstance(kind, sa.Integer):
        return struct.Struct(">i").pack
    if isinstance(kind, sa.String):
        return lambda value: str(value).encode("utf-8")
    if isinstance(kind, sa.LargeBinary):
        return bytes
    raise TypeError(f"column {column.name} of type {kind} has no binary COPY encoder here")
