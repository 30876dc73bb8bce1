"""``membership``: the operator's command line for the bitmap store.

    membership migrate                          create or upgrade the store's schema
    membership status [ENV]                     EnvironmentMembershipMetadata, one line each
    membership segments ENV                     the published version: segments, counts, failures
    membership count ENV SEGMENT                members of a segment (published version)
    membership members ENV SEGMENT [--after ID] [--limit N]
    membership sample ENV SEGMENT [-n N] [--seed S]
    membership is-member ENV SEGMENT ID
    membership segments-of ENV ID
    membership rollback ENV [--to-version V]    flip back to a kept earlier version
    membership gc [--keep N] [--grace SECONDS]  collect retired and abandoned versions
    membership reconcile                        fail running claims whose lease lapsed
    membership enqueue ENV [--reason R] [--force]   queue a backfill request, print the decision
                                                the next dispatch tick would take for it
    membership queue                            pending backfill requests
    membership capture enable|status|disable    change data capture on Flagsmith's PostgreSQL
                                                (publication, replica identities, slot); the
                                                capture process is `membership-capture`
    membership trait-index status|create        the covering index of Flagsmith's trait table
                                                that big environments' shards read by
    membership serve [--host H] [--port P]      the HTTP read API (see the README's "Read API")
    membership api-key NAME --scope organisation:ID|project:ID|environment:KEY
                                                create a key for it (shown once, stored hashed)

The store is ``--store-url`` or ``$MEMBERSHIP_STORE_URL`` (default: the embedded SQLite file
under ``.membership/``); ``enqueue`` looks the environment's organisation up in Flagsmith's
database, ``--source-url`` or ``$MEMBERSHIP_SOURCE_URL``. ``--json`` prints one JSON document
instead of text. Exit status: 0 on success, 1 when the store refuses or cannot answer (the
message says why) or an enqueued request would not launch at the next tick, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from membership_pipeline.changes.capture import capture_status, record_new_slot
from membership_pipeline.database.schema import migrate
from membership_pipeline.database.urls import database_url
from membership_pipeline.dispatch.dispatcher import preview_tick
from membership_pipeline.dispatch.intake import RequestIntake
from membership_pipeline.dispatch.policy import Outcome
from membership_pipeline.dispatch.queue import DatabaseQueue
from membership_pipeline.dispatch.requests import Reason, describe_queued, waited
from membership_pipeline.dispatch.settings import policy_settings, policy_values_from_environment
from membership_pipeline.model.errors import CaptureError, StoreError
from membership_pipeline.serving.command import add_commands as add_serving_commands
from membership_pipeline.sources.pgoutput import format_lsn
from membership_pipeline.sources.replication import (
    DEFAULT_PUBLICATION,
    DEFAULT_SLOT,
    capture_support,
    disable_capture,
    enable_capture,
    slot_state,
)
from membership_pipeline.sources.trait_index import (
    create_covering_index,
    describe_covering_index,
)
from membership_pipeline.storage import (
    DEFAULT_STORE_URL,
    EnvironmentMembershipMetadata,
    MembershipStore,
)

Command = Callable[[argparse.Namespace], tuple[Any, str]]  # (JSON document, text)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    status = 0
    try:
        document, text = args.command(args)
    except NoOp as no_op:
        document, text, status = no_op.document, no_op.text, 1
    except (StoreError, CaptureError, ValueError, TypeError) as error:
        print(f"membership {args.name}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(document, indent=2, default=str) if args.json else text)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="membership", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--store-url",
        default=os.environ.get("MEMBERSHIP_STORE_URL", DEFAULT_STORE_URL),
        help="the store's database (default $MEMBERSHIP_STORE_URL or %(default)s)",
    )
    parser.add_argument(
        "--source-url",
        default=os.environ.get("MEMBERSHIP_SOURCE_URL"),
        help="Flagsmith's database, for enqueue (default $MEMBERSHIP_SOURCE_URL or the demo's)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Command, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_)
        sub.set_defaults(command=handler, name=name)
        return sub

    command("migrate", _migrate, "create or upgrade the store's schema")
    command("status", _status, "backfill status per environment").add_argument(
        "environment", nargs="?"
    )
    command("segments", _segments, "segments of the published version").add_argument("environment")
    for name, handler, help_ in (
        ("count", _count, "members of a segment"),
        ("members", _members, "a page of members in id order"),
        ("sample", _sample, "a reproducible random sample of members"),
        ("is-member", _is_member, "whether an identity is in a segment"),
    ):
        sub = command(name, handler, help_)
        sub.add_argument("environment")
        sub.add_argument("segment")
        if name == "members":
            sub.add_argument("--after", type=int, help="the last id of the previous page")
            sub.add_argument("--limit", type=int, default=100)
        if name == "sample":
            sub.add_argument("-n", type=int, default=10)
            sub.add_argument("--seed", type=int, default=0)
        if name == "is-member":
            sub.add_argument("identity_id", type=int)
    segments_of = command("segments-of", _segments_of, "the segments an identity is in")
    segments_of.add_argument("environment")
    segments_of.add_argument("identity_id", type=int)
    rollback = command("rollback", _rollback, "flip back to an earlier version")
    rollback.add_argument("environment")
    rollback.add_argument("--to-version", type=int)
    gc = command("gc", _gc, "collect retired and abandoned versions")
    gc.add_argument("--keep", type=int, default=2, help="retired versions kept for rollback")
    gc.add_argument("--grace", type=float, default=300, help="seconds a retired version is kept")
    command("reconcile", _reconcile, "fail running claims whose lease lapsed")
    enqueue = command("enqueue", _enqueue, "queue a backfill request for the dispatcher")
    enqueue.add_argument("environment")
    enqueue.add_argument("--reason", choices=[r.value for r in Reason], default="manual")
    enqueue.add_argument("--force", action="store_true", help="skip the cooldown")
    enqueue.add_argument("--organisation", help="default: looked up in Flagsmith's database")
    enqueue.add_argument(
        "--segments",
        help="comma-separated segment keys: only their definitions changed (an incremental "
        "backfill re-evaluates the edited segments and shares the rest)",
    )
    command("queue", _queue, "pending backfill requests")
    capture = command(
        "capture",
        _capture,
        "change data capture on Flagsmith's PostgreSQL: enable (publication, replica "
        "identities, slot; needs the tables' owner), status, disable (drops the slot); the "
        "capture process itself is `membership-capture`",
    )
    capture.add_argument("action", choices=["enable", "status", "disable"])
    capture.add_argument("--slot", default=os.environ.get("MEMBERSHIP_CAPTURE_SLOT", DEFAULT_SLOT))
    capture.add_argument(
        "--publication",
        default=os.environ.get("MEMBERSHIP_CAPTURE_PUBLICATION", DEFAULT_PUBLICATION),
    )
    trait_index = command(
        "trait-index",
        _trait_index,
        "the covering index of Flagsmith's trait table (README: Big environments): status, or "
        "create it without blocking Flagsmith's writes (needs the table's owner)",
    )
    trait_index.add_argument("action", choices=["status", "create"])
    add_serving_commands(command)
    return parser


def _store(args: argparse.Namespace) -> MembershipStore:
    return MembershipStore(args.store_url)


def _migrate(args: argparse.Namespace) -> tuple[Any, str]:
    before, after = migrate(args.store_url)
    text = (
        f"store schema at revision {after} (unchanged)"
        if before == after
        else f"store schema migrated from {before or 'empty'} to revision {after}"
    )
    return {"revision_before": before, "revision": after}, text


def _status(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        if args.environment:
            found = store.metadata(args.environment)
            if found is None:
                raise StoreError(f"environment {args.environment!r} has never been backfilled")
            rows = [found]
        else:
            rows = store.all_metadata()
        captured = capture_status(store.database)
        waiting = store.pending_counts()
        by_identity = store.answers_by_identity()
        queued = DatabaseQueue(store.database).pending()
        now = store.clock()
    text = _status_table(rows)
    keys = {row.environment_key for row in rows}
    shown = sorted((key, words) for key, words in by_identity.items() if key in keys)
    if shown:
        text += "\nanswers by identity (what a delta reads): " + "; ".join(
            f"{key} {words}" for key, words in shown[:10]
        )
    if waiting:
        shown = ", ".join(f"{key} {count:,}" for key, count in sorted(waiting.items())[:10])
        text += f"\nidentities waiting for a delta backfill: {shown}"
    if queued:
        text += f"\nqueued backfill requests ({len(queued)}): {describe_queued(queued, now)}"
    text += "\n" + (
        captured.describe()
        if captured is not None
        else "change capture: not running (change detection and the refresh schedule keep "
        "environments fresh; see `membership capture enable`)"
    )
    return [
        row.as_dict() | {"answers_by_identity": by_identity.get(row.environment_key)}
        for row in rows
    ], text


@contextlib.contextmanager
def _source_engine(args: argparse.Namespace) -> Iterator[sa.Engine]:
    """An engine on Flagsmith's database with the operator's own URL (the commands that change
    its schema need the tables' owner, not the read-only source)."""
    if not args.source_url:
        raise ValueError(
            f"{args.name} needs --source-url (or $MEMBERSHIP_SOURCE_URL): Flagsmith's PostgreSQL"
        )
    engine = sa.create_engine(database_url(args.source_url))
    try:
        yield engine
    finally:
        engine.dispose()


def _capture(args: argparse.Namespace) -> tuple[Any, str]:
    with _source_engine(args) as engine:
        if args.action == "enable":
            # The store first: one that cannot be opened leaves the source as it was.
            with _store(args) as store:
                made = enable_capture(engine, args.publication, args.slot)
                record_new_slot(store.database, args.slot, made, store.clock())
            where = f"publication {args.publication}, slot {args.slot} at "
            where += format_lsn(made.position)
            document = {"slot": args.slot, "position": format_lsn(made.position)}
            if made.horizon is None:
                return document, f"capture already enabled: {where} (nothing changed)"
            return document, (
                f"capture enabled: {where}; capture's first tick refreshes in full the "
                "environments published from a read before now, none backfilled from now on"
            )
        if args.action == "disable":
            disable_capture(engine, args.publication, args.slot)
            return {"slot": args.slot, "dropped": True}, (
                f"capture disabled: slot {args.slot} and publication {args.publication} dropped"
            )
        with engine.connect() as conn:
            reason = capture_support(conn)
            state = slot_state(conn, args.slot) if reason is None else None
    document = {"available": reason is None, "reason": reason, "slot": state and vars(state)}
    if reason is not None:
        return document, f"change capture unavailable: {reason}"
    assert state is not None
    if not state.exists:
        return document, f"slot {args.slot} does not exist (membership capture enable)"
    return document, (
        f"slot {args.slot}: {state.wal_status}, confirmed at "
        f"{format_lsn(state.confirmed or 0)}, {state.lag_bytes or 0:,} bytes behind, "
        f"{state.retained_bytes or 0:,} bytes of WAL retained"
    )


def _trait_index(args: argparse.Namespace) -> tuple[Any, str]:
    with _source_engine(args) as engine:
        if args.action == "create":
            if engine.dialect.name != "postgresql":
                raise ValueError("trait-index create needs Flagsmith's PostgreSQL")
            try:
                create_covering_index(engine)
            except sa.exc.DBAPIError as error:  # e.g. not the table's owner
                first_line = str(error.orig).strip().splitlines()[0]
                raise ValueError(f"the covering index was not created: {first_line}") from None
        with engine.connect() as conn:
            covering, line = describe_covering_index(conn)
    return {"covering": covering, "status": line}, line


def _status_table(rows: list[EnvironmentMembershipMetadata]) -> str:
    if not rows:
        return "no environment has been backfilled yet"
    key_width = max(len("environment"), *(len(row.environment_key) for row in rows)) + 2
    name_width = max(len("name"), *(len(row.display_name or "-") for row in rows)) + 2
    header = f"{'environment':<{key_width}}{'name':<{name_width}}{'status':<11}"
    header += f"{'started (UTC)':<21}{'completed (UTC)':<21}"
    header += f"{'version':>8}{'identities':>12}  as of / owner / error"
    lines = [header]
    for row in rows:
        detail = [
            f"as of {_when(row.published_as_of)}" if row.published_as_of else "nothing published"
        ]
        if row.claim_owner:
            detail.append(f"by {row.claim_owner}")
        if row.last_error:
            detail.append(f"error: {row.last_error.splitlines()[0][:80]}")
        lines.append(
            f"{row.environment_key:<{key_width}}{row.display_name or '-':<{name_width}}"
            f"{row.last_backfill_status or '-':<11}"
            f"{_when(row.last_backfill_started_at):<21}{_when(row.last_backfill_completed_at):<21}"
            f"{row.published_version_id or '-':>8}{row.published_identity_count or 0:>12,}  "
            + "; ".join(detail)
        )
    return "\n".join(lines)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _segments(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        published = store.reader().published(args.environment)
        counts = published.segment_counts()
        failed = published.failed_segments
        names = {key: published.segment_name(key) for key in published.segment_keys}
        evaluated = published.segment_freshness()
    document = {
        "environment": args.environment,
        "version": published.version_id,
        "as_of": published.as_of.isoformat(),
        "identities": published.identity_count,
        "segments": [
            {
                "key": key,
                "name": names[key],
                "count": counts.get(key),
                "error": failed.get(key),
                "evaluated_as_of": evaluated[key].isoformat(),
            }
            for key in names
        ],
    }
    width = min(max((len(n or "") for n in names.values()), default=0), 47) + 1
    lines = [
        f"{args.environment}: version {published.version_id}, "
        f"{published.identity_count:,} identities, as of {_when(published.as_of)} UTC",
        f"{'segment':<10}{'name':<{width}}{'members':>10}  evaluated as of (UTC)",
    ]
    # Flagsmith's segment keys are ids: 2 before 10.
    for key in sorted(names, key=lambda k: (len(k), k)):
        shown = f"{counts[key]:>10,}" if key in counts else f"  failed: {failed[key]}"
        name = (names[key] or "")[: width - 1]
        lines.append(f"{key:<10}{name:<{width}}{shown}  {_when(evaluated[key])}")
    return document, "\n".join(lines)


def _count(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        published = store.reader().published(args.environment)
        count = published.count(args.segment)
    document = {
        "environment": args.environment,
        "segment": args.segment,
        "count": count,
        "version": published.version_id,
        "as_of": published.as_of.isoformat(),
    }
    return document, f"{count:,} identities (version {published.version_id})"


def _members(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        page = store.reader().members(args.environment, args.segment, args.after, args.limit)
    more = f"\n(next page: --after {page.next_after})" if page.next_after is not None else ""
    return {"ids": page.ids, "next_after": page.next_after}, "\n".join(map(str, page.ids)) + more


def _sample(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        ids = store.reader().sample(args.environment, args.segment, args.n, args.seed)
    return {"ids": ids, "seed": args.seed}, "\n".join(map(str, ids))


def _is_member(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        member = store.reader().is_member(args.environment, args.segment, args.identity_id)
    verdict = "is" if member else "is not"
    return {"member": member}, f"identity {args.identity_id} {verdict} in {args.segment}"


def _segments_of(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        found = store.reader().segments_of(args.environment, args.identity_id)
    text = "\n".join(found.segments) or "(in no segment)"
    if found.unavailable:
        text += f"\n(unknown for segments that failed to evaluate: {', '.join(found.unavailable)})"
    return {"segments": found.segments, "unavailable": found.unavailable}, text


def _rollback(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        flipped = store.rollback(args.environment, args.to_version)
    text = f"{args.environment}: version {flipped.previous_version_id} → {flipped.version_id}"
    return flipped.__dict__, text


def _gc(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        report = store.collect_garbage(args.keep, timedelta(seconds=args.grace))
    text = (
        f"collected {len(report.retired_versions)} retired and "
        f"{len(report.abandoned_versions)} abandoned versions ({report.bytes_freed:,} bytes)"
    )
    if report.still_referenced_versions:
        kept = ", ".join(str(v) for v in report.still_referenced_versions)
        text += f"; chunks of versions {kept} are kept: later versions share them"
    return report.__dict__, text


def _reconcile(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        reconciled = store.reconcile_stale_claims()
    lines = [f"{r.environment_key}: claim of {r.owner} failed ({r.reason})" for r in reconciled]
    return [r.__dict__ for r in reconciled], "\n".join(lines) or "no stale claims"


def _enqueue(args: argparse.Namespace) -> tuple[Any, str]:
    organisation = args.organisation or _organisation_of(args.source_url, args.environment)
    settings = policy_values_from_environment(os.environ)
    with _store(args) as store:
        now = store.clock()
        request = RequestIntake(int(settings["max_attempts"])).manual(
            organisation,
            args.environment,
            now,
            reason=Reason(args.reason),
            force=args.force,
            segments=_segment_keys(args.segments),
            segment_total=_published_segments(store, args.environment),
        )
        queue = DatabaseQueue(store.database)
        queue.enqueue([request])
        decisions = preview_tick(queue, store, policy_settings(settings), now)[1].decisions
    by_job = {d.job_id: d for d in decisions}
    decision = by_job[request.job_id]
    if decision.outcome is Outcome.COALESCED:  # what happens to it is its keeper's decision
        assert decision.into is not None
        decision = by_job[decision.into]
    document = {
        "job_id": request.job_id,
        "environment": args.environment,
        "organisation": organisation,
        "decision": decision.outcome.value,
        "detail": decision.detail,
        "coalesced_into": None if decision.job_id == request.job_id else decision.job_id,
        "mode": decision.mode,
        "mode_detail": decision.mode_detail,
    }
    text = (
        f"queued {request.job_id} ({args.reason}{', forced' if args.force else ''}) for "
        f"{args.environment}; next dispatch: {decision.outcome.value} ({decision.detail}), "
        f"{decision.mode_detail or decision.mode}"
    )
    if document["coalesced_into"]:
        text += f", merged into {decision.job_id}"
    if decision.outcome is not Outcome.PUBLISHED:
        raise NoOp(document, text)
    return document, text


def _segment_keys(listed: str | None) -> tuple[str, ...] | None:
    if listed is None:
        return None
    keys = tuple(k.strip() for k in listed.split(",") if k.strip())
    if not keys:
        raise ValueError("--segments needs at least one segment key, e.g. --segments 12,40")
    return keys


def _published_segments(store: MembershipStore, environment_key: str) -> int | None:
    found = store.metadata(environment_key)
    return None if found is None else found.published_segment_count


def _organisation_of(source_url: str | None, environment_key: str) -> str:
    # pandas and pyarrow load with the source: only when needed.
    from membership_pipeline.sources.flagsmith_source import EMBEDDED_SOURCE_URL, FlagsmithSource

    source_url = source_url or EMBEDDED_SOURCE_URL
    with FlagsmithSource(source_url).require_reachable() as source:
        found = {i.api_key: i.organisation_id for i in source.environments()}
    if environment_key not in found:
        raise StoreError(
            f"environment {environment_key!r} is not a live environment in {source_url}"
        )
    return str(found[environment_key])


def _queue(args: argparse.Namespace) -> tuple[Any, str]:
    with _store(args) as store:
        pending = sorted(DatabaseQueue(store.database).pending(), key=lambda r: r.created_at)
        now = store.clock()
    rows = [
        {
            "job_id": r.job_id,
            "environment": r.environment,
            "organisation": r.organisation,
            "reason": r.reason.value,
            "mode": r.mode,
            "attempt": r.attempt,
            "window_start": r.window_start.isoformat(),
            "window_end": r.window_end.isoformat(),
            "created_at": r.created_at.isoformat(),
            "coalesced": len(r.coalesced),
        }
        for r in pending
    ]
    lines = [
        f"{r.job_id[:12]}  {r.environment:<24}{r.mode:<12}{r.reason.value:<16}attempt "
        f"{r.attempt}  created {r.created_at.isoformat()[:19]} ({waited(r.created_at, now)} ago)"
        for r in pending
    ]
    return rows, "\n".join(lines) or "no pending backfill requests"


class NoOp(Exception):
    """A command that did nothing the operator asked for: printed, exit status 1."""

    def __init__(self, document: Any, text: str) -> None:
        super().__init__(text)
        self.document, self.text = document, text


def run() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # `membership status | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    run()
