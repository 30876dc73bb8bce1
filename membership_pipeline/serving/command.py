"""``membership serve`` and ``membership api-key``: the read API's two commands."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn

from membership_pipeline.serving.api_keys import Scope, add_key, load_key_file
from membership_pipeline.serving.app import ServiceSettings, create_app
from membership_pipeline.sources.demo_dataset import DEFAULT_URL as DEMO_SOURCE_URL
from membership_pipeline.structured_logging import log_to_stderr


def add_commands(command: Any) -> None:
    """Registers the commands on ``membership``'s parser (``command(name, handler, help)``)."""
    serve_parser = command("serve", serve, "serve published memberships over HTTP")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8085)
    serve_parser.add_argument(
        "--api-keys", type=Path, default=Path(".membership/api_keys.json"),
        help="the keys file `membership api-key create` writes (hashes only)",
    )  # fmt: skip
    serve_parser.add_argument(
        "--stale-after", type=float, default=3600.0,
        help="seconds after which an answer's as_of is reported stale",
    )  # fmt: skip
    serve_parser.add_argument(
        "--pointer-ttl", type=float, default=1.0,
        help="seconds a new publication may take to be served (0: checked on every request)",
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
    settings = ServiceSettings(
        store_url=args.store_url,
        source_url=args.source_url or DEMO_SOURCE_URL,
        keys=load_key_file(args.api_keys),
        stale_after=timedelta(seconds=args.stale_after),
        pointer_ttl=args.pointer_ttl,
    )
    log_to_stderr()  # the access events and the store's, one JSON object per line
    app = create_app(settings)
    print(f"serving memberships on http://{args.host}:{args.port} (OpenAPI: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return {"stopped": True}, "stopped"


def create_key(args: argparse.Namespace) -> tuple[Any, str]:
    args.api_keys.parent.mkdir(parents=True, exist_ok=True)
    key = add_key(args.api_keys, args.name, args.scope)
    scopes = ", ".join(str(s) for s in args.scope)
    text = (
        f"API key for {args.name} ({scopes}), shown once (only its hash is kept in "
        f"{args.api_keys}):\n{key}"
    )
    return {"name": args.name, "key": key, "scopes": [str(s) for s in args.scope]}, text
