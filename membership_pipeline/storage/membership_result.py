"""Staging the engine's ``MembershipResult`` as a store version."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from membership_pipeline.evaluation import MembershipResult
from membership_pipeline.storage.bitmap_writer import BitmapWriter


def stage_membership_result(
    shadow: BitmapWriter, result: MembershipResult, *, with_universe: bool = True
) -> None:
    """Universe, every segment (bitmap or failure) and the atoms shared by several segments.
    Without the universe (an incremental version shares its base's), only its size is kept."""
    if with_universe:
        shadow.add_universe(result.universe)
    else:
        shadow.identity_count = len(result.universe)
    for key, members in result.segments.items():
        shadow.add_segment(key, result.segment_names.get(key), members)
    for key, failure in result.failures.items():
        shadow.add_failed_segment(
            key, result.segment_names.get(key), failure.reason_code, str(failure)
        )
    for atom, members in result.shared_atoms.items():
        # Labels can be long; the key is a stable digest of the label, the label its name.
        key = hashlib.sha256(atom.label.encode()).hexdigest()[:32]
        shadow.add_atom(key, atom.label, members)
