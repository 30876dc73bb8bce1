"""Sharded backfills: how an environment splits into identity-id ranges (pure policy), and the
work of planning, computing, staging and sealing the shards (no Dagster here; the Dagster ops in
``defs/membership`` call these)."""
