"""The ``membership`` command, run for real in a subprocess against each backend."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from pyroaring import BitMap

from membership_pipeline.database.schema import head_revision, migrate
from membership_pipeline.storage import MembershipStore
from membership_pipeline_tests.storage.conftest import backfill


def membership(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "membership_pipeline.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "MEMBERSHIP_STORE_URL": store_url},
        timeout=120,
    )


def test_the_store_commands(database_url):
    first = membership(database_url, "migrate")
    assert first.returncode == 0, first.stderr
    assert f"migrated from empty to revision {head_revision()}" in first.stdout
    assert "(unchanged)" in membership(database_url, "migrate").stdout

    with MembershipStore(database_url, cooldown=timedelta(0)) as store:
        backfill(store, "env", {"odd": BitMap(range(1, 100, 2))}, universe=BitMap(range(100)))
        backfill(store, "env", {"odd": BitMap(range(1, 200, 2))}, universe=BitMap(range(200)))

    status = membership(database_url, "status")
    assert status.returncode == 0
    assert status.stdout.splitlines()[1].split()[:3] == ["env", "-", "succeeded"]  # no name
    # written as a bare version (no answers by identity): deltas would read chunks
    assert "answers by identity (what a delta reads): env none (its deltas read" in status.stdout
    assert (
        json.loads(membership(database_url, "--json", "status", "env").stdout)[0][
            "published_identity_count"
        ]
        == 200
    )

    assert membership(database_url, "count", "env", "odd").stdout.startswith("100 identities")
    page = json.loads(
        membership(database_url, "--json", "members", "env", "odd", "--limit", "3").stdout
    )
    assert page == {"ids": [1, 3, 5], "next_after": 5}
    sample = json.loads(
        membership(database_url, "--json", "sample", "env", "odd", "-n", "5").stdout
    )
    assert len(sample["ids"]) == 5 and all(i % 2 for i in sample["ids"])
    assert membership(database_url, "segments-of", "env", "7").stdout.strip() == "odd"
    assert "is not in odd" in membership(database_url, "is-member", "env", "odd", "8").stdout
    segments = json.loads(membership(database_url, "--json", "segments", "env").stdout)
    assert segments["segments"] == [
        {
            "key": "odd",
            "name": "ODD",
            "count": 100,
            "error": None,
            "evaluated_as_of": segments["as_of"],  # written whole: every segment as of then
        }
    ]

    unknown = membership(database_url, "count", "env", "even")
    assert unknown.returncode == 1
    assert "segment 'even' is not in environment 'env'" in unknown.stderr

    rolled = membership(database_url, "rollback", "env")
    assert rolled.returncode == 0, rolled.stderr
    assert membership(database_url, "count", "env", "odd").stdout.startswith("50 identities")
    assert "no stale claims" in membership(database_url, "reconcile").stdout
    assert "collected 0 retired" in membership(database_url, "gc").stdout


def test_an_unmigrated_store_says_what_to_run(database_url):
    result = membership(database_url, "status")
    assert result.returncode == 1
    assert "Run `membership migrate` first" in result.stderr
    migrate(database_url)
    assert "no environment has been backfilled yet" in membership(database_url, "status").stdout


def test_enqueue_prints_the_next_decision_and_queue_lists_requests(database_url, tmp_path):
    from membership_pipeline.demo.dataset import write_demo_dataset

    source = f"sqlite:///{tmp_path / 'flagsmith.sqlite'}"
    env_key = write_demo_dataset(source, identities=300, segments_per_project=5).environments[0][
        "api_key"
    ]
    migrate(database_url)

    def enqueue(*args: str) -> subprocess.CompletedProcess[str]:
        return membership(database_url, "--source-url", source, "--json", "enqueue", env_key, *args)

    first = enqueue()
    assert first.returncode == 0, first.stderr
    decision = json.loads(first.stdout)
    assert (decision["decision"], decision["organisation"]) == ("published", "1")
    queued = json.loads(membership(database_url, "--json", "queue").stdout)
    assert [q["job_id"] for q in queued] == [decision["job_id"]]  # a preview: still queued

    with MembershipStore(database_url) as store:
        backfill(store, env_key, {"s": BitMap([1])})
    cooling = enqueue("--reason", "change")
    assert cooling.returncode == 1
    assert json.loads(cooling.stdout)["decision"] == "deferred-cooldown"
    forced = enqueue("--force")
    assert forced.returncode == 0 and json.loads(forced.stdout)["decision"] == "published"
    assert len(json.loads(membership(database_url, "--json", "queue").stdout)) == 3
    # Each queued request with its mode, reason and age, in `status` and `queue`.
    status = membership(database_url, "status").stdout
    assert re.search(
        rf"\nqueued backfill requests \(3\): {env_key} full \(manual, queued \d+ s ago\); "
        rf"{env_key} full \(change, queued \d+ s ago\); ",
        status,
    ), status
    lines = membership(database_url, "queue").stdout.splitlines()
    assert len(lines) == 3 and all(re.search(r" full +\w+ .*\(\d+ s ago\)$", x) for x in lines)

    unknown = membership(database_url, "--source-url", source, "enqueue", "env_nope")
    assert unknown.returncode == 1
    assert "'env_nope' is not a live environment" in unknown.stderr


def test_enqueue_segments_requests_an_incremental_backfill(database_url, tmp_path):
    migrate(database_url)
    with MembershipStore(database_url) as store:
        backfill(store, "env", {key: BitMap([1]) for key in ("1", "2", "3", "4")})

    def enqueue(*args: str) -> subprocess.CompletedProcess[str]:
        return membership(
            database_url, "--json", "enqueue", "env", "--organisation", "o", "--force", *args
        )

    edited = enqueue("--segments", "3")
    assert edited.returncode == 0, edited.stderr
    decision = json.loads(edited.stdout)
    assert (decision["mode"], decision["mode_detail"]) == (
        "incremental",
        "incremental: 1 segments changed of 4",
    )
    # Queued with it, three more segments: most of the environment, so a full backfill.
    most = json.loads(enqueue("--segments", "1,2,4").stdout)
    assert most["mode"] == "full" and "4 of 4 segments changed" in most["mode_detail"]
    empty = membership(database_url, "enqueue", "env", "--organisation", "o", "--segments", ",")
    assert empty.returncode == 1
    assert (
        empty.stderr.strip()
        .splitlines()[-1]
        .endswith("--segments needs at least one segment key, e.g. --segments 12,40")
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (
            "postgresql+psycopg2://postgres:s3cret@127.0.0.1:5432/no_such_db",
            'database "no_such_db"',
        ),
        ("postgresql+psycopg2://postgres:s3cret@127.0.0.1:1/store", "port 1 failed"),
    ],
)
def test_an_unreachable_database_is_one_clean_line(url, reason, tmp_path):
    """A missing database or a closed port: one line naming the URL (password masked) and the
    driver's reason, exit 1, for the store's commands and for the source lookup."""
    masked = url.replace("s3cret", "***")
    for command in (["status"], ["migrate"], ["segments", "env"]):
        done = membership(url, *command)
        assert done.returncode == 1
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"membership {command[0]}: cannot reach the membership store at ")
        assert masked in line and reason in line and "s3cret" not in line
    store = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(store)
    source = url.replace("/store", "/flagsmith")
    done = membership(store, "--source-url", source, "enqueue", "env")
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("membership enqueue: cannot reach the Flagsmith database at ")
    assert "s3cret" not in line


LSN = "[0-9A-F]+/[0-9A-F]+"  # a WAL position as PostgreSQL prints it


def test_capture_commands_set_up_show_and_drop_the_slot(postgres_url, tmp_path):
    """``membership capture enable|status|disable`` on a PostgreSQL source, and the capture
    line of ``membership status``; bad input is one line."""
    from membership_pipeline.demo.dataset import write_demo_dataset

    write_demo_dataset(postgres_url, identities=50, organisations=1, projects_per_organisation=1,
                       environments_per_project=1, segments_per_project=3)  # fmt: skip
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    assert membership(store_url, "migrate").returncode == 0
    slot = f"mp_capture_{uuid.uuid4().hex[:10]}"
    names = ("--slot", slot, "--publication", slot)
    source = ("--source-url", postgres_url)
    try:
        enabled = membership(store_url, *source, "capture", "enable", *names)
        assert enabled.returncode == 0, enabled.stderr
        assert re.search(
            f"capture enabled: publication {slot}, slot {slot} at {LSN}", enabled.stdout
        )
        shown = membership(store_url, *source, "capture", "status", *names)
        assert re.search(f"slot {slot}: reserved, confirmed at {LSN}", shown.stdout)
        assert "bytes of WAL retained" in shown.stdout
        status = membership(store_url, "status")
        assert f"change capture: enabled (slot {slot}, at -, 0 identity changes" in status.stdout
        assert "no capture tick has read it yet" in status.stdout
    finally:
        dropped = membership(store_url, *source, "capture", "disable", *names)
    assert (
        dropped.returncode == 0 and f"slot {slot} and publication {slot} dropped" in dropped.stdout
    )
    gone = membership(store_url, *source, "capture", "status", *names)
    assert f"slot {slot} does not exist" in gone.stdout
    sqlite = membership(store_url, "--source-url", store_url, "capture", "enable", *names)
    assert sqlite.returncode == 1 and sqlite.stderr.strip() == (
        "membership capture: change capture cannot be enabled: the source is sqlite, not PostgreSQL"
    )


def test_trait_index_command_shows_and_creates_the_covering_index(postgres_url, tmp_path):
    """``membership trait-index status|create`` on a PostgreSQL source: missing, created (the
    source then reads by it), an interrupted build's invalid index named; one line elsewhere."""
    import sqlalchemy as sa

    from membership_pipeline.demo.dataset import write_demo_dataset
    from membership_pipeline.sources.trait_index import COVERING_INDEX, has_covering_index

    write_demo_dataset(postgres_url, identities=50, organisations=1, projects_per_organisation=1,
                       environments_per_project=1, segments_per_project=3)  # fmt: skip
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    source = ("--source-url", postgres_url)
    missing = membership(store_url, *source, "trait-index", "status")
    assert missing.returncode == 0 and "has no covering index" in missing.stdout
    assert "membership trait-index create" in missing.stdout
    created = membership(store_url, *source, "--json", "trait-index", "create")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["covering"] is True
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert has_covering_index(conn)
        conn.execute(  # what an interrupted CREATE INDEX CONCURRENTLY leaves
            sa.text(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                    f"to_regclass('{COVERING_INDEX}')")
        )  # fmt: skip
        conn.commit()
        assert not has_covering_index(conn)
    engine.dispose()
    invalid = membership(store_url, *source, "trait-index", "status")
    assert f"{COVERING_INDEX} is invalid" in invalid.stdout
    assert f"DROP INDEX CONCURRENTLY {COVERING_INDEX}" in invalid.stdout
    nowhere = membership(store_url, "--source-url", "", "trait-index", "status")
    assert nowhere.returncode == 1 and nowhere.stderr.strip() == (
        "membership trait-index: trait-index needs --source-url (or $MEMBERSHIP_SOURCE_URL): "
        "Flagsmith's PostgreSQL"
    )
    sqlite = membership(store_url, "--source-url", store_url, "trait-index", "create")
    assert sqlite.returncode == 1 and sqlite.stderr.strip() == (
        "membership trait-index: trait-index create needs Flagsmith's PostgreSQL"
    )
