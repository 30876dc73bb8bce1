"""The scheduled garbage collection: a real run of its job against the real store collects the
retired versions beyond those kept (never the published one, nor one a reader may still hold),
and shows what it did as the op's metadata."""

from __future__ import annotations

import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.defs.membership.garbage_collection import garbage_collection_job
from membership_pipeline.defs.membership.resources import MembershipStoreResource
from membership_pipeline.storage.tables import version
from membership_pipeline_tests.storage.conftest import backfill


def collect(instance, store_url, keep_retired, grace_seconds):
    result = garbage_collection_job.execute_in_process(
        instance=instance,
        resources={"membership_store": MembershipStoreResource(url=store_url)},
        run_config={
            "ops": {
                "collect_garbage": {
                    "config": {"keep_retired": keep_retired, "grace_seconds": grace_seconds}
                }
            }
        },
    )
    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return output.event_specific_data.metadata  # the op's report


def states(store):
    with store.database.reader.connect() as conn:
        return dict(conn.execute(sa.select(version.c.version_id, version.c.state)).all())


def test_the_job_collects_retired_versions_beyond_those_kept(instance, store, store_url):
    published = [backfill(store, "env", {"1": BitMap([i, 100 + i])}) for i in range(4)]
    ids = [p.version_id for p in published]
    within_grace = collect(instance, store_url, keep_retired=0, grace_seconds=3600)
    assert within_grace["retired_versions"].value == 0  # readers may still hold them
    assert list(states(store).values()).count("retired") == 3

    report = collect(instance, store_url, keep_retired=1, grace_seconds=0)
    assert report["retired_versions"].value == 2 and report["bytes_freed"].value > 0
    # Then the answers by identity are vacuumed (PostgreSQL; SQLite has nothing to vacuum).
    assert ("answers_vacuum_seconds" in report) == (store.database.dialect == "postgresql")
    assert states(store) == {ids[2]: "retired", ids[3]: "published"}
    reader = store.reader().published("env")
    assert reader.bitmap("1") == BitMap([3, 103])  # the published version is untouched
