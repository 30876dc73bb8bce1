"""The read API's routes: each parses its path and query (FastAPI validates them: a bad value is
a one-line 400) and asks the service. Nothing else happens here."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from membership_pipeline.serving.service import MembershipService
from membership_pipeline.storage.reader import MAX_IDENTITY_ID

MAX_LIMIT = 1000
MAX_SAMPLE = 1000

Env = Annotated[str, Path(max_length=255, description="the environment's api key")]
Segment = Annotated[str, Path(max_length=255, description="the segment's key (its id)")]
Identifier = Annotated[
    str | None, Query(min_length=1, max_length=2000, description="Flagsmith identifier")
]
IdentityId = Annotated[
    int | None, Query(ge=1, le=MAX_IDENTITY_ID, description="Flagsmith identity id")
]


def add_routes(app: FastAPI, service: MembershipService) -> None:
    """The routes, on the app itself (an included router would add a second round of route
    matching to every request: about 5 % of an is-member answer, measured)."""

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
    async def summary(environment: Env, request: Request) -> JSONResponse:
        """The published version: identities, segments with counts, failed segments."""
        return JSONResponse(service.summary(request.state.api_key, environment))

    @app.get("/v1/environments/{environment}/segments/{segment}", tags=["membership"])
    async def count(environment: Env, segment: Segment, request: Request) -> JSONResponse:
        """A segment's member count."""
        return JSONResponse(service.count(request.state.api_key, environment, segment))

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
        return JSONResponse(
            service.members(request.state.api_key, environment, segment, limit, cursor, search)
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
        return JSONResponse(service.sample(request.state.api_key, environment, segment, n, seed))

    @app.get("/v1/environments/{environment}/segments/{segment}/is-member", tags=["membership"])
    async def is_member(
        environment: Env,
        segment: Segment,
        request: Request,
        identity_id: IdentityId = None,
        identifier: Identifier = None,
    ) -> JSONResponse:
        """Whether an identity (by id, or by Flagsmith identifier) is in the segment."""
        answer = await service.is_member(
            request.state.api_key, environment, segment, identity_id, identifier
        )
        return JSONResponse(answer)

    @app.get("/v1/environments/{environment}/segments-of", tags=["membership"])
    async def segments_of(
        environment: Env,
        request: Request,
        identity_id: IdentityId = None,
        identifier: Identifier = None,
    ) -> JSONResponse:
        """The segments an identity (by id, or by identifier) is in."""
        answer = await service.segments_of(
            request.state.api_key, environment, identity_id, identifier
        )
        return JSONResponse(answer)
