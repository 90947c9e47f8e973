"""
BackendPool: membership, eligibility, events and lease accounting.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from heimdall.context import RequestContext
from heimdall.errors import NoBackendAvailable
from heimdall.pool import AdminState, Backend, BackendPool, Health, Outcome, is_eligible
from heimdall.registry import default_registry


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
