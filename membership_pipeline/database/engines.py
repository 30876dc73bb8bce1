"""Connections to the store's database: PostgreSQL (production) or an SQLite file (embedded).

Two engines over one database. Writers serialise on the rows they change; readers take one
snapshot per transaction, so a pointer and the directory it points at are read together.
- PostgreSQL: writers use READ COMMITTED (a conditional ``UPDATE`` waits for a concurrent one and
  re-checks its condition, which is what makes a claim a compare-and-set); readers use a
  read-only REPEATABLE READ snapshot.
- SQLite: WAL mode, so readers never block the writer. Writers open with ``BEGIN IMMEDIATE``:
  they queue on the write lock up front instead of failing when a read lock cannot be upgraded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from membership_pipeline.database.urls import database_url

SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class StoreDatabase:
    url: str
    writer: sa.Engine
    reader: sa.Engine
    # Single-statement reads that need no snapshot (the pointer check on every read): on
    # PostgreSQL autocommit, one round trip instead of BEGIN / SET / SELECT / ROLLBACK.
    probe: sa.Engine

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    def dispose(self) -> None:
        for engine in {self.writer, self.reader, self.probe}:
            engine.dispose()


def open_database(url: str, pool_size: int = 5) -> StoreDatabase:
    try:
        parsed = database_url(url)
    except ValueError as error:
        raise ValueError(f"the store URL {error}") from None
    if parsed.get_backend_name() == "sqlite":
        reader = _sqlite_engine(parsed)
        return StoreDatabase(url, _sqlite_engine(parsed, "BEGIN IMMEDIATE"), reader, reader)
    writer = sa.create_engine(parsed, pool_size=pool_size, pool_pre_ping=True)
    reader = writer.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    probe = sa.create_engine(parsed, pool_size=pool_size, isolation_level="AUTOCOMMIT")
    return StoreDatabase(url, writer, reader, probe)


def _sqlite_engine(url: sa.URL, begin: str = "BEGIN") -> sa.Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN (the driver's own would be deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql(begin)

    return engine


def insert_if_absent(conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` on either backend."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(table).values(**values).on_conflict_do_nothing())
