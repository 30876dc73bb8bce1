"""The HTTP read API (FastAPI): who is in a segment, for services in any language.

``create_app`` puts together the service (``service.py``: the answers), its routes
(``routes.py``), the key check (``auth.py``), the access log and metrics (``observability.py``)
and one handler per refusal (``errors.py``): a request that cannot be answered is a status and
one line of JSON.

Every answer names the version and ``as_of`` it came from and says ``stale`` once ``as_of`` is
older than the configured age. A members listing stays on the version of its first page (the
cursor carries it); once that version is collected, the next page is a 410.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from membership_pipeline.serving.auth import Authenticate
from membership_pipeline.serving.body_limit import LimitBody
from membership_pipeline.serving.errors import STATUS_OF, ApiError, api_error
from membership_pipeline.serving.observability import ObserveRequests
from membership_pipeline.serving.routes import add_routes
from membership_pipeline.serving.service import MembershipService, ServiceSettings

__all__ = ["ServiceSettings", "create_app"]


def create_app(settings: ServiceSettings) -> FastAPI:
    service = MembershipService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        lifespan=lifespan,
        # Open without a key, like /healthz: the API's shape, no tenant's data (--no-docs).
        docs_url="/docs" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
        redoc_url=None,
        title="membership_pipeline read API",
        version="1",
        summary="Exact, versioned segment membership of Flagsmith environments.",
    )
    app.state.close = service.close
    app.add_middleware(LimitBody)  # innermost: a body is only read for a known key
    app.add_middleware(Authenticate, keys=settings.keys)
    app.add_middleware(ObserveRequests, metrics=service.metrics)  # outermost: sees the 401s too

    async def refused(request: Request, error: Exception) -> JSONResponse:
        answer = api_error(error)
        headers = {"WWW-Authenticate": "Bearer"} if answer.status == 401 else None
        return JSONResponse({"error": answer.message}, status_code=answer.status, headers=headers)

    for kind in (ApiError, *STATUS_OF):
        app.add_exception_handler(kind, refused)

    @app.exception_handler(StarletteHTTPException)
    async def unrouted(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Routing's own refusals (no such route, wrong method) in the same one-line form.
        message = {404: "no such route: see /openapi.json", 405: "method not allowed"}.get(
            error.status_code, str(error.detail)
        )
        return JSONResponse(
            {"error": message}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = first["loc"]
        name = ".".join(str(part) for part in where[1:]) or (
            "body" if where[:1] == ("body",) else "request"
        )
        given = first.get("input")
        shown = f" (got {str(given)[:40]!r})" if isinstance(given, str | int | float) else ""
        return JSONResponse({"error": f"{name}: {first['msg']}{shown}"}, status_code=400)

    add_routes(app, service)
    return app
