"""The HTTP read API (FastAPI): who is in a segment, for services in any language.

Answers from the published version are in-memory work (the reader caches directories and
chunks), so those endpoints are ``async``: no thread hop. What queries Flagsmith's database
(identifiers) runs on worker threads.

Every answer names the version and ``as_of`` it came from and says ``stale`` once ``as_of`` is
older than the configured age. A members listing stays on the version of its first page (the
cursor carries it); once that version is collected, the next page is a 410.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from membership_pipeline.serving.api_keys import ApiKey, KeyRing
from membership_pipeline.serving.cursor import Cursor, CursorInvalid
from membership_pipeline.serving.identifier_cache import IdentifierCache
from membership_pipeline.serving.metrics import ServiceMetrics
from membership_pipeline.serving.observability import ObserveRequests
from membership_pipeline.serving.places import EnvironmentPlaces, KnownEnvironment
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore
from membership_pipeline.storage.errors import (
    DatabaseUnreachable,
    NotYetPublished,
    SegmentUnavailable,
    UnknownEnvironment,
    UnknownIdentity,
    UnknownSegment,
    VersionCollected,
)
from membership_pipeline.storage.reader import (
    MAX_IDENTITY_ID,
    MembersPage,
    PublishedMembership,
    segment_order,
)
from membership_pipeline.storage.tables import environment

COLLECTED = "the listing's version has been collected: start again without cursor"
MAX_LIMIT = 1000
MAX_SAMPLE = 1000
SEARCH_SCAN_IDS = 50_000  # ids a searching page looks at before it returns what it found
SEARCH_BATCH = 5_000


class ApiError(Exception):
    """An answer other than 200, with a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServiceSettings:
    store_url: str
    source_url: str
    keys: KeyRing
    stale_after: timedelta = timedelta(hours=1)
    pointer_ttl: float = 1.0  # a new publication is served at most this late


class Authenticate:
    """Every ``/v1/`` request needs a known API key (``Authorization: Bearer``); the key's entry
    goes to ``request.state.api_key``. A plain ASGI middleware: no per-request dependency to
    solve for what every answer needs."""

    def __init__(self, app: Any, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, presented = header.partition(" ")
            key = self.keys.authenticate(presented.strip() if scheme.lower() == "bearer" else "")
            if key is None:
                refused = JSONResponse(
                    {"error": "missing or unknown API key: send Authorization: Bearer <key>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await refused(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            state["api_key"], state["key_name"] = key, key.name
        await self.app(scope, receive, send)


Env = Annotated[str, Path(max_length=255, description="the environment's api key")]
Segment = Annotated[str, Path(max_length=255, description="the segment's key (its id)")]
Identifier = Annotated[
    str | None, Query(min_length=1, max_length=2000, description="Flagsmith identifier")
]
IdentityId = Annotated[
    int | None, Query(ge=1, le=MAX_IDENTITY_ID, description="Flagsmith identity id")
]


def _identity_ref(identity_id: int | None, identifier: str | None) -> tuple[int | None, str]:
    if (identity_id is None) == (identifier is None):
        raise ApiError(400, "give exactly one of identity_id and identifier")
    return identity_id, identifier or ""


def create_app(settings: ServiceSettings) -> FastAPI:
    store = MembershipStore(settings.store_url)
    reader = store.reader(pointer_ttl=settings.pointer_ttl)
    try:
        source = FlagsmithSource(settings.source_url).require_reachable()
    except DatabaseUnreachable:
        store.close()
        raise
    places = EnvironmentPlaces(source.environments)
    identifiers = IdentifierCache()
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)

    def close() -> None:
        store.close()
        source.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        close()

    app = FastAPI(
        lifespan=lifespan,
        title="membership_pipeline read API",
        version="1",
        summary="Exact, versioned segment membership of Flagsmith environments.",
    )

    app.state.close = close

    app.add_middleware(Authenticate, keys=settings.keys)
    app.add_middleware(ObserveRequests, metrics=metrics)  # outermost: sees the 401s too

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        name = ".".join(str(part) for part in first["loc"][1:]) or "request"
        given = first.get("input")
        shown = "" if given is None or isinstance(given, dict) else f" (got {str(given)[:40]!r})"
        return JSONResponse({"error": f"{name}: {first['msg']}{shown}"}, status_code=400)

    def environment_for(key: ApiKey, environment_key: str) -> KnownEnvironment:
        known = places.get(environment_key)
        if not key.allows(known.place if known else None):
            # The same answer whether or not the environment exists.
            raise ApiError(403, f"this API key may not read environment {environment_key!r}")
        assert known is not None
        return known

    def reading(
        request: Request, environment_key: str
    ) -> tuple[KnownEnvironment, PublishedMembership]:
        """The environment, if the request's key may read it, and its published version."""
        return environment_for(request.state.api_key, environment_key), published(environment_key)

    def published(environment_key: str) -> PublishedMembership:
        try:
            return reader.published(environment_key)
        except (UnknownEnvironment, NotYetPublished):
            raise ApiError(
                404, f"environment {environment_key!r} has no published version yet"
            ) from None

    def answer(
        known: KnownEnvironment, version: PublishedMembership, fields: dict[str, Any]
    ) -> JSONResponse:
        """The answer, stamped with its version; a JSONResponse as is (no re-encoding)."""
        stale = datetime.now(UTC) - version.as_of > settings.stale_after
        metrics.served(known.place.environment_key, version.version_id)
        stamp = {
            "environment": known.place.environment_key,
            "environment_name": known.display_name,
            "version": version.version_id,
            "as_of": version.as_of.isoformat(),
            "stale": stale,
        }
        return JSONResponse({**stamp, **fields})

    def segment_answer(version: PublishedMembership, segment: str, ask: Callable[[], Any]) -> Any:
        try:
            return ask()
        except UnknownSegment:
            raise ApiError(
                404, f"segment {segment!r} is not in version {version.version_id}"
            ) from None
        except SegmentUnavailable as error:
            raise ApiError(409, f"segment {segment!r} could not be evaluated: {error}") from None
        except VersionCollected:  # collected between the cursor's check and the chunks' read
            raise ApiError(410, COLLECTED) from None

    async def identity_of(
        known: KnownEnvironment,
        version: PublishedMembership,
        identity_id: int | None,
        identifier: str | None,
    ) -> int:
        identity_id, identifier = _identity_ref(identity_id, identifier)
        if identity_id is not None:
            return identity_id
        remembered = identifiers.remembered(known.flagsmith_id, identifier, version.has_identity)
        if remembered is not None:
            metrics.identifier_resolved("remembered")
            return remembered
        metrics.identifier_resolved("queried")
        # A query of Flagsmith's database: on a worker thread, the event loop keeps serving.
        found = await run_in_threadpool(source.identity_id, known.flagsmith_id, identifier)
        if found is None:
            raise ApiError(404, "no identity of this environment has that identifier")
        identifiers.remember(known.flagsmith_id, identifier, found)
        return found

    @app.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """200 when the membership store answers from its tables, 503 otherwise."""
        try:
            with store.database.probe.connect() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(environment))
        except sa.exc.SQLAlchemyError as error:
            reason = str(error).splitlines()[0]
            return JSONResponse({"status": "unhealthy", "error": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus metrics: requests, latency, versions served."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/environments/{environment}", tags=["membership"])
    async def summary(environment: Env, request: Request) -> JSONResponse:
        """The published version: identities, segments with counts, failed segments."""
        known, version = reading(request, environment)
        counts = version.segment_counts()
        return answer(
            known,
            version,
            {
                "identities": version.identity_count,
                "segments": [
                    {"key": key, "name": version.segment_name(key), "count": count}
                    for key, count in sorted(
                        counts.items(), key=lambda item: segment_order(item[0])
                    )
                ],
                "failed_segments": version.failed_segments,
            },
        )

    @app.get("/v1/environments/{environment}/segments/{segment}", tags=["membership"])
    async def count(environment: Env, segment: Segment, request: Request) -> JSONResponse:
        """A segment's member count."""
        known, version = reading(request, environment)
        members = segment_answer(version, segment, lambda: version.count(segment))
        return answer(
            known,
            version,
            {
                "segment": segment,
                "name": version.segment_name(segment),
                "count": members,
            },
        )

    @app.get("/v1/environments/{environment}/segments/{segment}/members", tags=["membership"])
    def members(
        environment: Env,
        segment: Segment,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 200,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        search: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    ) -> JSONResponse:
        """A page of members in id order (ids and identifiers). Pass ``next_cursor`` for the
        next page: every page reads the version of the first. ``search`` keeps identifiers that
        contain it (a page then looks at up to 50,000 members and may hold fewer than
        ``limit``: follow ``next_cursor`` until it is null)."""
        known = environment_for(request.state.api_key, environment)
        if cursor is None:
            version, after = published(environment), 0
        else:
            try:
                position = Cursor.decode(cursor)
                version = reader.at_version(environment, position.version_id)
            except CursorInvalid as error:
                raise ApiError(400, str(error)) from None
            except VersionCollected:
                raise ApiError(410, COLLECTED) from None
            after = position.after_id
        if search is None:
            page = segment_answer(
                version, segment, lambda: version.members(segment, after or None, limit)
            )
            ids, next_after = page.ids, page.next_after
            names = source.identifiers(known.flagsmith_id, ids)
        else:
            ids, names, next_after = _search(
                lambda start, n: segment_answer(
                    version, segment, lambda: version.members(segment, start or None, n)
                ),
                lambda batch: source.identifiers(known.flagsmith_id, batch),
                after,
                limit,
                search,
            )
        next_cursor = None if next_after is None else Cursor(version.version_id, next_after)
        return answer(
            known,
            version,
            {
                "segment": segment,
                "members": [{"id": i, "identifier": names.get(i)} for i in ids],
                "next_cursor": next_cursor.encode() if next_cursor else None,
            },
        )

    @app.get("/v1/environments/{environment}/segments/{segment}/sample", tags=["membership"])
    def sample(
        environment: Env,
        segment: Segment,
        request: Request,
        n: Annotated[int, Query(ge=1, le=MAX_SAMPLE)] = 10,
        seed: Annotated[int, Query(ge=0, le=2**31)] = 0,
    ) -> JSONResponse:
        """Up to ``n`` members at random (the same for the same version and seed)."""
        known, version = reading(request, environment)
        ids = segment_answer(version, segment, lambda: version.sample(segment, n, seed))
        names = source.identifiers(known.flagsmith_id, ids)
        return answer(
            known,
            version,
            {
                "segment": segment,
                "members": [{"id": i, "identifier": names.get(i)} for i in ids],
            },
        )

    @app.get("/v1/environments/{environment}/segments/{segment}/is-member", tags=["membership"])
    async def is_member(
        environment: Env,
        segment: Segment,
        request: Request,
        identity_id: IdentityId = None,
        identifier: Identifier = None,
    ) -> JSONResponse:
        """Whether an identity (by id, or by Flagsmith identifier) is in the segment."""
        known, version = reading(request, environment)
        wanted = await identity_of(known, version, identity_id, identifier)
        member = segment_answer(version, segment, lambda: version.is_member(segment, wanted))
        return answer(
            known,
            version,
            {
                "segment": segment,
                "identity_id": wanted,
                "member": member,
            },
        )

    @app.get("/v1/environments/{environment}/segments-of", tags=["membership"])
    async def segments_of(
        environment: Env,
        request: Request,
        identity_id: IdentityId = None,
        identifier: Identifier = None,
    ) -> JSONResponse:
        """The segments an identity (by id, or by identifier) is in."""
        known, version = reading(request, environment)
        wanted = await identity_of(known, version, identity_id, identifier)
        try:
            found = version.segments_of(wanted)
        except UnknownIdentity:
            raise ApiError(
                404, f"identity {wanted} is not in version {version.version_id}"
            ) from None
        return answer(
            known,
            version,
            {
                "identity_id": wanted,
                "segments": sorted(found.segments, key=segment_order),
                "unavailable": found.unavailable,
            },
        )

    return app


def _search(
    page_of: Callable[[int, int], MembersPage],
    identifiers: Callable[[list[int]], dict[int, str]],
    after: int,
    limit: int,
    search: str,
) -> tuple[list[int], dict[int, str], int | None]:
    """Members after ``after`` whose identifiers contain ``search``: up to ``limit`` of them,
    looking at no more than SEARCH_SCAN_IDS members; and where the next page starts."""
    matched: list[int] = []
    names: dict[int, str] = {}
    position = after
    for _ in range(SEARCH_SCAN_IDS // SEARCH_BATCH):
        page = page_of(position, SEARCH_BATCH)
        batch = identifiers(page.ids)
        for identity_id in page.ids:
            position = identity_id
            if search in batch.get(identity_id, ""):
                matched.append(identity_id)
                names[identity_id] = batch[identity_id]
                if len(matched) == limit:
                    last = identity_id == page.ids[-1] and page.next_after is None
                    return matched, names, None if last else identity_id
        if page.next_after is None:
            return matched, names, None
    return matched, names, position
