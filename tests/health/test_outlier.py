"""
L{heimdall.health.outlier} (passive checks) and L{heimdall.proxy.retry_budget}, in
memory on a task.Clock.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from heimdall.pool.context import RequestContext
from heimdall.errors import NoBackendAvailable
from heimdall.config.health import OutlierConfig
from heimdall.health.outlier import OutlierDetector
from heimdall.pool.pool import BackendPool, is_eligible
from heimdall.pool.values import Backend, Health, Outcome
from heimdall.strategies.registry import default_registry
from heimdall.proxy.retry_budget import RetryBudget


def _setup(n=3, **config):
    clock = Clock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    members = [pool.add(Backend.from_url(f"http://127.0.0.1:{9000 + i}")) for i in range(n)]
    detector = OutlierDetector(pool, OutlierConfig(**config), clock)
    detector.start()
    events = []
    pool.subscribe(lambda e: events.append((clock.seconds(), e.kind, e.backend_id, e.detail)))
    return clock, pool, members, detector, events


def _attempt(pool, member, **outcome):
    pool.lease(member).release(Outcome(**outcome))


def test_one_connect_failure_ejects_at_once():
    clock, pool, [a, b, c], detector, events = _setup()
    _attempt(pool, a, failure="connect")
    assert a.ejected and not is_eligible(a)
    assert a.ejected_until == 30
    assert events == [(0, "ejected", a.id, "1 consecutive connection failures, the last: connect; ejected for 30s")]
    assert {pool.pick(RequestContext()).id for _ in range(6)} == {b.id, c.id}
    # In-flight attempts that fail after the ejection change nothing.
    _attempt(pool, a, failure="connect")
    assert a.ejections_total == 1


def test_a_reset_before_any_response_is_a_connection_failure():
    clock, pool, [a, b, _], detector, events = _setup()
    _attempt(pool, a, failure="reset")  # a fresh connection, closed before any byte: the process is dying
    assert a.ejected
    assert a.ejection_reason == "1 consecutive connection failures, the last: reset before any response; ejected for 30s"
    _attempt(pool, b, failure="reset", status=200)  # broke after the head: a general failure
    assert not b.ejected and b.passive_failures == 1


def test_other_failures_need_n_in_a_row_and_a_response_resets_the_count():
    clock, pool, [a, *_], detector, events = _setup(consecutive_failures=3)
    for kind in ("reset", "timeout"):
        _attempt(pool, a, failure=kind, status=200 if kind == "reset" else None)
    _attempt(pool, a, status=200)
    assert a.passive_failures == 0
    _attempt(pool, a, failure="reset", status=200)
    _attempt(pool, a, failure="timeout")
    _attempt(pool, a, failure="client_gone")  # not the backend's fault
    _attempt(pool, a, failure="body_too_large")
    _attempt(pool, a)  # a stale keep-alive connection: proves nothing
    assert not a.ejected and a.passive_failures == 2
    _attempt(pool, a, failure="bad_response")
    assert a.ejected
    assert events[-1][3] == "3 consecutive failures, the last: bad_response; ejected for 30s"


def test_5xx_counts_only_when_configured():
    clock, pool, [a, b, _], detector, events = _setup(consecutive_failures=2)
    for _ in range(5):
        _attempt(pool, a, status=503)
    assert not a.ejected
    detector.config = OutlierConfig(consecutive_failures=2, count_5xx=True)
    _attempt(pool, b, status=502)
    _attempt(pool, b, status=500)
    assert b.ejected and "HTTP 500" in b.ejection_reason


def test_ejection_backoff_grows_with_repeated_ejections_up_to_the_cap():
    clock, pool, [a, *_], detector, events = _setup(base_ejection_time=10, max_ejection_time=35)
    durations = []
    for _ in range(5):
        _attempt(pool, a, failure="connect")
        assert a.ejected
        durations.append(a.ejected_until - clock.seconds())
        clock.advance(a.ejected_until - clock.seconds())  # the ejection ends by itself
        assert not a.ejected and is_eligible(a)
    assert durations == [10, 20, 30, 35, 35]
    assert [e[1] for e in events].count("returned") == 5
    assert events[-1][3] == "ejection time over"


def test_the_backoff_decays_while_the_backend_behaves():
    clock, pool, [a, *_], detector, events = _setup(base_ejection_time=10, max_ejection_time=300)
    for _ in range(3):
        _attempt(pool, a, failure="connect")
        clock.advance(a.ejected_until - clock.seconds())
    assert detector.ejection_time(a.id) == 40
    clock.advance(25)  # two base times in rotation: two steps back
    assert detector.ejection_time(a.id) == 20
    clock.advance(1000)
    assert detector.ejection_time(a.id) == 10


def test_an_early_return_cancels_the_timer():
    clock, pool, [a, *_], detector, events = _setup()
    _attempt(pool, a, failure="connect")
    pool.uneject(a.id, "2 passed checks: HTTP 200")
    assert not a.ejected and clock.getDelayedCalls() == []
    clock.advance(100)
    assert [e[1] for e in events] == ["ejected", "returned"]


def test_max_ejection_percent_keeps_backends_in_rotation():
    clock, pool, members, detector, events = _setup(n=4, max_ejection_percent=50)
    for member in members:
        _attempt(pool, member, failure="connect")
    assert [m.ejected for m in members] == [True, True, False, False]
    assert detector.refused_total == 2
    # One backend may always be ejected, whatever the percentage.
    clock, pool, members, detector, events = _setup(n=3, max_ejection_percent=10)
    for member in members:
        _attempt(pool, member, failure="connect")
    assert [m.ejected for m in members] == [True, False, False]


def test_removed_backends_and_stop_leave_no_timers():
    clock, pool, [a, b, _], detector, events = _setup()
    _attempt(pool, a, failure="connect")
    pool.remove(a.id)
    assert clock.getDelayedCalls() == []
    _attempt(pool, b, failure="connect")
    detector.stop()
    assert clock.getDelayedCalls() == []
    _attempt(pool, pool.members()[-1], failure="connect")  # no longer watched
    assert not pool.members()[-1].ejected


def test_disabled_detection_does_nothing():
    clock, pool, [a, *_], detector, events = _setup(enabled=False)
    _attempt(pool, a, failure="connect")
    assert not a.ejected


# --- panic mode ----------------------------------------------------------------------


def test_panic_mode_fail_answers_at_once_and_route_uses_every_ready_backend():
    clock, pool, [a, b, c], detector, events = _setup(max_ejection_percent=100)
    from heimdall.pool.values import AdminState

    pool.set_admin(c.id, AdminState.DRAINING)
    _attempt(pool, a, failure="connect")
    pool.set_health(b.id, Health.DOWN, "3 failed checks: connect refused")
    assert pool.eligible() == [] and not pool.in_panic
    assert events[-1][1:] == ("all_down", None, "panic mode fail")
    with pytest.raises(NoBackendAvailable):
        pool.pick(RequestContext())
    pool.panic_mode = "route"
    assert pool.in_panic
    # Down and ejected backends get traffic again; a draining one never does.
    assert {pool.pick(RequestContext()).id for _ in range(6)} == {a.id, b.id}
    pool.set_health(b.id, Health.UP, "2 passed checks: HTTP 200")
    assert not pool.in_panic
    assert {pool.pick(RequestContext()).id for _ in range(6)} == {b.id}
    assert events[-1][1] == "recovered"
    with pytest.raises(ValueError):
        pool.panic_mode = "sometimes"


def test_panic_route_all_down_event_says_so():
    clock, pool, [a], detector, events = _setup(n=1)
    pool.panic_mode = "route"
    _attempt(pool, a, failure="connect")
    assert events[-1][1:] == ("all_down", None, "panic mode route: routing to all 1 ready backends")
    assert pool.pick(RequestContext()) is a


# --- the retry budget ------------------------------------------------------------------


def test_retry_budget_allows_the_minimum_then_a_share_of_live_requests():
    clock = Clock()
    budget = RetryBudget(budget_ratio=0.2, min_retry_concurrency=3, clock=clock)
    for _ in range(3):
        assert budget.can_retry()
        budget.retry_started()
    clock.advance(5)
    assert not budget.can_retry()
    assert budget.exhausted_total == 1 and budget.last_exhausted_at == 5
    for _ in range(25):
        budget.request_started()
    assert budget.allowed() == 5
    assert budget.can_retry()
    budget.retry_started()
    budget.retry_started()
    assert not budget.can_retry()
    budget.retry_finished()
    assert budget.can_retry()
    for _ in range(25):
        budget.request_finished()
    budget.request_finished()  # never below 0
    assert budget.active_requests == 0 and budget.allowed() == 3
    for _ in range(10):
        budget.retry_finished()
    assert budget.active_retries == 0 and budget.retries_total == 5


def test_retry_budget_from_a_live_request_count_and_validation():
    live = [0]
    budget = RetryBudget(budget_ratio=0.5, min_retry_concurrency=0, live_requests=lambda: live[0])
    assert not budget.can_retry()
    assert budget.last_exhausted_at is None  # no clock: not timed
    live[0] = 4
    assert budget.allowed() == 2
    for bad in (dict(budget_ratio=1.5), dict(budget_ratio=True), dict(min_retry_concurrency=-1)):
        with pytest.raises(ValueError):
            RetryBudget(**bad)
