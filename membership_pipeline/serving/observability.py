"""Per-request metrics and the access event, as a plain ASGI middleware (Starlette's
``BaseHTTPMiddleware`` costs more than a sub-millisecond answer)."""

from __future__ import annotations

import os
import time
from typing import Any

from membership_pipeline.serving.metrics import ServiceMetrics
from membership_pipeline.structured_logging import get_logger

log = get_logger("serving")

Scope = dict[str, Any]


class ObserveRequests:
    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.pid = os.getpid()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            # The route's template, never the path: paths and queries may hold identifiers.
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], template, status, seconds)
            log.info(
                "segment_membership.serving.request",
                method=scope["method"],
                route=template,
                status=status,
                ms=round(seconds * 1000, 3),
                key=scope.get("state", {}).get("key_name"),
                pid=self.pid,  # which worker process (membership serve --workers)
            )
