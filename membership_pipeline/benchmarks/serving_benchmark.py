"""Benchmark: the HTTP read API under a bounded local load.

    membership-benchmark-serving [--identities 1000000] [--segments 300] [--seconds 5]
        [--concurrency 1,32] [--source-url URL] [--store-url URL]

The source is seeded into a scratch PostgreSQL schema, or is an existing Flagsmith database
(``--source-url``, its first environment); the store is a scratch schema, or ``--store-url``
(backfilled when its environment has no published version). Then ``membership serve`` runs in
its own process and a load client (aiohttp, in this process, ``concurrency`` requests in
flight, for ``--seconds`` per row after a one-second warm-up) asks, with random identities
and segments:

- is-member by identity id; by identifier, drawn from 20,000 (mostly resolved through
  Flagsmith's unique (environment, identifier) index) and from 1,000 hot ones (mostly
  remembered by the service);
- a segment's count; a page of 200 members (ids and identifiers);
- a batch ``segments-of`` of 1,000 identities, by id and by identifier (from the 20,000);
- is-member by id revalidated: ``If-None-Match`` with the answer's ``ETag`` (1,000 requests
  answered once before), each answered 304.

Printed per row: requests/s, p50 and p99 latency, errors (an answer other than the 200, or the
304, expected). Target: ≥ 3,000 is-member requests/s with p99 ≤ 10 ms. Client and server share
this machine's cores: the figures are what one service process serves while a client
saturates it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from membership_pipeline.benchmarks.scratch_database import (
    ScratchDatabase,
    analyze,
    progress,
    seed_one_environment,
)
from membership_pipeline.database.schema import migrate
from membership_pipeline.model.errors import NotYetPublished, UnknownEnvironment
from membership_pipeline.project_files import PROJECT_ROOT as ROOT
from membership_pipeline.serving.api_keys import Scope, add_key
from membership_pipeline.sources.flagsmith_source import FlagsmithSource
from membership_pipeline.storage import MembershipStore

KINDS = {
    "by-id": "is-member by id",
    "by-identifier": "is-member by identifier",
    "by-hot-identifier": "is-member by hot identifier",
    "count": "count",
    "members": "members page of 200",
    "batch-by-id": "segments-of batch of 1,000 by id",
    "batch-by-identifier": "segments-of batch of 1,000 by identifier",
    "revalidated": "is-member by id, 304",
}
BATCH = 1_000
REVALIDATED_URLS = 1_000


@dataclass(frozen=True)
class Call:
    url: str
    body: dict | None = None  # a POST's JSON body; None: a GET
    headers: dict[str, str] | None = None
    expect: int = 200


HOT_IDENTIFIERS = 1_000
TARGET_RPS = 3000
TARGET_P99_MS = 10.0


@dataclass
class Row:
    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument(
        "--requests", help=f"comma-separated kinds to run (default all): {', '.join(KINDS)}",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="membership serve --workers")
    parser.add_argument("--source-url")
    parser.add_argument("--store-url")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    unknown = set(args.requests.split(",") if args.requests else ()) - set(KINDS)
    if unknown:
        parser.error(f"unknown request kinds {sorted(unknown)}: use {', '.join(KINDS)}")
    with (
        ScratchDatabase("postgresql") as scratch_source,
        ScratchDatabase("postgresql") as scratch_store,
    ):
        source_url = args.source_url or scratch_source
        if args.source_url is None:
            progress(f"seeding {args.identities:,} identities × {args.segments} segments")
            seed_one_environment(source_url, args.identities, args.segments)
            analyze(source_url)
        store_url = args.store_url or scratch_store
        kinds = args.requests.split(",") if args.requests else list(KINDS)
        rows = run(source_url, store_url, args.seconds, levels, kinds, args.workers)
    print_rows(rows)


def run(
    source_url: str,
    store_url: str,
    seconds: float,
    levels: list[int],
    kinds: list[str],
    workers: int = 1,
) -> list[Row]:
    migrate(store_url)
    source = FlagsmithSource(source_url)
    info = source.environments()[0]
    env = info.api_key
    with MembershipStore(store_url) as store:
        try:
            store.reader().published(env)
        except (UnknownEnvironment, NotYetPublished):
            progress(f"backfilling {env} (no published version yet)")
            backfill(source_url, store_url, env)
        published = store.reader().published(env)
        segments = published.segment_keys
        universe = list(published.universe())
    rng = random.Random(7)
    ids = rng.sample(universe, min(20_000, len(universe)))
    names = source.identifiers(info.id, ids)
    source.close()
    identifiers = [names[i] for i in ids if i in names]
    hot = identifiers[:HOT_IDENTIFIERS]  # a proxy's active users: asked about again and again
    with tempfile.TemporaryDirectory(prefix="membership-serving-") as tmp:
        keys_file = Path(tmp) / "keys.json"
        key = add_key(keys_file, "benchmark", [Scope("environment", env)])
        port = 18_000 + os.getpid() % 1000
        server = subprocess.Popen(
            [sys.executable, "-m", "membership_pipeline.cli", "--store-url", store_url,
             "--source-url", source_url, "serve", "--port", str(port),
             "--api-keys", str(keys_file), "--workers", str(workers)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}/v1/environments/{env}"
            batch = f"{base}/segments-of/batch"
            scenarios: list[tuple[str, Callable[[random.Random], Call]]] = [
                (KINDS["by-id"], lambda r: Call(f"{base}/segments/{r.choice(segments)}"
                 f"/is-member?identity_id={r.choice(ids)}")),
                (KINDS["by-identifier"], lambda r: Call(f"{base}/segments/{r.choice(segments)}"
                 f"/is-member?identifier={r.choice(identifiers)}")),
                (KINDS["by-hot-identifier"], lambda r: Call(f"{base}/segments/"
                 f"{r.choice(segments)}/is-member?identifier={r.choice(hot)}")),
                (KINDS["count"], lambda r: Call(f"{base}/segments/{r.choice(segments)}")),
                (KINDS["members"], lambda r: Call(f"{base}/segments/{r.choice(segments)}"
                 "/members?limit=200")),
                (KINDS["batch-by-id"],
                 lambda r: Call(batch, {"identity_ids": r.sample(ids, BATCH)})),
                (KINDS["batch-by-identifier"],
                 lambda r: Call(batch, {"identifiers": r.sample(identifiers, BATCH)})),
            ]  # fmt: skip
            asyncio.run(wait_until_up(f"http://127.0.0.1:{port}/healthz", server))
            if "revalidated" in kinds:
                urls = [
                    f"{base}/segments/{rng.choice(segments)}/is-member?identity_id={i}"
                    for i in ids[:REVALIDATED_URLS]
                ]
                tagged = list(asyncio.run(entity_tags(urls, key)).items())

                def revalidate(r: random.Random) -> Call:
                    url, tag = r.choice(tagged)
                    return Call(url, headers={"If-None-Match": tag}, expect=304)

                scenarios.append((KINDS["revalidated"], revalidate))
            rows = []
            wanted = {KINDS[kind] for kind in kinds}
            for name, target in (s for s in scenarios if s[0] in wanted):
                for concurrency in levels:
                    progress(f"{name}, concurrency {concurrency}")
                    rows.append(
                        asyncio.run(load(name, target, key, concurrency, seconds, rng.random()))
                    )
            return rows
        finally:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def backfill(source_url: str, store_url: str, env: str) -> None:
    import dagster as dg

    from membership_pipeline.defs.membership.materialize import materialize_environment

    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize_environment(instance, env, source_url=source_url, store_url=store_url)
    if not result.success:
        raise SystemExit(f"the backfill of {env} failed")


async def wait_until_up(url: str, server: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit("membership serve exited before it answered")
            try:
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("membership serve did not answer within 60 s")


async def entity_tags(urls: list[str], key: str) -> dict[str, str]:
    """Each URL's ETag, from one answer of each."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        tags = {}
        for url in urls:
            async with session.get(url) as answer:
                await answer.read()
                tags[url] = answer.headers["ETag"]
        return tags


async def load(
    name: str,
    target: Callable[[random.Random], Call],
    key: str,
    concurrency: int,
    seconds: float,
    seed: float,
) -> Row:
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(index: int, until: float, record: bool) -> None:
            nonlocal errors
            rng = random.Random(seed * 1000 + index)
            while time.perf_counter() < until:
                call = target(rng)
                started = time.perf_counter()
                async with session.request(
                    "GET" if call.body is None else "POST", call.url, json=call.body,
                    headers=call.headers,
                ) as answer:  # fmt: skip
                    await answer.read()
                    failed = answer.status != call.expect
                if record:
                    latencies.append((time.perf_counter() - started) * 1000)
                    errors += failed

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(i, warm, False) for i in range(concurrency)))
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(worker(i, until, True) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Row(name, concurrency, len(latencies), errors, elapsed, latencies)


def print_rows(rows: list[Row]) -> None:
    print(f"\n{'request':<42}{'in flight':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for row in rows:
        print(
            f"{row.name:<42}{row.concurrency:>10}{row.rps:>10,.0f}{row.percentile(0.5):>9.2f}"
            f"{row.percentile(0.99):>9.2f}{row.errors:>8}"
        )
    members = [r for r in rows if r.name.startswith("is-member by id")]
    best = max(members, key=lambda r: r.rps, default=None)
    if best is not None:
        ok = best.rps >= TARGET_RPS and best.percentile(0.99) <= TARGET_P99_MS
        print(
            f"\nis-member by id at {best.concurrency} in flight: {best.rps:,.0f} req/s, p99 "
            f"{best.percentile(0.99):.2f} ms (target ≥ {TARGET_RPS:,} req/s, p99 ≤ "
            f"{TARGET_P99_MS:g} ms: {'ok' if ok else 'missed'})"
        )
    by_id = {r.concurrency: r for r in rows if r.name == "is-member by id"}
    for row in (r for r in rows if r.name == "is-member by identifier"):
        if row.concurrency in by_id:
            ratio = statistics.mean([by_id[row.concurrency].percentile(0.5)]) / max(
                row.percentile(0.5), 1e-9
            )
            print(
                f"identifier resolution at {row.concurrency} in flight: p50 "
                f"{row.percentile(0.5):.2f} ms vs {by_id[row.concurrency].percentile(0.5):.2f} ms "
                f"by id ({1 / ratio:.1f}×)"
            )


if __name__ == "__main__":
    main()
