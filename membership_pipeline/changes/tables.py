"""Change detection's tables, on the store database's one ``MetaData`` (migration 0005): per
append-only source table, the highest id seen and where the next scan starts; per project, the
signature of its segment tables. They advance in the transaction that queues the changes they
saw."""

from __future__ import annotations

import sqlalchemy as sa

from membership_pipeline.database.metadata import metadata
from membership_pipeline.database.timestamps import UtcDateTime

source_watermark = sa.Table(
    "membership_source_watermark",
    metadata,
    sa.Column("table_name", sa.String(64), primary_key=True),
    sa.Column("last_id", sa.BigInteger(), nullable=False),
    sa.Column("scan_from", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

segment_signature = sa.Table(
    "membership_segment_signature",
    metadata,
    sa.Column("project_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("row_count", sa.BigInteger(), nullable=False),
    sa.Column("latest_change", UtcDateTime()),
    sa.Column("digest", sa.String(32), nullable=False),
    sa.Column("segment_digests", sa.Text()),  # JSON: segment key → digest (migration 0006)
)

# Change data capture (migration 0008): per replication slot, the position the store recorded
# (advanced in the transaction that records the changes; the slot follows after the commit), its
# state ("enabled" until its first tick, "streaming", "unavailable", "recreated", "busy") and
# what to tell an operator.
capture_state = sa.Table(
    "membership_capture",
    metadata,
    sa.Column("slot_name", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("confirmed_position", sa.BigInteger()),
    sa.Column("detail", sa.Text()),
    sa.Column("changes_recorded", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    # A `membership capture run` process holding the slot (the sensor then stands aside), and
    # until when its lease runs (renewed every tick).
    sa.Column("consumer", sa.String(255)),
    sa.Column("consumer_until", UtcDateTime()),
    # The source's next transaction id just after the slot was made (migration 0013): a version
    # whose source_xmin is at least this was read after the slot's consistent point.
    sa.Column("slot_horizon", sa.BigInteger()),
)
