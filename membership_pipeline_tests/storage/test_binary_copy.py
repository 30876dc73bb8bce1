"""Binary COPY into PostgreSQL: every column type the store uses, NULLs and non-ASCII text,
read back equal."""

from __future__ import annotations

import sqlalchemy as sa

from membership_pipeline.storage.binary_copy import copy_rows


def test_rows_round_trip_through_binary_copy(postgres_url: str) -> None:
    metadata = sa.MetaData()
    table = sa.Table(
        "copied",
        metadata,
        sa.Column("big", sa.BigInteger()),
        sa.Column("small", sa.Integer()),
        sa.Column("text", sa.String(50)),
        sa.Column("payload", sa.LargeBinary()),
    )
    rows = [
        {"big": 2**40, "small": -7, "text": "plan ✓ 日本", "payload": b"\x00\xff" * 3000},
        {"big": None, "small": 0, "text": None, "payload": b""},
        {"big": -1, "small": 2**31 - 1, "text": "", "payload": None},
    ]
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        copy_rows(conn, table, rows)
    with engine.connect() as conn:
        read = [dict(row._mapping) for row in conn.execute(sa.select(table))]
    engine.dispose()
    assert sorted(read, key=str) == sorted(rows, key=str)
