"""A bound on request bodies (the batch endpoints'): a body larger than ``max_bytes`` is a
one-line 413 before any of it is parsed, whether its size is announced (``Content-Length``) or
streamed (chunked). A plain ASGI middleware, like the others."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 2 * 1024 * 1024  # 1,000 identifiers of 2,000 characters is about 2 MB


class LimitBody:
    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        announced = dict(scope["headers"]).get(b"content-length")
        if announced is not None:
            if not announced.isdigit() or int(announced) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # Streamed: read it all (up to the bound), then hand it on as one message.
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        refused = JSONResponse(
            {"error": f"request body is larger than {self.max_bytes:,} bytes: send fewer items"},
            status_code=413,
        )
        await refused(scope, receive, send)
