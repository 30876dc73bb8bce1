"""Versions over HTTP: a members listing stays on the version of its first page across a publish
(a 410 once that version is collected), and answers read during 50 publishes never mix two
versions."""

from __future__ import annotations

import threading
from datetime import timedelta

from pyroaring import BitMap

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
