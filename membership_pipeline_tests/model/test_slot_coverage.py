"""A version holds what a new slot misses only when every transaction below the slot's horizon
had ended before the version was read; unknown on either side is "no" (refresh)."""

from __future__ import annotations

from membership_pipeline.model.slot_coverage import read_after_slot


def test_a_version_read_after_every_transaction_below_the_horizon_ended_is_covered() -> None:
    assert read_after_slot(1_000, 1_000) and read_after_slot(1_001, 1_000)
    assert not read_after_slot(999, 1_000)  # a transaction below the horizon may be missing
    assert not read_after_slot(None, 1_000)  # a version from before versions recorded it
    assert not read_after_slot(1_000, None)  # a slot made by someone else, horizon unknown
