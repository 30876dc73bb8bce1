"""Full, incremental or delta: which segments and identities a backfill re-evaluates, and which
bitmaps it shares with the published version (pure policy: no database, no Dagster).

A backfill may be **incremental** only when it was asked to be, and when, as far as the source can
tell, nothing but segment definitions changed since the published version (its *base*):

* the base recorded the source as it read it (identity count, largest identity id, largest trait
  id, the environment's evaluation settings);
* the environment has the same identities: the same count and the same largest id (ids only
  grow, so an added identity moves the largest id and a removed one the count);
* no trait of the environment was added (traits above the base's largest trait id, checked up to
  a bound);
* the evaluation settings (api key, name, percentage-split key) are unchanged;
* at most ``max_changed_share`` of its segments changed ("most of the environment" is cheaper
  as a full backfill, and then every bitmap is fresh).

Then the segments whose definition digest differs from the base's (new or edited) are
re-evaluated, the base's bitmaps of the others are shared, and segments gone from the source are
left out. Anything else is a full backfill, with the reason. What no source can tell (an edited
trait value, a deleted trait: Flagsmith stamps neither) is what the refresh schedule's full
backfills are for.

A **delta** (``decide_delta``) re-evaluates the identities change data capture recorded as
changed, on every segment; segment edits that arrive with them are evaluated on every identity in
the same version, so a burst of trait writes and an edit publish together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DEFAULT_MAX_CHANGED_SHARE = 0.5
DEFAULT_DELTA_MAX_SHARE = 0.05  # of the environment's identities; more is cheaper as a full


class RefreshMode(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"
    DELTA = "delta"  # the pending (captured) identities re-evaluated on every segment


@dataclass(frozen=True)
class SourceMarks:
    """The source as one backfill saw it (in one snapshot)."""

    identity_count: int
    max_identity_id: int | None
    max_trait_id: int | None
    environment_digest: str
    # The oldest source transaction running when it read (``model.slot_coverage``; None: not
    # PostgreSQL, or not read by this backfill).
    snapshot_xmin: int | None = None


@dataclass(frozen=True)
class BaseVersion:
    """The published version an incremental backfill builds on."""

    version_id: int
    marks: SourceMarks | None  # None: made before versions recorded them
    segment_digests: Mapping[str, str | None]  # per segment key (None: digest unknown)
    # No later version was ever published: after a rollback, the changes the rolled-back
    # versions cleared from the pending identities are missing from this one (no delta on it).
    newest: bool = True


@dataclass(frozen=True)
class RefreshDecision:
    mode: RefreshMode
    reason: str
    base_version_id: int | None = None
    reevaluate: tuple[str, ...] = ()  # keys: new or edited (every key when full)
    reuse: tuple[str, ...] = ()  # keys whose base bitmap (or failure) is shared
    drop: tuple[str, ...] = ()  # keys in the base, gone from the source
    # A delta's new and edited segments: evaluated on every identity and written whole (its
    # other segments are re-evaluated for the changed identities only).
    rebuild: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


def definition_digest(segment: Mapping[str, Any]) -> str:
    """A digest of what decides a segment's members and how it is shown: its key, name and
    rule tree (canonical JSON)."""
    canonical = json.dumps(
        {"key": segment["key"], "name": segment.get("name"), "rules": segment.get("rules", [])},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def environment_digest(api_key: str, name: str, use_composite_hash_key: bool) -> str:
    """What of the environment an evaluation reads: the context (key, name) and the
    percentage-split key choice."""
    canonical = json.dumps([api_key, name, use_composite_hash_key])
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def decide_refresh(
    requested: RefreshMode,
    base: BaseVersion | None,
    current: SourceMarks,
    new_traits: int | None,
    segments: Sequence[Mapping[str, Any]],
    *,
    max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE,
) -> RefreshDecision:
    """``new_traits``: the environment's traits above the base's largest trait id (None: too
    many rows to check, or the base recorded none); ``segments``: the current definitions."""
    keys = tuple(str(s["key"]) for s in segments)

    def full(reason: str, **details: Any) -> RefreshDecision:
        return RefreshDecision(RefreshMode.FULL, reason, reevaluate=keys, details=details)

    if requested is RefreshMode.FULL:
        return full("a full backfill was requested")
    if base is None:
        return full("no published version to build on")
    if base.marks is None:
        return full(f"version {base.version_id} recorded no source marks")
    before = base.marks
    if before.environment_digest != current.environment_digest:
        return full("the environment's evaluation settings changed")
    if (before.identity_count, before.max_identity_id) != (
        current.identity_count,
        current.max_identity_id,
    ):
        return full(
            "identities changed: "
            f"{before.identity_count} → {current.identity_count} identities, "
            f"largest id {before.max_identity_id} → {current.max_identity_id}"
        )
    if current.max_trait_id != before.max_trait_id:
        if new_traits is None:
            return full(f"traits were added since version {base.version_id} (too many to check)")
        if new_traits:
            return full(f"{new_traits} traits of the environment were added", new_traits=new_traits)
    digests = {str(s["key"]): definition_digest(s) for s in segments}
    changed = tuple(k for k in keys if base.segment_digests.get(k) != digests[k])
    if len(changed) > max_changed_share * max(len(keys), 1):
        return full(
            f"{len(changed)} of {len(keys)} segments changed (more than "
            f"{max_changed_share:.0%}: cheaper as a full backfill)"
        )
    reuse = tuple(k for k in keys if k not in changed)
    drop = tuple(sorted(k for k in base.segment_digests if k not in digests))
    return RefreshDecision(
        RefreshMode.INCREMENTAL,
        f"{len(changed)} segments new or edited, {len(reuse)} unchanged, {len(drop)} deleted "
        f"since version {base.version_id}",
        base_version_id=base.version_id,
        reevaluate=changed,
        reuse=reuse,
        drop=drop,
    )


def decide_delta(
    base: BaseVersion | None,
    environment_digest_now: str,
    segments: Sequence[Mapping[str, Any]],
    pending: int,
    *,
    max_share: float = DEFAULT_DELTA_MAX_SHARE,
    max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE,
) -> RefreshDecision:
    """A delta re-evaluates the ``pending`` identities on every segment and shares every other
    chunk with the base, worth it only for a small share of the environment. Segments new or
    edited since the base are evaluated on every identity besides (an incremental backfill's
    work, in the same version: one backfill does both), and deleted ones left out; when most
    segments changed, a full backfill is cheaper."""
    keys = tuple(str(s["key"]) for s in segments)

    def full(reason: str) -> RefreshDecision:
        return RefreshDecision(RefreshMode.FULL, reason, reevaluate=keys)

    if base is None:
        return full("no published version to build on")
    if base.marks is None:
        return full(f"version {base.version_id} recorded no source marks")
    if base.marks.environment_digest != environment_digest_now:
        return full("the environment's evaluation settings changed")
    if not base.newest:
        return full(f"version {base.version_id} was rolled back to: a delta needs the newest")
    size = base.marks.identity_count
    if pending > max_share * max(size, 1):
        return full(
            f"{pending} changed identities of {size} (more than {max_share:.0%}): cheaper as a "
            "full backfill"
        )
    digests = {str(s["key"]): definition_digest(s) for s in segments}
    edited = tuple(k for k in keys if base.segment_digests.get(k) != digests[k])
    deleted = tuple(sorted(k for k in base.segment_digests if k not in digests))
    if len(edited) > max_changed_share * max(len(keys), 1):
        return full(
            f"{len(edited)} of {len(keys)} segments changed besides {pending} changed identities "
            f"(more than {max_changed_share:.0%}): cheaper as a full backfill"
        )
    edits = ""
    if edited or deleted:
        edits = (
            f", and {len(edited)} new or edited segments on every identity ({len(deleted)} deleted)"
        )
    return RefreshDecision(
        RefreshMode.DELTA,
        f"{pending} changed identities re-evaluated on {len(keys)} segments{edits}, on version "
        f"{base.version_id}",
        base_version_id=base.version_id,
        reevaluate=keys,
        drop=deleted,
        rebuild=edited,
    )
