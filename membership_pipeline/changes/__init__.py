"""Change detection: what changed in Flagsmith's database since the last look, and the watermarks
that remember where that look ended (kept in the store's database, advanced in the transaction
that queues what they saw). The reading itself is ``sources.change_feed``; turning changes into
backfill requests is ``dispatch.intake``."""
