"""The backfill application layer: one backfill of one environment, step by step — plan it
(claim held, one snapshot of the source), compute each shard, stage it into the shadow version,
combine the shards' audits — on top of the sources, the engine and the store. No Dagster here:
the ops in ``defs/membership`` call these on whichever executor runs them, and the tests call
them directly."""
