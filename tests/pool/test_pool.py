"""
BackendPool: membership, eligibility, events and lease accounting.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from heimdall.pool.context import RequestContext
from heimdall.errors import NoBackendAvailable
from heimdall.pool.pool import BackendPool, is_eligible
from heimdall.pool.values import AdminState, Backend, Health, Outcome
from heimdall.strategies.registry import default_registry


def _pool(n=3):
    clock = Clock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    for i in range(n):
        pool.add(Backend.from_url(f"http://127.0.0.1:{9000 + i}"))
    return pool, clock


def test_backend_from_url_errors():
    for url, problem in [
        ("ftp://x:1", "scheme must be http or https"),
        ("http://:80", "a host is required"),
        ("http://h:99999", "port must be a number from 1 to 65535"),
        ("http://h:1/path", "must not have a path, query or fragment"),
        ("http://u:p@h:1", "user information is not supported"),
    ]:
        with pytest.raises(ValueError, match=problem):
            Backend.from_url(url)
    assert Backend.from_url("https://example.com").port == 443
    assert Backend.from_url("http://[::1]:8080").id == "[::1]:8080"


def test_lease_released_exactly_once_and_counters():
    pool, clock = _pool(1)
    [member] = pool.members()
    lease = pool.lease(member)
    lease2 = pool.lease(member)
    assert member.in_flight == 2
    clock.advance(1)
    lease.release(Outcome(status=200, ttfb=0.1, ttlb=0.2))
    lease.release(Outcome(failure="connect"))  # ignored
    assert member.in_flight == 1
    assert member.requests_total == 1 and member.failures_total == 0
    lease2.release(Outcome(failure="timeout"))
    assert member.in_flight == 0
    assert member.requests_total == 2 and member.failures_total == 1
    assert member.ttfb_avg == pytest.approx(0.1)


def test_client_gone_is_not_a_backend_failure():
    pool, _ = _pool(1)
    [member] = pool.members()
    pool.lease(member).release(Outcome(failure="client_gone"))
    pool.lease(member).release(Outcome(failure="body_too_large"))
    assert member.failures_total == 0


def test_ewma_of_response_times():
    pool, _ = _pool(1)
    [member] = pool.members()
    for ttfb in (1.0, 0.0):
        pool.lease(member).release(Outcome(status=200, ttfb=ttfb, ttlb=ttfb))
    assert member.ttfb_avg == pytest.approx(1.0 - pool.ewma_alpha)


def test_eligibility_predicate_and_strategy_rebuild():
    pool, _ = _pool(3)
    a, b, c = pool.members()
    pool.set_health(a.id, Health.DOWN, "probe failed")
    pool.set_admin(b.id, AdminState.DRAINING)
    assert [m.id for m in pool.eligible()] == [c.id]
    assert {pool.pick(RequestContext()).id for _ in range(5)} == {c.id}
    pool.set_weight(c.id, 0)
    assert not is_eligible(c)
    with pytest.raises(NoBackendAvailable):
        pool.pick(RequestContext())


def test_events_on_transitions_only():
    pool, _ = _pool(2)
    events = []
    unsubscribe = pool.subscribe(events.append)
    a, b = pool.members()
    pool.set_health(a.id, Health.UP)
    pool.set_health(a.id, Health.UP)  # no transition, no event
    pool.set_health(a.id, Health.DOWN, "connect refused")
    pool.set_health(b.id, Health.DOWN, "timeout")
    pool.set_health(b.id, Health.UP)
    pool.remove(a.id)
    assert [(e.kind, e.backend_id) for e in events] == [
        ("up", a.id),
        ("down", a.id),
        ("down", b.id),
        ("all_down", None),
        ("up", b.id),
        ("recovered", None),
        ("removed", a.id),
    ]
    assert events[1].detail == "connect refused"
    unsubscribe()
    pool.set_health(b.id, Health.DOWN)
    assert len(events) == 7


def test_subscriber_errors_do_not_propagate():
    pool, _ = _pool(1)

    def broken(event):
        raise RuntimeError("boom")

    seen = []
    pool.subscribe(broken)
    pool.subscribe(seen.append)
    pool.add(Backend.from_url("http://127.0.0.1:1"))
    assert [e.kind for e in seen] == ["added"]


def test_duplicate_add_and_removed_member_flag():
    pool, _ = _pool(1)
    [member] = pool.members()
    with pytest.raises(KeyError):
        pool.add(member.backend)
    pool.remove(member.id)
    assert member.removed and not is_eligible(member)


def test_outcome_subscribers_see_every_release():
    pool, _ = _pool(1)
    [member] = pool.members()
    seen = []
    unsubscribe = pool.subscribe_outcomes(lambda m, o: seen.append((m, o.failure)))
    pool.subscribe_outcomes(lambda m, o: 1 / 0)  # logged, not raised
    pool.lease(member).release(Outcome(status=200))
    pool.lease(member).release(Outcome(failure="connect"))
    unsubscribe()
    pool.lease(member).release(Outcome(status=200))
    assert seen == [(member, None), (member, "connect")]


# -- operational state written by health checks and outlier detection ---------------


def test_ejection_is_separate_from_health_and_admin():
    pool, clock = _pool(2)
    a, b = pool.members()
    events = []
    pool.subscribe(events.append)
    assert pool.eject(a.id, until=30.0, reason="1 consecutive connect failures")
    assert not pool.eject(a.id, until=60.0, reason="again")  # already ejected
    assert a.ejected and a.health is Health.UNKNOWN and a.admin is AdminState.READY
    assert not is_eligible(a) and is_eligible(a, panic=True)
    pool.set_health(a.id, Health.UP, "HTTP 200")
    assert not is_eligible(a)  # active checks do not overwrite the ejection
    clock.advance(5)
    assert pool.uneject(a.id, "ejection time over")
    assert not pool.uneject(a.id)
    assert is_eligible(a) and a.ejections_total == 1 and a.ejected_until is None
    assert [(e.kind, e.detail) for e in events] == [
        ("ejected", "1 consecutive connect failures"),
        ("up", "HTTP 200"),
        ("returned", "ejection time over"),
    ]
    assert events[1].previous == "unknown"
    pool.set_admin(b.id, AdminState.MAINTENANCE)
    assert not is_eligible(b, panic=True)  # panic never overrides admin state


def test_record_check_and_health_report():
    from heimdall.pool.values import CheckResult

    pool, clock = _pool(1)
    [member] = pool.members()
    pool.record_check(member.id, CheckResult(at=1.0, ok=False, latency=0.25, detail="connect refused"), 0, 2)
    pool.record_check("127.0.0.1:1", CheckResult(at=1.0, ok=True, latency=0.0), 1, 0)  # unknown: ignored
    pool.record_passive_failures(member.id, 3)
    [report] = pool.health_report()
    assert report["last_check"] == {"at": 1.0, "ok": False, "latency": 0.25, "detail": "connect refused"}
    assert report["check_failures"] == 2 and report["check_successes"] == 0
    assert report["passive_failures"] == 3
    assert report["eligible"] is True and report["health"] == "unknown"
    import json

    json.dumps(report)  # JSON-ready


def test_slow_start_ramps_the_effective_weight_and_rebuilds_in_steps():
    clock = __import__("twisted.internet.task", fromlist=["Clock"]).Clock()
    rebuilt = []

    class Recording:
        def rebuild(self, members):
            rebuilt.append({m.id: m.weight for m in members})

        def pick(self, context, avoid=()):
            raise NotImplementedError

    pool = BackendPool(Recording(), clock=clock, slow_start_step=2.0)
    a = pool.add(Backend.from_url("http://127.0.0.1:9000", weight=100))
    b = pool.add(Backend.from_url("http://127.0.0.1:9001", weight=100))
    pool.set_slow_start(a.id, 10.0)
    assert a.weight == 100 and a.slow_start_began is None  # no ramp until a recovery
    pool.set_health(a.id, Health.DOWN, "down")
    pool.set_health(a.id, Health.UP, "up again")
    assert a.backend.weight == 100 and a.weight == 10  # starts at 10%
    rebuilt.clear()
    weights = []
    for _ in range(6):
        clock.advance(2.0)
        weights.append(a.weight)
    assert weights == [20, 40, 60, 80, 100, 100]
    assert [r[a.id] for r in rebuilt] == [20, 40, 60, 80, 100]  # one rebuild per step, none when flat
    assert all(r[b.id] == 100 for r in rebuilt)
    assert a.slow_start_began is None and clock.getDelayedCalls() == []  # the ramp timer stops
    # Returning from an ejection ramps too; a runtime addition on request.
    pool.eject(a.id, until=5.0, reason="x")
    pool.uneject(a.id, "ejection time over")
    assert a.weight == 10
    pool.set_slow_start(b.id, 4.0, begin=True)
    assert b.weight == 10
    pool.stop()
    assert a.weight == 100 and b.weight == 100 and clock.getDelayedCalls() == []
    pool.set_weight(b.id, 0)
    assert b.weight == 0


def test_in_flight_total_follows_leases_and_rebuilds():
    pool, _ = _pool(3)
    a, b, c = pool.members()
    leases = [pool.lease(a), pool.lease(a), pool.lease(b)]
    assert pool.in_flight_total() == 3
    pool.set_admin(a.id, AdminState.DRAINING)  # a leaves the routable set
    assert pool.in_flight_total() == 1
    leases[0].release(Outcome(status=200))
    assert pool.in_flight_total() == 1
    pool.set_admin(a.id, AdminState.READY)
    assert pool.in_flight_total() == 2
    for lease in leases:
        lease.release(Outcome(status=200))
    assert pool.in_flight_total() == 0


def test_bounded_load_hash_strategy_gets_the_pool_total():
    from heimdall.interfaces import IInFlightAware

    clock = Clock()
    strategy = default_registry().create("url_hash", {"balance_factor": 1.25}, random.Random(0), clock)
    assert IInFlightAware.providedBy(strategy)
    pool = BackendPool(strategy, clock=clock)
    assert strategy.in_flight_total == pool.in_flight_total


def test_response_observer_follows_the_strategy():
    # The proxy asks the pool, not the strategy's interfaces, per response.
    pool, clock = _pool()
    registry = default_registry()
    assert pool.response_observer is None
    sticky = registry.create("sticky_round_robin", {}, random.Random(0), clock)
    pool.set_strategy(sticky)
    assert pool.response_observer is sticky
    pool.set_strategy(registry.create("round_robin", {}, random.Random(0), clock))
    assert pool.response_observer is None
