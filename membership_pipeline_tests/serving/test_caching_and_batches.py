"""HTTP caching as a flag proxy expects it (ETag from the version and the request, Cache-Control
from the pointer TTL, If-None-Match → 304 without reading a bitmap, never a collected version's
answer) and the batch endpoints (one version for every item; each item the single request's
answer or its error; bounded), over ``membership serve`` and against the store's answers."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from membership_pipeline.database.schema import migrate
from membership_pipeline.demo.dataset import write_demo_dataset
from membership_pipeline.serving.api_keys import Scope, add_key, load_key_file
from membership_pipeline.serving.app import ServiceSettings, create_app
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.reader import ChunkCache
from membership_pipeline_tests.backfill.conftest import plain_backfill
from membership_pipeline_tests.backfill.segment_edits import add_segment
from membership_pipeline_tests.serving.conftest import placements, running_service
from membership_pipeline_tests.serving.test_read_api import identifiers_in_flagsmith
from membership_pipeline_tests.storage.conftest import backfill


def conditional(service, path: str, tag: str, **params: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {service.keys['all']}", "If-None-Match": tag}
    return service.client.get(f"{service.url}{path}", params=params, headers=headers)


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_answers_carry_a_version_tag_and_revalidate_to_304(service, store, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    published = store.reader().published(env)
    segment = max(published.segment_counts(), key=published.segment_counts().get)
    member = next(iter(published.bitmap(segment)))
    routes = [
        (f"/v1/environments/{env}", {}),
        (f"/v1/environments/{env}/segments/{segment}", {}),
        (f"/v1/environments/{env}/segments/{segment}/members", {"limit": 5}),
        (f"/v1/environments/{env}/segments/{segment}/sample", {"n": 3, "seed": 2}),
        (f"/v1/environments/{env}/segments/{segment}/is-member", {"identity_id": member}),
        (f"/v1/environments/{env}/segments-of", {"identity_id": member}),
    ]
    tags = {}
    for path, params in routes:
        first = service.get(path, **params)
        assert first.status_code == 200, first.text
        tag = first.headers["etag"]
        assert tag.startswith(f'"v{published.version_id}-')
        # The service is started with --pointer-ttl 0: a cache must revalidate every time.
        assert first.headers["cache-control"] == "private, no-cache"
        assert first.headers["vary"] == "Authorization"
        assert service.get(path, **params).headers["etag"] == tag  # the same answer, the same tag
        again = conditional(service, path, tag, **params)
        assert again.status_code == 304 and again.content == b"", (path, again.text)
        assert again.headers["etag"] == tag
        assert conditional(service, path, f'W/{tag}, "other"', **params).status_code == 304
        assert conditional(service, path, '"v1-0000"', **params).status_code == 200
        tags[path] = tag
    assert len(set(tags.values())) == len(routes)  # each request its own tag
    # A 304 needs a key like any answer.
    refused = service.client.get(
        f"{service.url}{routes[0][0]}", headers={"If-None-Match": tags[routes[0][0]]}
    )
    assert refused.status_code == 401

    # A new version: the old tags no longer match; the answer is the new version's.
    newer = backfill(store, env, {segment: BitMap([member])}, universe=published.universe())
    for path, params in routes:
        fresh = conditional(service, path, tags[path], **params)
        assert fresh.status_code == 200, path
        assert fresh.json()["version"] == newer.version_id
        assert fresh.headers["etag"].startswith(f'"v{newer.version_id}-')


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_listing_page_of_a_collected_version_is_never_confirmed(service, store, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    before = backfill(store, env, {"s": BitMap(range(1, 300, 2))}, universe=BitMap(range(1, 300)))
    members = f"/v1/environments/{env}/segments/s/members"
    first = service.get(members, limit=40).json()
    second = service.get(members, limit=40, cursor=first["next_cursor"])
    tag = second.headers["etag"]
    # Another version published: the listing's page is still its version's, still confirmed.
    backfill(store, env, {"s": BitMap([5])}, universe=BitMap(range(1, 300)))
    kept = conditional(service, members, tag, limit=40, cursor=first["next_cursor"])
    assert kept.status_code == 304
    backfill(store, env, {"s": BitMap([7])}, universe=BitMap(range(1, 300)))
    report = store.collect_garbage(keep_retired=0, retired_grace=timedelta(0))
    assert before.version_id in report.retired_versions
    gone = conditional(service, members, tag, limit=40, cursor=first["next_cursor"])
    assert gone.status_code == 410, gone.text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_304_reads_no_bitmap(store, store_url, flagsmith, tmp_path: Path, monkeypatch):
    """In process, with every chunk read made to fail: a revalidated answer needs none."""
    keys_file = tmp_path / "keys.json"
    organisations = {org for org, _ in placements(flagsmith.url).values()}
    key = add_key(keys_file, "all", [Scope("organisation", o) for o in organisations])
    settings = ServiceSettings(store_url, flagsmith.url, load_key_file(keys_file), pointer_ttl=0)
    env = flagsmith.environments[0]["api_key"]
    segment = store.reader().published(env).segment_keys[0]
    path = f"/v1/environments/{env}/segments/{segment}/is-member?identity_id=1"
    headers = {"Authorization": f"Bearer {key}"}
    app = create_app(settings)

    async def ask(path: str, headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers=headers)

    try:
        answered = asyncio.run(ask(path, headers))
        assert answered.status_code in (200, 404), answered.text
        if answered.status_code == 404:  # identity 1 is another environment's
            identity = next(iter(store.reader().published(env).universe()))
            path = path.replace("identity_id=1", f"identity_id={identity}")
            answered = asyncio.run(ask(path, headers))
        tag = answered.headers["etag"]

        def no_chunks(*_: object, **__: object) -> None:
            raise AssertionError("a bitmap chunk was read")

        monkeypatch.setattr(ChunkCache, "get", no_chunks)
        monkeypatch.setattr(ChunkCache, "_fetch", no_chunks)
        assert asyncio.run(ask(path, {**headers, "If-None-Match": tag})).status_code == 304
        with pytest.raises(AssertionError, match="a bitmap chunk was read"):
            asyncio.run(ask(path, headers))  # the check bites: an answer does read one
    finally:
        app.state.close()


def post(service, path: str, body: object, key: str = "all") -> httpx.Response:
    headers = {"Authorization": f"Bearer {service.keys[key]}"}
    return service.client.post(f"{service.url}{path}", json=body, headers=headers)


def test_batches_answer_from_one_version_like_the_single_requests(service, store, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    published = store.reader().published(env)
    ids = sorted(published.universe())
    names = identifiers_in_flagsmith(flagsmith.url, ids)
    asked = [*ids[:300], 4_000_000_000, ids[0]]  # an unknown id, and one asked twice
    batch = post(service, f"/v1/environments/{env}/segments-of/batch", {"identity_ids": asked})
    assert batch.status_code == 200, batch.text
    answer = batch.json()
    assert answer["version"] == published.version_id
    assert [item["identity_id"] for item in answer["identities"]] == asked
    for item in answer["identities"][:10] + answer["identities"][-1:]:
        single = service.get(
            f"/v1/environments/{env}/segments-of", identity_id=item["identity_id"]
        ).json()
        assert item["segments"] == single["segments"]
    for item in answer["identities"][:300]:
        assert item["segments"] == sorted(
            published.segments_of(item["identity_id"]).segments, key=int
        )
    assert answer["identities"][300] == {
        "identity_id": 4_000_000_000,
        "status": 404,
        "error": f"identity 4000000000 is not in version {published.version_id}",
    }

    by_name = post(
        service,
        f"/v1/environments/{env}/segments-of/batch",
        {"identifiers": [names[i] for i in ids[:50]] + ["nobody-has-this"]},
    ).json()
    assert [i["identity_id"] for i in by_name["identities"][:50]] == ids[:50]
    assert [i["segments"] for i in by_name["identities"][:50]] == [
        i["segments"] for i in answer["identities"][:50]
    ]
    assert by_name["identities"][50]["status"] == 404

    segments = published.segment_keys
    pairs = [{"segment": segments[n % len(segments)], "identity_id": i} for n, i in enumerate(ids)]
    pairs += [
        {"segment": segments[0], "identifier": names[ids[1]]},
        {"segment": "999999", "identity_id": ids[0]},
        {"segment": segments[0], "identity_id": 4_000_000_000},
    ]
    members = post(service, f"/v1/environments/{env}/is-member/batch", {"pairs": pairs[-1000:]})
    assert members.status_code == 200, members.text
    answers = members.json()["answers"]
    assert len(answers) == len(pairs[-1000:])
    for pair, item in zip(pairs[-1000:-3], answers, strict=False):
        assert item["member"] == published.is_member(pair["segment"], item["identity_id"])
    by_identifier, unknown_segment, unknown_identity = answers[-3:]
    assert by_identifier["identity_id"] == ids[1]
    assert by_identifier["member"] == published.is_member(segments[0], ids[1])
    assert (unknown_segment["status"], unknown_identity["status"]) == (404, 404)
    assert "segment '999999' is not in version" in unknown_segment["error"]


def test_a_batch_is_bounded_and_checked(service, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    segments_of = f"/v1/environments/{env}/segments-of/batch"
    is_member = f"/v1/environments/{env}/is-member/batch"
    cases = [
        (segments_of, {"identity_ids": list(range(1, 1002))}, 400, "at most 1000 items"),
        (segments_of, {"identity_ids": []}, 400, "identity_ids"),
        (segments_of, {}, 400, "exactly one of identity_ids and identifiers"),
        (segments_of, {"identity_ids": [1], "identifiers": ["a"]}, 400, "exactly one"),
        (segments_of, {"identity_ids": [0]}, 400, "identity_ids.0"),
        (segments_of, {"identifiers": ["a\x00b"]}, 400, "NUL"),
        (segments_of, {"identity_ids": [1], "other": 1}, 400, "other"),
        (segments_of, [1, 2], 400, "body"),
        (is_member, {"pairs": [{"segment": "1"}]}, 400, "exactly one of identity_id and"),
        (is_member, {"pairs": [{"segment": "1", "identity_id": 1}] * 1001}, 400, "at most 1000"),
        (segments_of, {"identifiers": ["x" * 2000] * 1100}, 413, "larger than"),
    ]
    for path, body, status, named in cases:
        answer = post(service, path, body)
        assert answer.status_code == status, (body if len(str(body)) < 200 else path, answer.text)
        message = answer.json()["error"]
        assert named in message and "\n" not in message, message
    # Streamed (no Content-Length), too large: the same 413.
    streamed = service.client.post(
        f"{service.url}{segments_of}",
        content=iter([b'{"identifiers": ["', b"x" * 3_000_000, b'"]}']),
        headers={"Authorization": f"Bearer {service.keys['all']}"},
    )
    assert streamed.status_code == 413
    # Out of scope: the key's refusal, before the body.
    other = flagsmith.environments[-1]["api_key"]
    refused = post(service, f"/v1/environments/{other}/segments-of/batch", {"identity_ids": [1]},
                   key="environment")  # fmt: skip
    assert refused.status_code == 403


def test_an_unevaluable_segment_is_a_409_in_a_batch_as_alone(tmp_path: Path):
    """A segment whose rules cannot be evaluated (an operator Flagsmith does not have) is kept
    as a failure by the version: asked about it, the single request is a 409, and a batch's
    item carries the same status and error while the batch's other items are answered."""
    url = f"sqlite:///{tmp_path / 'flagsmith.sqlite'}"
    dataset = write_demo_dataset(
        url, identities=60, segments_per_project=3, organisations=1,
        projects_per_organisation=1, environments_per_project=1,
    )  # fmt: skip
    environment = dataset.environments[0]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        broken = str(add_segment(conn, environment["project_id"], "plan", "NO_SUCH_OP", "x"))
    engine.dispose()
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(store_url)
    env = environment["api_key"]
    with MembershipStore(store_url) as store, FlagsmithSource(url) as source:
        plain_backfill(source, store, env)
        published = store.reader().published(env)
        assert broken in published.failed_segments
        ids = sorted(published.universe())[:3]
        working = next(k for k in published.segment_keys if k not in published.failed_segments)
    with running_service(store_url, dataset, tmp_path) as service:
        alone = service.get(
            f"/v1/environments/{env}/segments/{broken}/is-member", identity_id=ids[0]
        )
        assert alone.status_code == 409, alone.text
        error = alone.json()["error"]
        assert f"segment {broken!r} could not be evaluated" in error and "\n" not in error
        pairs = [{"segment": broken, "identity_id": i} for i in ids]
        pairs.append({"segment": working, "identity_id": ids[0]})
        batch = post(service, f"/v1/environments/{env}/is-member/batch", {"pairs": pairs})
        assert batch.status_code == 200, batch.text
        *refused, answered = batch.json()["answers"]
        assert [(item["status"], item["error"]) for item in refused] == [(409, error)] * 3
        assert answered["member"] == published.is_member(working, ids[0])
