"""Database URLs as an operator writes them, made into the SQLAlchemy URL the project opens.

The project reads and writes PostgreSQL through psycopg2 (binary COPY, LISTEN/NOTIFY, the
replication functions) and SQLite through the standard library. SQLAlchemy 2.1 reads a plain
``postgresql://`` URL as psycopg 3, so every URL the project opens goes through ``database_url``:
``postgresql://`` and ``postgres://`` (Heroku's, libpq's spelling) become
``postgresql+psycopg2://``; a URL naming another PostgreSQL driver, another database or no
database at all is refused in one line that says what to write instead.
"""

from __future__ import annotations

import sqlalchemy as sa

POSTGRES_DRIVER = "postgresql+psycopg2"
EXAMPLES = "postgresql://user:password@host:5432/database or sqlite:///path/to/file.sqlite"


def database_url(url: str | sa.URL) -> sa.URL:
    """``url`` as the project opens it; ``ValueError`` (one line, password masked) if it
    cannot be."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(f"{url!r} is not a database URL (write {EXAMPLES})") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        return parsed
    if backend not in ("postgresql", "postgres"):
        raise ValueError(f"{_masked(parsed)}: {backend} is not supported (write {EXAMPLES})")
    if driver not in ("", "psycopg2"):
        raise ValueError(
            f"{_masked(parsed)}: the project reads PostgreSQL through psycopg2, not {driver} "
            "(write postgresql://... or postgresql+psycopg2://...)"
        )
    return parsed.set(drivername=POSTGRES_DRIVER)


def _masked(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)
