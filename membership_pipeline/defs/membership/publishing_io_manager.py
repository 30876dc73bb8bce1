"""The publishing IO manager: the final step's output is the shadow version every shard staged;
it is sealed (the shards' parts merged into one directory) and published with one atomic flip,
which also marks the backfill ``succeeded``. Until that flip, readers keep the previous version.
Its load side hands downstream assets the published version."""

import time
from dataclasses import dataclass, field

import dagster as dg

from membership_pipeline.defs.membership.backfill_events import log
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.model.refresh_mode import RefreshMode
from membership_pipeline.storage import PublishedMembership, SealedTotals, ShardReport, StagedPlan
from membership_pipeline.storage.reader import segment_order

MAX_TABLE_ROWS = 500
PHASES = ("read", "evaluate", "audit", "write")
PUBLISHING_IO_MANAGER = "membership_io_manager"  # its resource key


@dataclass
class StagedVersion:
    """What the final step hands its IO manager: the plan and every shard's report."""

    plan: StagedPlan
    shards: list[ShardReport]
    seconds: dict[str, float] = field(default_factory=dict)


class PublishingIOManager(dg.IOManager):
    def __init__(self, membership_store: MembershipStoreResource) -> None:
        self.membership_store = membership_store

    def handle_output(self, context: dg.OutputContext, obj: StagedVersion) -> None:
        store, plan = self.membership_store.get(), obj.plan
        started = time.perf_counter()
        totals = store.seal_shards(plan)
        obj.seconds["seal"] = time.perf_counter() - started
        started = time.perf_counter()
        publication = store.publish(plan.claim, plan.version_id)
        obj.seconds["flip"] = time.perf_counter() - started
        log.info(
            "segment_membership.backfill.published",
            environment=plan.environment_key,
            run_id=context.run_id,
            version=publication.version_id,
            previous_version=publication.previous_version_id,
            identities=totals.identity_count,
            segments=totals.segments,
            failed_segments=totals.failed_segments,
            shards=len(plan.shards),
            mode=plan.mode.value,
            reevaluated_segments=totals.reevaluated_segments,
            reused_segments=totals.reused_segments,
            bytes_written=totals.bytes,
            bytes_shared=totals.shared_bytes,
        )
        if plan.mode is RefreshMode.FULL:  # its answers by identity are the live ones now
            vacuumed = store.vacuum_answers()
            if vacuumed is not None:
                obj.seconds["vacuum_answers"] = vacuumed
        published = store.reader().published(plan.environment_key)
        context.add_output_metadata(_metadata(obj, published, totals))

    def load_input(self, context: dg.InputContext) -> PublishedMembership:
        return self.membership_store.get().reader().published(context.asset_partition_key)


@dg.io_manager(required_resource_keys={"membership_store"})
def publishing_io_manager(context: dg.InitResourceContext) -> PublishingIOManager:
    """Over the shared store resource, as ``staging_io_manager`` (see there why)."""
    return PublishingIOManager(context.resources.membership_store)


def _metadata(
    obj: StagedVersion, published: PublishedMembership, totals: SealedTotals
) -> dict[str, object]:
    counts = sorted(published.segment_counts().items(), key=lambda item: item[1], reverse=True)
    freshness = published.segment_freshness()
    evaluated = {str(s["key"]) for s in obj.plan.segments}
    segment_table = dg.TableMetadataValue(
        records=[
            dg.TableRecord(
                {
                    "segment": key,
                    "name": published.segment_name(key) or "",
                    "members": members,
                    "evaluated_as_of": freshness[key].isoformat(),
                    "reevaluated": key in evaluated,
                }
            )
            for key, members in counts[:MAX_TABLE_ROWS]
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("segment", "string"),
                dg.TableColumn("name", "string"),
                dg.TableColumn("members", "int"),
                dg.TableColumn("evaluated_as_of", "string"),
                dg.TableColumn("reevaluated", "bool"),
            ]
        ),
    )
    shard_table = dg.TableMetadataValue(
        records=[
            dg.TableRecord(
                {
                    "shard": s.index,
                    "first_id": s.first_id,
                    "last_id": s.last_id,
                    "identities": s.identity_count or 0,
                    "attempts": s.attempts,
                    "peak_rss_mb": int(s.report.get("peak_rss_mb", 0)),
                    **{
                        f"seconds_{phase}": float(s.report.get("seconds", {}).get(phase, 0.0))
                        for phase in PHASES
                    },
                }
            )
            for s in obj.shards[:MAX_TABLE_ROWS]
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("shard", "int"),
                dg.TableColumn("first_id", "int"),
                dg.TableColumn("last_id", "int"),
                dg.TableColumn("identities", "int"),
                dg.TableColumn("attempts", "int"),
                dg.TableColumn("peak_rss_mb", "int"),
                *(dg.TableColumn(f"seconds_{phase}", "float") for phase in PHASES),
            ]
        ),
    )
    # Work summed over shards (they run in parallel: the run's wall time is less).
    summed = {
        phase: sum(float(s.report.get("seconds", {}).get(phase, 0.0)) for s in obj.shards)
        for phase in PHASES
    }
    first_report = obj.shards[0].report if obj.shards else {}
    plan = obj.plan
    delta = first_report.get("delta", {}) if plan.delta else {}
    return {
        "environment": plan.environment.display_name,
        "version": published.version_id,
        "as_of": dg.MetadataValue.timestamp(plan.as_of),
        # Full, or incremental: new and edited segments re-evaluated, the rest shared.
        "mode": plan.mode.value,
        "mode_reason": plan.mode_reason,
        "base_version": plan.base_version_id,
        "segments_reevaluated": dg.MetadataValue.json(sorted(evaluated, key=segment_order)),
        "segments_reused": totals.reused_segments,
        "segments_dropped": dg.MetadataValue.json(list(plan.dropped_segments)),
        "oldest_evaluated_as_of": dg.MetadataValue.timestamp(
            min(freshness.values(), default=plan.as_of)
        ),
        # What the read skipped: every trait of a key outside this list (no segment reads it).
        "trait_keys_read": dg.MetadataValue.json(first_report.get("trait_keys_read", [])),
        "trait_rows_read": sum(int(s.report.get("trait_rows", 0)) for s in obj.shards),
        "identities": published.identity_count,
        "segments": len(counts),
        "failed_segments": dg.MetadataValue.json(published.failed_segments),
        "bytes": totals.bytes,  # written by this version
        "bytes_shared": totals.shared_bytes,  # shared with earlier versions, not copied
        # A delta: the changed identities re-evaluated on every segment; a chunk holding a
        # changed bit patched over its payload (or rewritten once the patch outgrows it), the
        # others linked.
        **(
            {
                "identities_reevaluated": delta.get("identities", 0),
                # segment edits published with it: evaluated on every identity, written whole
                "segments_rebuilt": dg.MetadataValue.json(list(plan.rebuilt_segments)),
                "bitmaps_rewritten": delta.get("bitmaps_rewritten", 0),
                "bitmaps_shared": delta.get("bitmaps_shared", 0),
                "chunks_patched": delta.get("chunks_patched", 0),
                "chunks_rewritten": delta.get("chunks_written", 0),
                "chunks_linked": delta.get("chunks_linked", 0),
                # previous answers: rows of the answers by identity, else payload bytes read
                "answer_rows_read": delta.get("answer_rows_read", 0),
                "payload_bytes_read": delta.get("payload_bytes_read", 0),
            }
            if plan.delta
            else {}
        ),
        "segment_counts": segment_table,
        "shards": len(obj.shards),
        "shard_identities": obj.plan.shard_identities,
        "shard_table": shard_table,
        **{f"seconds_{step}": round(value, 3) for step, value in (summed | obj.seconds).items()},
    }
