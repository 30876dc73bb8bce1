"""The domain model: value types and pure policies every layer shares (the shard plan, full or
incremental refreshes, what change detection saw, the environment's names) and one module of
errors. No database, no Dagster, no data frames: everything here is decided from values."""
