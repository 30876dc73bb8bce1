"""``membership serve`` and ``membership api-key``: the read API's two commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from membership_pipeline.serving.api_keys import Scope, add_key, load_key_file
from membership_pipeline.structured_logging import log_to_stderr

if TYPE_CHECKING:
    from fastapi import FastAPI

# The web stack (uvicorn, FastAPI, the app) is imported by `serve` itself: every other
# `membership` command starts without it (about 0.2 s each).

OPTIONS_VARIABLE = "MEMBERSHIP_SERVE_OPTIONS"  # how worker processes get serve's options


def add_commands(command: Any) -> None:
    """Registers the commands on ``membership``'s parser (``command(name, handler, help)``)."""
    serve_parser = command("serve", serve, "serve published memberships over HTTP")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8085)
    serve_parser.add_argument(
        "--api-keys", type=Path, default=Path(".membership/api_keys.json"),
        help="the keys file `membership api-key` writes (digests only)",
    )  # fmt: skip
    serve_parser.add_argument(
        "--stale-after", type=float, default=3600.0,
        help="seconds after which an answer's as_of is reported stale",
    )  # fmt: skip
    serve_parser.add_argument(
        "--workers", type=int, default=1,
        help="server processes sharing the port (each with its own cache)",
    )  # fmt: skip
    serve_parser.add_argument(
        "--pointer-ttl", type=float, default=1.0,
        help="seconds a new publication may take to be served (0: checked on every request)",
    )  # fmt: skip
    serve_parser.add_argument(
        "--metrics-per-environment", action="store_true",
        help="label /metrics by environment key (off: /metrics needs no key, so it names none)",
    )  # fmt: skip
    serve_parser.add_argument(
        "--no-docs", dest="docs", action="store_false",
        help="do not serve /docs and /openapi.json (open without a key otherwise)",
    )  # fmt: skip
    key_parser = command("api-key", create_key, "create an API key for the HTTP read API")
    key_parser.add_argument("name", help="who the key is for (shown in access logs)")
    key_parser.add_argument(
        "--scope", action="append", required=True, type=_scope,
        help="organisation:<id>, project:<id> or environment:<api key> (repeatable)",
    )  # fmt: skip
    key_parser.add_argument("--api-keys", type=Path, default=Path(".membership/api_keys.json"))


def _scope(text: str) -> Scope:
    try:
        return Scope.parse(text)
    except ValueError as error:  # argparse shows this message (not a ValueError's)
        raise argparse.ArgumentTypeError(str(error)) from None


def serve(args: argparse.Namespace) -> tuple[Any, str]:
    import uvicorn

    from membership_pipeline.sources.flagsmith_source import EMBEDDED_SOURCE_URL

    options = {
        "store_url": args.store_url,
        "source_url": args.source_url or EMBEDDED_SOURCE_URL,
        "api_keys": str(args.api_keys),
        "stale_after": args.stale_after,
        "pointer_ttl": args.pointer_ttl,
        "metrics_per_environment": args.metrics_per_environment,
        "docs": args.docs,
    }
    # Built here first even with workers: bad keys or an unreachable database is one line now.
    app = app_from_options(options)
    where = f"http://{args.host}:{args.port}"
    docs = "OpenAPI: /docs" if args.docs else "no /docs"
    print(f"serving memberships on {where} ({docs}), {args.workers} process(es)", flush=True)
    sys.stdout.flush()
    run = {"host": args.host, "port": args.port, "log_level": "warning", "access_log": False}
    if args.workers == 1:
        uvicorn.run(app, **run)
    else:  # each worker process builds its own app (and reader cache) from the same options
        app.state.close()
        os.environ[OPTIONS_VARIABLE] = json.dumps(options)
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=args.workers, **run)
    return {"stopped": True}, "stopped"


def app_from_options(options: dict[str, Any]) -> FastAPI:
    from membership_pipeline.serving.app import ServiceSettings, create_app

    log_to_stderr()  # the access events and the store's, one JSON object per line
    return create_app(
        ServiceSettings(
            store_url=options["store_url"],
            source_url=options["source_url"],
            keys=load_key_file(Path(options["api_keys"])),
            stale_after=timedelta(seconds=options["stale_after"]),
            pointer_ttl=options["pointer_ttl"],
            metrics_per_environment=options["metrics_per_environment"],
            docs=options["docs"],
        )
    )


def app_from_environment() -> FastAPI:
    """A worker process's app (uvicorn imports this by name)."""
    return app_from_options(json.loads(os.environ[OPTIONS_VARIABLE]))


def create_key(args: argparse.Namespace) -> tuple[Any, str]:
    args.api_keys.parent.mkdir(parents=True, exist_ok=True)
    key = add_key(args.api_keys, args.name, args.scope)
    scopes = ", ".join(str(s) for s in args.scope)
    text = (
        f"API key for {args.name} ({scopes}), shown once (only its hash is kept in "
        f"{args.api_keys}):\n{key}"
    )
    return {"name": args.name, "key": key, "scopes": [str(s) for s in args.scope]}, text
