"""The publishing IO manager: the asset's output is written as a shadow version of the store,
then published with one atomic flip (which also marks the backfill ``succeeded``). Until that
flip, readers keep the previous version. Its load side hands downstream assets the published
version."""

import time
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg

from membership_pipeline.defs.membership.backfill_events import fail_backfill, log
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.evaluation import MembershipResult
from membership_pipeline.storage import (
    Claim,
    MembershipStore,
    PublishedMembership,
    stage_membership_result,
)

MAX_TABLE_ROWS = 500


@dataclass
class ComputedMembership:
    """What the asset hands its IO manager: the claim it holds and the bitmaps to publish."""

    store: MembershipStore
    claim: Claim
    result: MembershipResult
    as_of: datetime
    seconds: dict[str, float] = field(default_factory=dict)


class PublishingIOManager(dg.ConfigurableIOManager):
    membership_store: dg.ResourceDependency[MembershipStoreResource]

    def handle_output(self, context: dg.OutputContext, obj: ComputedMembership) -> None:
        store, claim, result = obj.store, obj.claim, obj.result
        try:
            started = time.perf_counter()
            shadow = store.stage(claim, as_of=obj.as_of)
            stage_membership_result(shadow, result)
            shadow.seal(now=store.clock())
            obj.seconds["write"] = time.perf_counter() - started
            started = time.perf_counter()
            publication = store.publish(claim, shadow)
            obj.seconds["flip"] = time.perf_counter() - started
        except BaseException as error:
            fail_backfill(store, claim, context.run_id, error)
            raise
        log.info(
            "segment_membership.backfill.published",
            environment=claim.environment_key,
            run_id=context.run_id,
            version=publication.version_id,
            previous_version=publication.previous_version_id,
            identities=len(result.universe),
            segments=len(result.segments),
            failed_segments=len(result.failures),
        )
        context.add_output_metadata(_metadata(obj, publication.version_id, shadow.byte_size))

    def load_input(self, context: dg.InputContext) -> PublishedMembership:
        return self.membership_store.get().reader().published(context.asset_partition_key)


def _metadata(obj: ComputedMembership, version_id: int, byte_size: int) -> dict[str, object]:
    result = obj.result
    rows = sorted(result.segments.items(), key=lambda item: len(item[1]), reverse=True)
    table = dg.TableMetadataValue(
        records=[
            dg.TableRecord(
                {"segment": key, "name": result.segment_names.get(key, ""), "members": len(bitmap)}
            )
            for key, bitmap in rows[:MAX_TABLE_ROWS]
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("segment", "string"),
                dg.TableColumn("name", "string"),
                dg.TableColumn("members", "int"),
            ]
        ),
    )
    return {
        "version": version_id,
        "as_of": dg.MetadataValue.timestamp(obj.as_of),
        "identities": len(result.universe),
        "segments": len(result.segments),
        "failed_segments": dg.MetadataValue.json(
            {key: str(error) for key, error in result.failures.items()}
        ),
        "bytes": byte_size,
        "segment_counts": table,
        **{f"seconds_{step}": round(value, 3) for step, value in obj.seconds.items()},
    }
