"""Whether a published version already holds every change a new replication slot cannot report
(pure policy: no database).

A logical slot reports the transactions that commit after its consistent point; what committed
before it must already be in the published version, or that environment needs a full refresh.
Both sides are told apart by PostgreSQL transaction ids (64-bit, never reused):

* ``slot_horizon``: the source's next transaction id read just after the slot was made. Every
  transaction that committed before the consistent point had its id by then, so its id is lower.
* ``source_xmin``: the oldest transaction still running when the version's first read took its
  snapshot (``pg_snapshot_xmin``); every lower id had ended, so each such commit is in what the
  version read. Later reads (a sharded backfill's shards) only see more.

So ``source_xmin >= slot_horizon`` means every transaction the slot misses had ended before the
version was read: the version holds it, and the slot reports everything after. It is a sufficient
condition, never a guess: a long transaction open across the slot's creation holds the version's
``source_xmin`` low, and that environment is refreshed as before. A commit-position (LSN) test
would not do: a transaction's commit record is in the WAL before the transaction becomes
visible to new snapshots (the commit waits for its flush and synchronous standbys in between).
"""

from __future__ import annotations


def read_after_slot(source_xmin: int | None, slot_horizon: int | None) -> bool:
    """Whether a version read at ``source_xmin`` holds every change committed before the slot
    made at ``slot_horizon`` (unknown on either side: no)."""
    return source_xmin is not None and slot_horizon is not None and source_xmin >= slot_horizon
