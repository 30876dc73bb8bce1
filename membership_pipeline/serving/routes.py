"""The read API's routes: each parses its path, query or body (FastAPI validates them: a bad
value is a one-line 400) and asks the service; a GET's answer carries its ``ETag`` and
``Cache-Control``, and a matching ``If-None-Match`` is a 304 found from the version alone
(``caching.py``). Nothing else happens here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from membership_pipeline.serving.caching import cache_control, entity_tag, matches
from membership_pipeline.serving.service import MembershipService
from membership_pipeline.storage.reader import MAX_IDENTITY_ID

MAX_LIMIT = 1000
MAX_SAMPLE = 1000
MAX_BATCH = 1000  # identities (or pairs) per batch request

Env = Annotated[str, Path(max_length=255, description="the environment's api key")]
Segment = Annotated[str, Path(max_length=255, description="the segment's key (its id)")]
Identifier = Annotated[
    str | None, Query(min_length=1, max_length=2000, description="Flagsmith identifier")
]
IdentityId = Annotated[
    int | None, Query(ge=1, le=MAX_IDENTITY_ID, description="Flagsmith identity id")
]


BatchIdentityId = Annotated[int, Field(ge=1, le=MAX_IDENTITY_ID)]
BatchIdentifier = Annotated[str, Field(min_length=1, max_length=2000)]


class SegmentsOfBatch(BaseModel):
    """Exactly one of the two lists, of up to 1,000 identities."""

    model_config = ConfigDict(extra="forbid")
    identity_ids: list[BatchIdentityId] | None = Field(None, min_length=1, max_length=MAX_BATCH)
    identifiers: list[BatchIdentifier] | None = Field(None, min_length=1, max_length=MAX_BATCH)


class MembershipPair(BaseModel):
    """A segment and one identity, by exactly one of ``identity_id`` and ``identifier``."""

    model_config = ConfigDict(extra="forbid")
    segment: str = Field(min_length=1, max_length=255)
    identity_id: BatchIdentityId | None = None
    identifier: BatchIdentifier | None = None


class IsMemberBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[MembershipPair] = Field(min_length=1, max_length=MAX_BATCH)


def add_routes(app: FastAPI, service: MembershipService) -> None:
    """The routes, on the app itself (an included router would add a second round of route
    matching to every request: about 5 % of an is-member answer, measured)."""
    control = cache_control(service.settings.pointer_ttl)

    def headers(tag: str) -> dict[str, str]:
        return {"ETag": tag, "Cache-Control": control, "Vary": "Authorization"}

    def request_of(request: Request) -> tuple[str, str]:
        return request.scope["path"], request.scope["query_string"].decode("latin-1")

    def unchanged(
        request: Request,
        environment: str,
        listing: tuple[str, str | None, str | None] | None = None,
    ) -> Response | None:
        """A 304 when ``If-None-Match`` names the answer the current version would give."""
        # The raw headers, not ``request.headers``: most requests carry none, and every request
        # pays for this look.
        given = next((v for k, v in request.scope["headers"] if k == b"if-none-match"), None)
        if given is None:
            return None
        known, version, stale = service.current(request.state.api_key, environment, listing)
        tag = entity_tag(version.version_id, stale, known.display_name, *request_of(request))
        if not matches(given.decode("latin-1"), tag):
            return None
        return Response(status_code=304, headers=headers(tag))

    def cached(request: Request, answer: dict[str, Any]) -> JSONResponse:
        tag = entity_tag(
            answer["version"], answer["stale"], answer["environment_name"], *request_of(request)
        )
        return JSONResponse(answer, headers=headers(tag))

    @app.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """200 when the membership store answers from its tables, 503 otherwise."""
        reason = service.unhealthy()
        if reason is not None:
            return JSONResponse({"status": "unhealthy", "error": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus metrics: requests, latency, versions served."""
        return Response(service.metrics_page(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/environments/{environment}", tags=["membership"])
    async def summary(environment: Env, request: Request) -> Response:
        """The published version: identities, segments with counts, failed segments."""
        if (same := unchanged(request, environment)) is not None:
            return same
        return cached(request, service.summary(request.state.api_key, environment))

    @app.get("/v1/environments/{environment}/segments/{segment}", tags=["membership"])
    async def count(environment: Env, segment: Segment, request: Request) -> Response:
        """A segment's member count."""
        if (same := unchanged(request, environment)) is not None:
            return same
        return cached(request, service.count(request.state.api_key, environment, segment))

    @app.get("/v1/environments/{environment}/segments/{segment}/members", tags=["membership"])
    def members(
        environment: Env,
        segment: Segment,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 200,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        search: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    ) -> Response:
        """A page of members in id order (ids and identifiers). Pass ``next_cursor`` for the
        next page: every page reads the version of the first, and a cursor continues only its
        own listing (environment, segment, search). ``search`` keeps identifiers that contain
        it (a page then looks at up to 50,000 members and may hold fewer than ``limit``:
        follow ``next_cursor`` until it is null)."""
        if (same := unchanged(request, environment, (segment, cursor, search))) is not None:
            return same
        return cached(
            request,
            service.members(request.state.api_key, environment, segment, limit, cursor, search),
        )

    @app.get("/v1/environments/{environment}/segments/{segment}/sample", tags=["membership"])
    def sample(
        environment: Env,
        segment: Segment,
        request: Request,
        n: Annotated[int, Query(ge=1, le=MAX_SAMPLE)] = 10,
        seed: Annotated[int, Query(ge=0, le=2**31)] = 0,
    ) -> Response:
        """Up to ``n`` members at random (the same for the same version and seed)."""
        if (same := unchanged(request, environment)) is not None:
            return same
        return cached(request, service.sample(request.state.api_key, environment, segment, n, seed))

    @app.get("/v1/environments/{environment}/segments/{segment}/is-member", tags=["membership"])
    async def is_member(
        environment: Env,
        segment: Segment,
        request: Request,
        identity_id: IdentityId = None,
        identifier: Identifier = None,
    ) -> Response:
        """Whether an identity (by id, or by Flagsmith identifier) is in the segment; 404 for
        an identity the version does not hold."""
        if (same := unchanged(request, environment)) is not None:
            return same
        answer = await service.is_member(
            request.state.api_key, environment, segment, identity_id, identifier
        )
        return cached(request, answer)

    @app.get("/v1/environments/{environment}/segments-of", tags=["membership"])
    async def segments_of(
        environment: Env,
        request: Request,
        identity_id: IdentityId = None,
        identifier: Identifier = None,
    ) -> Response:
        """The segments an identity (by id, or by identifier) is in; 404 for an identity the
        version does not hold."""
        if (same := unchanged(request, environment)) is not None:
            return same
        answer = await service.segments_of(
            request.state.api_key, environment, identity_id, identifier
        )
        return cached(request, answer)

    @app.post("/v1/environments/{environment}/segments-of/batch", tags=["batch"])
    async def segments_of_batch(
        environment: Env, request: Request, batch: Annotated[SegmentsOfBatch, Body()]
    ) -> JSONResponse:
        """``segments-of`` for up to 1,000 identities (``identity_ids`` or ``identifiers``),
        from one version, in the order given. An identity the version does not hold is an item
        with ``status`` 404 and ``error``, as its single request would have been."""
        answer = await service.segments_of_batch(
            request.state.api_key, environment, batch.identity_ids, batch.identifiers
        )
        return JSONResponse(answer)

    @app.post("/v1/environments/{environment}/is-member/batch", tags=["batch"])
    async def is_member_batch(
        environment: Env, request: Request, batch: Annotated[IsMemberBatch, Body()]
    ) -> JSONResponse:
        """``is-member`` for up to 1,000 (segment, identity) pairs, from one version, in the
        order given; a pair that cannot be answered carries ``status`` and ``error``."""
        pairs = [(p.segment, p.identity_id, p.identifier) for p in batch.pairs]
        return JSONResponse(
            await service.is_member_batch(request.state.api_key, environment, pairs)
        )
