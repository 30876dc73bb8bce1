"""Roaring-bitmap segment membership for Flagsmith environments.

The package is laid out as the pipeline runs, in layers whose imports run one way (checked by
``lint-imports``, see ``[tool.importlinter]`` in pyproject.toml), from the bottom:

- ``model``: the domain as values and pure policies, and the errors every layer shares;
- ``database`` (the store's database, its one MetaData and Alembic chain) and ``evaluation``
  (segment rules → bitmaps);
- ``sources`` (Flagsmith's database, read-only) and ``storage`` (the bitmap store);
- ``backfill`` (one backfill, step by step), ``changes`` (change detection) and ``dispatch``
  (which backfills to launch);
- ``defs`` (the Dagster definitions; ``definitions.py`` is the entry point) and ``serving`` (the
  HTTP read API);
- ``cli`` and ``demo``; ``benchmarks`` on top.
"""
