"""The one ``MetaData`` of the store's database. Each bounded context declares its own tables on
it, in its own ``tables`` module: the bitmap store (``storage.tables``), the dispatcher's queue
(``dispatch.tables``) and change detection's watermarks (``changes.tables``). One Alembic chain
(``migrations/versions``) creates them all; a test compares it with the tables declared here."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY.
VersionId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
