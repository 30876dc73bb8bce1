"""Versions over HTTP: a members listing stays on the version of its first page across a publish
(a 410 once that version is collected), and answers read during 50 publishes never mix two
versions."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline_tests.backfill.conftest import plain_backfill
from membership_pipeline_tests.serving.conftest import running_service
from membership_pipeline_tests.storage.conftest import backfill


def list_all(service, env: str, segment: str, limit: int, cursor: str | None = None):
    pages = []
    while True:
        page = service.get(
            f"/v1/environments/{env}/segments/{segment}/members", limit=limit,
            **({"cursor": cursor} if cursor else {}),
        )  # fmt: skip
        if page.status_code != 200:
            return pages, page
        pages.append(page.json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages, None


def test_a_listing_stays_on_its_first_version_across_a_publish(service, store, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    before = backfill(store, env, {"s": BitMap(range(1, 300, 2))}, universe=BitMap(range(1, 300)))
    first = service.get(f"/v1/environments/{env}/segments/s/members", limit=40).json()
    assert first["version"] == before.version_id

    after = backfill(store, env, {"s": BitMap(range(3, 300, 3))}, universe=BitMap(range(1, 300)))
    assert after.version_id != before.version_id
    pages, refused = list_all(service, env, "s", 40, first["next_cursor"])
    assert refused is None
    assert {p["version"] for p in pages} == {before.version_id}  # not the new one
    ids = [m["id"] for p in [first, *pages] for m in p["members"]]
    assert ids == list(range(1, 300, 2))

    fresh, _ = list_all(service, env, "s", 1000)
    assert [m["id"] for m in fresh[0]["members"]] == list(range(3, 300, 3))
    assert fresh[0]["version"] == after.version_id

    # The listing's version collected: its next page says to start again.
    third = backfill(store, env, {"s": BitMap([7])}, universe=BitMap(range(1, 300)))
    assert third.version_id not in (before.version_id, after.version_id)
    report = store.collect_garbage(keep_retired=0, retired_grace=timedelta(0))
    assert before.version_id in report.retired_versions
    gone = service.get(f"/v1/environments/{env}/segments/s/members", cursor=first["next_cursor"])
    assert gone.status_code == 410
    assert gone.json()["error"] == (
        "the listing's version has been collected: start again without cursor"
    )


def test_reads_during_50_publishes_never_mix_versions(service, store, flagsmith):
    """Version v holds identities 1..k and segment s = 1..k-1 (k different for each version):
    every answer must match the k of the version it names."""
    env = flagsmith.environments[0]["api_key"]
    sizes: dict[int, int] = {}
    published = threading.Event()

    def publish() -> None:
        for k in range(60, 60 + 50 * 7, 7):
            version = backfill(
                store, env, {"s": BitMap(range(1, k))}, universe=BitMap(range(1, k + 1))
            )
            sizes[version.version_id] = k
            published.set()
        published.set()

    publish_one = backfill(store, env, {"s": BitMap(range(1, 59))}, universe=BitMap(range(1, 60)))
    sizes[publish_one.version_id] = 59
    publisher = threading.Thread(target=publish)
    publisher.start()
    answers = []
    while publisher.is_alive() or not answers:
        summary = service.get(f"/v1/environments/{env}").json()
        answers.append(("summary", summary["version"], summary["identities"], summary["segments"]))
        pages, refused = list_all(service, env, "s", 100)
        assert refused is None
        answers.append(("pages", pages[0]["version"], pages, None))
        member = service.get(f"/v1/environments/{env}/segments/s/is-member", identity_id=59).json()
        answers.append(("is-member", member["version"], member["member"], None))
    publisher.join()
    assert len(sizes) == 51
    versions_seen = set()
    for kind, version, first, second in answers:
        k = sizes[version]
        versions_seen.add(version)
        if kind == "summary":
            assert first == k and second == [{"key": "s", "name": "S", "count": k - 1}]
        elif kind == "pages":
            assert {p["version"] for p in first} == {version}
            assert [m["id"] for p in first for m in p["members"]] == list(range(1, k))
        else:
            assert first is (k > 59)
    assert len(versions_seen) > 5, versions_seen  # the reads did overlap the publishes


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_a_remembered_identifier_is_used_while_the_version_holds_its_id(
    store, store_url, flagsmith, tmp_path
):
    """Flagsmith deletes an identity and creates it again (a new id, the same identifier): the
    published version still knows the identifier by the old id; the next version by the new."""
    copy = tmp_path / "source_copy.sqlite"
    with (
        sqlite3.connect(flagsmith.url.removeprefix("sqlite:///")) as original,
        sqlite3.connect(copy) as copied,
    ):
        original.backup(copied)  # (a WAL database is not one file: no plain copy)
    source = dataclasses.replace(flagsmith, url=f"sqlite:///{copy}")
    env = flagsmith.environments[0]
    engine = sa.create_engine(source.url)
    with engine.connect() as conn:
        old_id, identifier = conn.execute(
            sa.text(
                "SELECT id, identifier FROM environments_identity WHERE environment_id = :e"
                " ORDER BY id LIMIT 1"
            ),
            {"e": env["id"]},
        ).one()
    segments_of = f"/v1/environments/{env['api_key']}/segments-of"
    with running_service(store_url, source, tmp_path) as service:
        assert service.get(segments_of, identifier=identifier).json()["identity_id"] == old_id
        with engine.begin() as conn:
            conn.execute(
                sa.text("DELETE FROM environments_trait WHERE identity_id = :i"), {"i": old_id}
            )
            conn.execute(sa.text("DELETE FROM environments_identity WHERE id = :i"), {"i": old_id})
            new_id = conn.execute(sa.text("SELECT max(id) + 1 FROM environments_identity")).scalar()
            conn.execute(
                sa.text(
                    "INSERT INTO environments_identity (id, identifier, environment_id)"
                    " VALUES (:i, :identifier, :e)"
                ),
                {"i": new_id, "identifier": identifier, "e": env["id"]},
            )
        again = service.get(segments_of, identifier=identifier).json()
        assert (again["identity_id"], again["version"]) == (
            old_id,
            store.metadata(env["api_key"]).published_version_id,
        )

        plain_backfill(FlagsmithSource(source.url), store, env["api_key"])
        after = service.get(segments_of, identifier=identifier).json()
        assert after["identity_id"] == new_id  # the new version does not hold the old id
        metrics = service.get("/metrics", key=None).text
        assert 'membership_identifier_lookups_total{how="remembered"} 1.0' in metrics
        assert 'membership_identifier_lookups_total{how="queried"} 2.0' in metrics
    engine.dispose()
