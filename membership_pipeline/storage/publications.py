"""Announcing publications: the flip (and a rollback) sends ``NOTIFY membership_published,
'<environment key>'`` in its transaction, so PostgreSQL delivers it exactly when the new pointer
commits. ``PublicationListener`` holds one ``LISTEN`` connection and tells a reader which
environment to re-check, so a reader with a pointer cache serves a new version milliseconds
after its flip instead of up to its TTL later. The TTL stays the fallback: while the listener is
disconnected (and once on every reconnect, for what it may have missed) it expires every
environment. SQLite has no notifications: there, the TTL alone applies.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable

import sqlalchemy as sa

from membership_pipeline.structured_logging import get_logger

CHANNEL = "membership_published"
POLL_SECONDS = 0.5  # how often the listener checks it was asked to stop

log = get_logger("store")


def announce(conn: sa.Connection, environment_key: str) -> None:
    """Notify listeners when ``conn``'s transaction commits (nothing on SQLite)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_notify(CHANNEL, environment_key)))


class PublicationListener:
    """A thread that calls ``on_publication(environment_key)`` for every announced publication,
    and ``on_publication(None)`` (every environment) on each (re)connect."""

    def __init__(
        self,
        engine: sa.Engine,
        on_publication: Callable[[str | None], None],
        *,
        retry_seconds: float = 1.0,
    ) -> None:
        self._engine = engine
        self._on_publication = on_publication
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publication-listener", daemon=True)

    def start(self) -> PublicationListener:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_SECONDS * 4)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as error:  # a lost connection: the TTL covers until we are back
                self.connected.clear()
                self._on_publication(None)
                log.warning(
                    "segment_membership.store.listener_lost",
                    error=str(error).splitlines()[0] if str(error) else type(error).__name__,
                    retry_seconds=self._retry_seconds,
                )
                self._stop.wait(self._retry_seconds)

    def _listen(self) -> None:
        pooled = self._engine.raw_connection()
        pooled.detach()  # held for good: never handed back to the pool mid-LISTEN
        connection = pooled.dbapi_connection
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")
            self._on_publication(None)  # what was published while we were not listening
            self.connected.set()
            log.info("segment_membership.store.listening", channel=CHANNEL)
            while not self._stop.is_set():
                if select.select([connection], [], [], POLL_SECONDS)[0]:
                    connection.poll()
                    while connection.notifies:
                        self._on_publication(connection.notifies.pop(0).payload)
        finally:
            connection.close()
