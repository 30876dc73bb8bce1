"""The store's database: connections (PostgreSQL or an embedded SQLite file), the one SQLAlchemy
``MetaData`` every bounded context puts its tables on (``storage.tables``, ``dispatch.tables``,
``changes.tables``), and the one Alembic chain that creates them (``migrations/``)."""
