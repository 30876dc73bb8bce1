"""The read API over real HTTP (``membership serve`` in a subprocess), on SQLite and PostgreSQL
stores: every endpoint against the store's own answers, the auth matrix, bad input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from membership_pipeline.serving.cursor import Cursor

SUMMARY = "/v1/environments/{env}"


def identifiers_in_flagsmith(source_url: str, ids: list[int]) -> dict[int, str]:
    engine = sa.create_engine(source_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, identifier FROM environments_identity WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        ).all()
    engine.dispose()
    return dict(rows)


def assert_stamped(answer: dict, env: str, version: int) -> None:
    assert answer["environment"] == env
    assert answer["version"] == version
    assert answer["stale"] is False  # published moments ago; stale after an hour by default
    assert answer["as_of"]


def test_every_endpoint_answers_from_the_published_version(service, store, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    published = store.reader().published(env)
    version = published.version_id
    counts = published.segment_counts()
    segment = max(counts, key=counts.get)

    summary = service.get(SUMMARY.format(env=env)).json()
    assert_stamped(summary, env, version)
    assert summary["identities"] == published.identity_count
    assert {s["key"]: s["count"] for s in summary["segments"]} == counts
    assert summary["environment_name"].endswith(" / Production")

    count = service.get(f"/v1/environments/{env}/segments/{segment}").json()
    assert_stamped(count, env, version)
    assert (count["count"], count["name"]) == (counts[segment], published.segment_name(segment))

    listed: list[dict] = []
    cursor = None
    while True:
        page = service.get(
            f"/v1/environments/{env}/segments/{segment}/members", limit=97,
            **({"cursor": cursor} if cursor else {}),
        ).json()  # fmt: skip
        assert_stamped(page, env, version)
        assert len(page["members"]) <= 97
        listed += page["members"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [m["id"] for m in listed]
    assert ids == list(published.bitmap(segment))  # every member once, in id order
    assert {m["id"]: m["identifier"] for m in listed} == identifiers_in_flagsmith(
        flagsmith.url, ids
    )

    sample = service.get(f"/v1/environments/{env}/segments/{segment}/sample", n=5, seed=3).json()
    assert [m["id"] for m in sample["members"]] == published.sample(segment, 5, seed=3)

    member, outsider = ids[0], next(i for i in published.universe() if i not in set(ids))
    names = identifiers_in_flagsmith(flagsmith.url, [member, outsider])
    is_member = f"/v1/environments/{env}/segments/{segment}/is-member"
    for identity_id, expected in ((member, True), (outsider, False)):
        by_id = service.get(is_member, identity_id=identity_id).json()
        assert_stamped(by_id, env, version)
        assert (by_id["identity_id"], by_id["member"]) == (identity_id, expected)
        by_identifier = service.get(is_member, identifier=names[identity_id]).json()
        assert (by_identifier["identity_id"], by_identifier["member"]) == (identity_id, expected)

    segments_of = f"/v1/environments/{env}/segments-of"
    expected_segments = sorted(published.segments_of(member).segments, key=lambda k: int(k))
    assert service.get(segments_of, identity_id=member).json()["segments"] == expected_segments
    by_name = service.get(segments_of, identifier=names[member]).json()
    assert (by_name["identity_id"], by_name["segments"]) == (member, expected_segments)


def test_a_search_pages_through_identifiers_containing_the_text(service, store, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    published = store.reader().published(env)
    segment = max(published.segment_counts(), key=published.segment_counts().get)
    members = list(published.bitmap(segment))
    names = identifiers_in_flagsmith(flagsmith.url, members)
    wanted = [i for i in members if "7" in names[i]]
    found, cursor = [], None
    while True:
        page = service.get(
            f"/v1/environments/{env}/segments/{segment}/members", limit=10, search="7",
            **({"cursor": cursor} if cursor else {}),
        ).json()  # fmt: skip
        found += [m["id"] for m in page["members"]]
        assert all("7" in m["identifier"] for m in page["members"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert found == wanted and len(wanted) > 10


def test_a_cursor_is_refused_on_any_other_listing(service, store, flagsmith):
    """A cursor continues the listing that made it; on another segment, environment or search
    it is a 400 saying so (it used to list the other segment from the cursor's id)."""
    env, other_env = (e["api_key"] for e in flagsmith.environments[:2])
    counts = store.reader().published(env).segment_counts()
    segment, other = sorted(counts, key=counts.get)[-2:]
    members = f"/v1/environments/{env}/segments/{segment}/members"
    cursor = service.get(members, limit=1).json()["next_cursor"]
    assert cursor is not None
    assert service.get(members, limit=1, cursor=cursor).status_code == 200  # its own: fine
    other_segment = store.reader().published(other_env).segment_keys[0]
    for path, params in [
        (f"/v1/environments/{env}/segments/{other}/members", {}),
        (f"/v1/environments/{other_env}/segments/{other_segment}/members", {}),
        (members, {"search": "1"}),
    ]:
        answer = service.get(path, limit=1, cursor=cursor, **params)
        assert answer.status_code == 400, (path, params, answer.text)
        assert answer.json()["error"].startswith("cursor belongs to another listing")
    # A searching listing's cursor does not continue the plain one either.
    searching = service.get(members, limit=1, search="1").json()["next_cursor"]
    assert searching is not None
    assert service.get(members, limit=1, cursor=searching).status_code == 400
    assert service.get(members, limit=1, cursor=searching, search="1").status_code == 200


def test_the_auth_matrix(service, flagsmith):
    first, *others = [e["api_key"] for e in flagsmith.environments]
    summary = SUMMARY.format(env=first)
    missing = service.get(summary, key=None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert service.get(summary, key="unknown").status_code == 401
    for key in ("all", "organisation", "project", "environment"):
        assert service.get(summary, key=key).status_code == 200, key

    placed = service_placements(flagsmith)
    organisation, project = placed[first]
    for env in others:
        in_organisation = placed[env][0] == organisation
        in_project = placed[env][1] == project
        assert service.get(SUMMARY.format(env=env), key="all").status_code == 200
        assert service.get(SUMMARY.format(env=env), key="organisation").status_code == (
            200 if in_organisation else 403
        )
        assert service.get(SUMMARY.format(env=env), key="project").status_code == (
            200 if in_project else 403
        )
        refused = service.get(SUMMARY.format(env=env), key="environment")
        assert refused.status_code == 403
    # Out of scope or not there at all: the same answer, so a key learns nothing of others.
    outside = service.get(SUMMARY.format(env=others[-1]), key="environment").json()["error"]
    absent = service.get(SUMMARY.format(env="env_none"), key="environment").json()["error"]
    assert outside.replace(others[-1], "X") == absent.replace("env_none", "X")
    assert service.get(SUMMARY.format(env="env_none"), key="all").status_code == 403


def first_identity(flagsmith) -> int:
    engine = sa.create_engine(flagsmith.url)
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT min(i.id) FROM environments_identity i JOIN environments_environment e"
                " ON e.id = i.environment_id WHERE e.api_key = :key"
            ),
            {"key": flagsmith.environments[0]["api_key"]},
        ).scalar_one()
    engine.dispose()
    return found


def service_placements(flagsmith):
    from membership_pipeline_tests.serving.conftest import placements

    return placements(flagsmith.url)


def test_bad_input_is_one_line_naming_the_problem(service, store, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    segment = store.reader().published(env).segment_keys[0]
    base = f"/v1/environments/{env}/segments/{segment}"
    cases = [
        (f"{base}/is-member", {"identity_id": "abc"}, 400, "identity_id"),
        (f"{base}/is-member", {"identity_id": 0}, 400, "identity_id"),
        (f"{base}/is-member", {"identity_id": 2**32}, 400, "identity_id"),
        (f"{base}/is-member", {}, 400, "exactly one of identity_id and identifier"),
        (f"{base}/is-member", {"identity_id": 1, "identifier": "x"}, 400, "exactly one"),
        (f"{base}/members", {"limit": 0}, 400, "limit"),
        (f"{base}/members", {"limit": 1001}, 400, "limit"),
        (f"{base}/members", {"cursor": "not-a-cursor"}, 400, "cursor is malformed"),
        (f"{base}/members", {"cursor": Cursor(1, 5, "x").encode()[:-2] + "!!"}, 400, "cursor"),
        # a well-formed cursor past the largest identity id: was a 500
        (f"{base}/members", {"cursor": "WzEsMiw0Mjk0OTY3Mjk2XQ"}, 400, "cursor is malformed"),
        (f"{base}/members", {"cursor": Cursor(1, 2**32, "x").encode()}, 400, "malformed"),
        # PostgreSQL text cannot hold NUL: was a 500 from the driver
        (f"{base}/is-member", {"identifier": "a\x00b"}, 400, "must not contain the NUL"),
        (f"/v1/environments/{env}/segments-of", {"identifier": "a\x00b"}, 400, "NUL"),
        (f"{base}/is-member", {"identity_id": 4_000_000_000}, 404, "identity 4000000000 is not"),
        (f"{base}/sample", {"n": -1}, 400, "n"),
        (f"/v1/environments/{env}/segments/999999", {}, 404, "segment '999999' is not in"),
        (f"/v1/environments/{env}/segments-of", {"identity_id": 4_000_000_000}, 404, "identity"),
        (
            f"{base}/is-member",
            {"identifier": "x' OR '1'='1"},  # bound as a parameter: just an unknown identifier
            404,
            "no identity of this environment has that identifier",
        ),
    ]
    for path, params, status, named in cases:
        answer = service.get(path, **params)
        assert answer.status_code == status, (path, params, answer.text)
        message = answer.json()["error"]
        assert named in message and "\n" not in message, (path, params, message)
    assert store.reader().published(env).identity_count > 0  # nothing reached SQL but values


def test_operations_endpoints_and_access_events_without_secrets(service, flagsmith):
    env = flagsmith.environments[0]["api_key"]
    assert service.get("/healthz", key=None).json() == {"status": "ok"}
    [identifier] = identifiers_in_flagsmith(flagsmith.url, [first_identity(flagsmith)]).values()
    answer = service.get(f"/v1/environments/{env}/segments-of", identifier=identifier)
    assert answer.status_code == 200, answer.text
    metrics = service.get("/metrics", key=None).text
    assert 'membership_http_requests_total{method="GET",route="/v1/environments/{environment}' in (
        metrics
    )
    assert "membership_http_request_seconds_bucket" in metrics
    # Open without a key, so by default it names no tenant.
    assert "membership_answers_total 1.0" in metrics
    for environment in flagsmith.environments:
        assert environment["api_key"] not in metrics
    assert "membership_served_version" not in metrics
    document = service.get("/openapi.json", key=None).json()
    assert "/v1/environments/{environment}/segments/{segment}/members" in document["paths"]
    assert service.get("/docs", key=None).status_code == 200
    log = service.log.read_text()
    assert "segment_membership.serving.request" in log
    assert '"route": "/v1/environments/{environment}/segments-of", "status": 200' in log
    assert '"key": "all"' in log  # the key's name, never the key
    for secret in (*service.keys.values(), identifier):
        assert secret not in log


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_what_answers_without_a_key_is_chosen_at_start(store, store_url, flagsmith, tmp_path):
    from membership_pipeline_tests.serving.conftest import running_service

    env = flagsmith.environments[0]["api_key"]
    options = ("--metrics-per-environment", "--no-docs")
    with running_service(store_url, flagsmith, tmp_path, *options) as service:
        assert service.get(SUMMARY.format(env=env)).status_code == 200
        metrics = service.get("/metrics", key=None).text
        version = store.reader().published(env).version_id
        assert f'membership_served_version{{environment="{env}"}} {version:.1f}' in metrics
        assert f'membership_answers_total{{environment="{env}"}} 1.0' in metrics
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert service.get(path, key=None).status_code == 404, path
        assert service.get("/healthz", key=None).status_code == 200


def test_health_follows_the_store_and_answers_turn_stale(store, store_url, flagsmith, tmp_path):
    from membership_pipeline_tests.serving.conftest import running_service

    env = flagsmith.environments[0]["api_key"]
    with running_service(store_url, flagsmith, tmp_path, "--stale-after", "0") as service:
        assert service.get(SUMMARY.format(env=env)).json()["stale"] is True
        with store.database.writer.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE membership_environment RENAME TO moved_away")
        unhealthy = service.get("/healthz", key=None)
        assert unhealthy.status_code == 503 and unhealthy.json()["status"] == "unhealthy"
        with store.database.writer.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE moved_away RENAME TO membership_environment")
        assert service.get("/healthz", key=None).status_code == 200


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_workers_share_the_port_and_answer_alike(store, store_url, flagsmith, tmp_path):
    from membership_pipeline_tests.serving.conftest import running_service

    env = flagsmith.environments[0]["api_key"]
    version = store.reader().published(env).version_id
    with running_service(store_url, flagsmith, tmp_path, "--workers", "2") as service:
        url = f"{service.url}{SUMMARY.format(env=env)}"
        headers = {"Authorization": f"Bearer {service.keys['all']}", "Connection": "close"}
        with ThreadPoolExecutor(8) as pool:  # connections at once: both workers accept some
            answers = list(pool.map(lambda _: httpx.get(url, headers=headers), range(80)))
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["version"] for a in answers} == {version}
        workers = {
            line.split('"pid": ')[1].split(",")[0]
            for line in service.log.read_text().splitlines()
            if "segment_membership.serving.request" in line and '"pid": ' in line
        }
        assert len(workers) == 2, workers  # both processes answered
