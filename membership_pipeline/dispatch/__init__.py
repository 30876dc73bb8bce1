"""The backfill dispatcher: which environment backfills to launch, decided as data."""
