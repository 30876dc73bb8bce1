"""Every ``/v1/`` request needs a known API key (``Authorization: Bearer``); the key's entry goes
to ``request.state.api_key``. A plain ASGI middleware: no per-request dependency to solve for
what every answer needs."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from membership_pipeline.serving.api_keys import KeyRing


class Authenticate:
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
