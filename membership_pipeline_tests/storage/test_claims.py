"""The claim and EnvironmentMembershipMetadata transitions, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import structlog
from pyroaring import BitMap

from membership_pipeline.model.errors import ClaimLost
from membership_pipeline.storage import BackfillStatus, Claim, ClaimRefused, MembershipStore
from membership_pipeline_tests.storage.conftest import backfill, write_version


def test_first_ever_backfill_goes_running_then_succeeded(store, clock):
    assert store.metadata("env") is None
    held = store.claim("env", "run-1")
    assert isinstance(held, Claim)
    running = store.metadata("env")
    assert running.last_backfill_status is BackfillStatus.RUNNING
    assert running.last_backfill_started_at == clock.now
    assert running.last_backfill_completed_at is None
    assert running.claim_owner == "run-1"
    assert running.claim_lease_expires_at == clock.now + store.lease
    assert running.published_version_id is None

    clock.advance(5)
    publication = write_version(store, held, {"beta": BitMap([1, 2, 3])})
    done = store.metadata("env")
    assert done.last_backfill_status is BackfillStatus.SUCCEEDED
    assert done.last_backfill_completed_at == clock.now
    assert done.published_version_id == publication.version_id
    assert done.published_identity_count == 3
    assert done.published_segment_count == 1
    assert done.claim_lease_expires_at is None


def test_a_refused_claim_mutates_nothing_and_says_why(store, clock):
    held = store.claim("env", "run-1")
    before = store.metadata("env")
    clock.advance(300)  # long after the cooldown, within the lease
    refused = store.claim("env", "run-2")
    assert refused == ClaimRefused("env", "running", None, "run-1", lease_expired=False)
    assert not refused
    assert "claimed by run-1" in refused.describe()
    forced = store.claim("env", "run-3", force=True)
    assert isinstance(forced, ClaimRefused) and forced.reason == "running"
    assert store.metadata("env") == before

    write_version(store, held, {"s": BitMap([1])})
    after_success = store.metadata("env")
    clock.advance(20)
    cooling = store.claim("env", "run-4")
    assert cooling.reason == "cooldown"
    assert cooling.retry_after == timedelta(seconds=40)
    assert store.metadata("env") == after_success


def test_cooldown_counts_from_the_later_of_start_and_completion(store, clock):
    held = store.claim("env", "run-1")
    clock.advance(300)  # a long backfill: started 5 minutes before it completes
    write_version(store, held, {"s": BitMap([1])})
    clock.advance(59)
    assert store.claim("env", "run-2").retry_after == timedelta(seconds=1)
    clock.advance(1)
    assert isinstance(store.claim("env", "run-2"), Claim)


def test_force_skips_the_cooldown_but_never_the_running_guard(store, clock):
    backfill(store, "env", {"s": BitMap([1])})
    clock.advance(1)
    assert store.claim("env", "run-2").reason == "cooldown"
    forced = store.claim("env", "run-2", force=True)
    assert isinstance(forced, Claim)
    assert store.claim("env", "run-3", force=True).reason == "running"


def test_the_cooldown_is_configurable(store_url, clock):
    with MembershipStore(store_url, clock=clock, cooldown=timedelta(seconds=5)) as short:
        backfill(short, "env", {"s": BitMap([1])})
        clock.advance(4)
        assert short.claim("env", "run").reason == "cooldown"
        clock.advance(1)
        assert short.claim("env", "run")


def test_failure_keeps_the_published_version_and_discards_the_shadow(store, clock):
    first = backfill(store, "env", {"s": BitMap([1, 2])})
    clock.advance(120)
    held = store.claim("env", "run-2")
    shadow = store.stage(held, as_of=clock.now)
    shadow.add_universe(BitMap([7]))
    shadow.add_segment("s", None, BitMap([7]))
    shadow.seal(now=clock.now)
    with structlog.testing.capture_logs() as events:
        assert store.fail(held, "source unreachable: connection refused")
    failed = store.metadata("env")
    assert failed.last_backfill_status is BackfillStatus.FAILED
    assert failed.last_backfill_completed_at == clock.now
    assert failed.last_error == "source unreachable: connection refused"
    assert failed.published_version_id == first.version_id
    assert store.reader().count("env", "s") == 2
    assert [e["shadow_versions_discarded"] for e in events if e["event"].endswith("failed")] == [1]
    with pytest.raises(ClaimLost):
        store.publish(held, shadow)
    assert store.reader().count("env", "s") == 2


def test_a_lost_claim_cannot_stage_renew_or_publish(store, clock):
    held = store.claim("env", "run-1")
    shadow = store.stage(held, as_of=clock.now)
    shadow.add_universe(BitMap([1]))
    store.fail(held, "boom")
    with pytest.raises(ClaimLost):
        store.renew_lease(held)
    with pytest.raises(ClaimLost):
        store.stage(held, as_of=clock.now)
    with pytest.raises(ClaimLost, match="discarded"):
        store.publish(held, shadow)
    assert store.metadata("env").published_version_id is None


def test_stale_claims_are_reconciled_by_liveness_then_by_lease(store, clock):
    for env, owner in (("dead", "run-dead"), ("alive", "run-alive"), ("silent", "run-silent")):
        assert store.claim(env, owner)
    liveness = {"run-dead": False, "run-alive": True, "run-silent": None}
    assert [r.environment_key for r in store.reconcile_stale_claims(liveness.get)] == ["dead"]

    clock.advance(store.lease.total_seconds() + 1)
    assert store.claim("silent", "run-x").lease_expired
    reconciled = store.reconcile_stale_claims(liveness.get)
    assert [(r.environment_key, r.reason) for r in reconciled] == [("silent", "lease_expired")]
    assert store.metadata("alive").last_backfill_status is BackfillStatus.RUNNING
    silent = store.metadata("silent")
    assert silent.last_backfill_status is BackfillStatus.FAILED
    assert "lease of run-silent lapsed" in silent.last_error
    assert store.metadata("dead").last_error == "the backfill's owner run-dead is gone"


def test_a_renewed_lease_is_not_reconciled(store, clock):
    held = store.claim("env", "run-1")
    clock.advance(store.lease.total_seconds() - 1)
    store.renew_lease(held)
    clock.advance(2)
    assert store.reconcile_stale_claims() == []
    assert store.metadata("env").last_backfill_status is BackfillStatus.RUNNING


def test_fifty_concurrent_claims_have_exactly_one_winner(store_url):
    contenders = 50
    stores = [MembershipStore(store_url, pool_size=1) for _ in range(contenders)]
    start = threading.Barrier(contenders)
    results: list[Claim | ClaimRefused] = [None] * contenders  # type: ignore[list-item]

    def contend(i: int) -> None:
        start.wait()
        results[i] = stores[i].claim("contested", f"run-{i}")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if isinstance(r, Claim)]
    assert len(winners) == 1
    assert all(r.reason == "running" and r.holder == winners[0].owner for r in results if not r)
    assert stores[0].metadata("contested").claim_owner == winners[0].owner
    for opened in stores:
        opened.close()


def test_each_transition_is_a_structured_event(store, clock):
    with structlog.testing.capture_logs() as events:
        held = store.claim("env", "run-1")
        store.claim("env", "run-2")
        write_version(store, held, {"s": BitMap([1])})
        clock.advance(61)
        store.fail(store.claim("env", "run-3"), "boom")
    assert [(e["event"], e.get("owner")) for e in events] == [
        ("segment_membership.store.claimed", "run-1"),
        ("segment_membership.store.claim_refused", "run-2"),
        ("segment_membership.store.shadow_written", None),
        ("segment_membership.store.published", None),
        ("segment_membership.store.claimed", "run-3"),
        ("segment_membership.store.failed", None),
    ]
    assert all(e["environment"] == "env" for e in events)
    assert events[1]["reason"] == "running"
    assert events[3]["identities"] == 1 and events[3]["publication"] == 1


def test_refusal_looks_ahead_as_the_claim_would_decide(store, clock):
    assert store.refusal("env") is None  # never claimed
    held = store.claim("env", "run-1")
    before = store.metadata("env")
    assert store.refusal("env") == store.claim("env", "run-2")
    write_version(store, held, {"s": BitMap([1])})
    clock.advance(45)
    looked = store.refusal("env")
    assert (looked.reason, looked.retry_after) == ("cooldown", timedelta(seconds=15))
    assert looked == store.claim("env", "run-3")
    clock.advance(15)
    assert store.refusal("env") is None
    assert store.metadata("env").last_backfill_started_at == before.last_backfill_started_at
