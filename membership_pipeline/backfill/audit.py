"""The backfill's audit: the shards' samples re-evaluated by flag-engine, combined into one
report (the asset check's); a disagreement fails the backfill before anything is published."""

from __future__ import annotations

from membership_pipeline.evaluation.reference_audit import AuditReport
from membership_pipeline.storage import ShardReport


class AuditFailed(RuntimeError):
    """The bitmaps disagree with flag-engine on the audited sample: nothing is published."""


def combined_audit(reports: list[ShardReport]) -> AuditReport:
    """The backfill's audit: every shard's share, with the mismatches each shard kept."""
    audits = [r.report.get("audit", {}) for r in reports]
    listed = [(str(s), int(i), bool(e)) for a in audits for s, i, e in a.get("mismatches", [])]
    counted = sum(a.get("mismatch_count", 0) for a in audits)
    return AuditReport(
        identities=sum(a.get("identities", 0) for a in audits),
        pairs=sum(a.get("pairs", 0) for a in audits),
        mismatches=listed,
        unlisted_mismatches=counted - len(listed),
    )
