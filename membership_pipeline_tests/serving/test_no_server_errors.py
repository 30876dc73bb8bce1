"""No request a client can send gets a 5xx: Hypothesis draws requests over every route (path
parameters, query parameters, cursors, header sizes) against ``membership serve`` on a
PostgreSQL source and store (the driver refuses what SQLite accepts, e.g. a NUL), and every
answer is a success or a one-line JSON 4xx; the server keeps answering."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membership_pipeline.database.schema import migrate
from membership_pipeline.demo.dataset import write_demo_dataset
from membership_pipeline.serving.cursor import listing_of
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline_tests.backfill.conftest import plain_backfill
from membership_pipeline_tests.conftest import POSTGRES_URL
from membership_pipeline_tests.serving.conftest import Service, running_service

ROUTES = (
    "/v1/environments/{env}",
    "/v1/environments/{env}/segments/{segment}",
    "/v1/environments/{env}/segments/{segment}/members",
    "/v1/environments/{env}/segments/{segment}/sample",
    "/v1/environments/{env}/segments/{segment}/is-member",
    "/v1/environments/{env}/segments-of",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/v1/unrouted/{env}",
)
PARAMETERS = ("identity_id", "identifier", "limit", "cursor", "search", "n", "seed")


@pytest.fixture(scope="module")
def served(postgres_server: sa.Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A PostgreSQL Flagsmith source and store (schemas of the module's own), every
    environment backfilled, served."""
    schemas = [f"mp_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    with postgres_server.begin() as conn:
        for schema in schemas:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    source_url, store_url = (
        sa.engine.make_url(POSTGRES_URL)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
        for schema in schemas
    )
    try:
        flagsmith = write_demo_dataset(source_url, identities=300, segments_per_project=6)
        migrate(store_url)
        source = FlagsmithSource(source_url)
        with MembershipStore(store_url) as store:
            for environment in flagsmith.environments:
                plain_backfill(source, store, environment["api_key"])
            env = flagsmith.environments[0]["api_key"]
            published = store.reader().published(env)
            known = _Known(
                env, published.version_id, published.segment_keys, sorted(published.universe())
            )
        source.close()
        with running_service(store_url, flagsmith, tmp_path_factory.mktemp("fuzz")) as service:
            yield service, known
    finally:
        with postgres_server.begin() as conn:
            for schema in schemas:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))


@dataclass(frozen=True)
class _Known:
    """What the service holds: the first environment, its version, segments and identities."""

    env: str
    version: int
    segments: list[str]
    ids: list[int]


def _encoded(fields: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")


def _cursor_text(known: _Known, env: str, segment: str, search: str | None):
    """Cursors a client might forge: base64 of JSON arrays of numbers and strings; and this
    listing's real cursor (it is only base64 JSON) with its version and position edited."""
    number = st.integers(min_value=-(2**70), max_value=2**70)
    fields = st.one_of(number, st.text(max_size=20), st.none(), st.floats(allow_nan=False))
    forged = st.lists(fields, max_size=6).map(_encoded)
    version = _mostly(st.just(known.version), number)
    position = st.one_of(st.sampled_from([0, -1, 2**32 - 1, 2**32, 2**63 - 1, 2**63]), number)
    listing = listing_of(env, segment, search)
    edited = st.tuples(version, position).map(lambda v: _encoded([2, v[0], v[1], listing]))
    return st.one_of(forged, edited, edited, st.text(max_size=60))


def _values(known: _Known) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([str(i) for i in known.ids[:50]]),
        st.integers(min_value=-(2**80), max_value=2**80).map(str),
        st.sampled_from(["0", "1", "4294967295", "4294967296", "-1", "1e3", "", " "]),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=80),  # NULs included
        st.just("a\x00b"),
    )


def _segment_text(known: _Known) -> st.SearchStrategy[str]:
    return _mostly(
        st.sampled_from(known.segments),
        st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300),
    )


def _mostly(known: st.SearchStrategy[str], anything: st.SearchStrategy[str]):
    """Mostly a value the service knows (so a request gets past the checks before the
    interesting ones), sometimes anything."""
    return st.one_of(known, known, known, anything)


Request = tuple[str, dict[str, str], dict[str, str]]  # path, query, how (key, header pad)


@st.composite
def any_requests(draw: st.DrawFn, known: _Known, routes: tuple[str, ...] = ROUTES) -> Request:
    """A request on one of ``routes``: its environment, segment, parameters (any of them, on
    any route), key and header size drawn."""
    route = draw(st.sampled_from(routes))
    env = draw(_mostly(st.just(known.env), st.text(min_size=1, max_size=300)))
    segment = draw(_segment_text(known))
    path = route.format(env=quote(env, safe=""), segment=quote(segment, safe=""))
    names = draw(st.lists(st.sampled_from(PARAMETERS), max_size=3, unique=True))
    params = {name: draw(_values(known)) for name in names if name != "cursor"}
    if "cursor" in names:  # last: its listing is this request's
        params["cursor"] = draw(_cursor_text(known, env, segment, params.get("search")))
    key = draw(_mostly(st.just("all"), st.sampled_from(["environment", "unknown", ""])))
    pad = draw(st.sampled_from([0, 0, 0, 10, 4_000, 60_000]))
    return path, params, {"key": key, "pad": "x" * pad}


@st.composite
def listing_requests(draw: st.DrawFn, known: _Known) -> Request:
    """A members page of the known environment: limit, search and (mostly) a cursor."""
    segment = draw(_segment_text(known))
    params = {"cursor": ""}
    if draw(st.booleans()):
        params["limit"] = draw(_mostly(st.integers(1, 1000).map(str), _values(known)))
    if draw(st.booleans()):
        params["search"] = draw(_values(known))
    params["cursor"] = draw(_cursor_text(known, known.env, segment, params.get("search")))
    path = f"/v1/environments/{known.env}/segments/{quote(segment, safe='')}/members"
    return path, params, {"key": "all", "pad": ""}


@st.composite
def identity_requests(draw: st.DrawFn, known: _Known) -> Request:
    """is-member or segments-of of the known environment, by id and/or identifier."""
    segment = draw(_segment_text(known))
    path = draw(
        st.sampled_from(
            [
                f"/v1/environments/{known.env}/segments/{quote(segment, safe='')}/is-member",
                f"/v1/environments/{known.env}/segments-of",
            ]
        )
    )
    names = draw(st.sampled_from([["identity_id"], ["identifier"], [], PARAMETERS[:2]]))
    return path, {name: draw(_values(known)) for name in names}, {"key": "all", "pad": ""}


def _get(service: Service, request: Request) -> httpx.Response:
    path, params, how = request
    headers = {"X-Pad": how["pad"]} if how["pad"] else {}
    if how["key"]:
        headers["Authorization"] = f"Bearer {service.keys[how['key']]}"
    return service.client.get(f"{service.url}{path}", params=params, headers=headers)


EXAMPLES = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("drawn", [any_requests, listing_requests, identity_requests])
def test_no_request_gets_a_server_error(served, drawn) -> None:
    service, known = served

    @EXAMPLES
    @given(drawn(known))
    def answered(request: Request) -> None:
        try:
            answer = _get(service, request)
        except httpx.RemoteProtocolError:
            # The server closed the connection on an oversized header: not an answer, but the
            # server must still be up (checked below and after the run).
            assert len(request[2]["pad"]) >= 60_000, request
            return
        assert answer.status_code < 500, (request, answer.status_code, answer.text[:300])
        if answer.status_code >= 400 and request[0] not in ("/metrics", "/openapi.json"):
            message = answer.json()["error"]  # one line of JSON, naming the problem
            assert message and "\n" not in message, (request, message)

    answered()
    assert service.get("/healthz", key=None).status_code == 200
    log = Path(service.log).read_text()
    assert "Traceback" not in log, log[-3000:]


def test_the_cases_seen_as_server_errors_are_one_line_400s(served) -> None:
    """The issue's examples: an id of 2³² in a well-formed cursor; a NUL in an identifier."""
    service, known = served
    segment = known.segments[0]
    base = f"/v1/environments/{known.env}"
    for path, params, named in [
        (f"{base}/segments/{segment}/members", {"cursor": "WzEsMiw0Mjk0OTY3Mjk2XQ"}, "cursor"),
        (f"{base}/segments/{segment}/is-member", {"identifier": "a\x00b"}, "NUL"),
        (f"{base}/segments-of", {"identifier": "a\x00b"}, "NUL"),
    ]:
        answer = service.get(path, **params)
        assert answer.status_code == 400, (path, answer.text)
        assert named in answer.json()["error"]
