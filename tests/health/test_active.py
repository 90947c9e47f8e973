"""
L{heimdall.health.active}: the active checks, in memory on a task.Clock.
"""

from __future__ import annotations

import random
from typing import List

import pytest
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from heimdall.health.active import HealthProber
from heimdall.health.probes import ProbeOutcome, default_check_factory
from heimdall.config.health import CheckSettings, HealthConfig, parse_health
from heimdall.interfaces import IHealthCheck
from heimdall.pool.pool import BackendPool, is_eligible
from heimdall.pool.values import Backend, Health
from heimdall.strategies.registry import default_registry


class ScriptedCheck:
    """
    A probe whose results the test sets: True/False, "raise", "fail" (a
    failed Deferred), "hang" (never fires).  Records when each probe
    started.
    """

    def __init__(self, clock, result=True) -> None:
        self.clock = clock
        self.result = result
        self.started: List[float] = []
        self.hanging: List[Deferred] = []
        self.cancelled = 0

    def check(self, backend):
        self.started.append(self.clock.seconds())
        result = self.result
        if result == "raise":
            raise RuntimeError("probe bug")
        if result == "fail":
            return defer.fail(error.ConnectionRefusedError())
        if result == "hang":
            def cancel(d):
                self.cancelled += 1

            d = Deferred(cancel)
            self.hanging.append(d)
            return d
        return defer.succeed(ProbeOutcome(bool(result), "HTTP 200" if result else "HTTP 503"))


def _setup(n=1, seed=0, **settings):
    clock = Clock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    members = [pool.add(Backend.from_url(f"http://127.0.0.1:{9000 + i}")) for i in range(n)]
    settings.setdefault("jitter", 0)
    config = HealthConfig(check=CheckSettings(**settings))
    checks = {}

    def factory(s):
        check = ScriptedCheck(clock)
        checks[len(checks)] = check
        return check

    prober = HealthProber(pool, config, clock, factory, random.Random(seed))
    events = []
    pool.subscribe(lambda e: events.append((clock.seconds(), e.kind, e.backend_id, e.detail)))
    return clock, pool, members, prober, checks, events


def _run(clock, seconds, step=1 / 64):
    # Binary-exact steps, so that times add up exactly; a call due at t
    # runs when the clock reaches t (Clock.advance runs what is due at the
    # end of the advance, with the clock already there).
    for _ in range(int(round(seconds / step))):
        clock.advance(step)


def test_first_result_settles_unknown_then_fall_and_rise_with_hysteresis():
    clock, pool, [member], prober, checks, events = _setup(interval=1, down_interval=1, rise=2, fall=3)
    observed = []
    prober.subscribe_checks(lambda backend_id, result: observed.append((backend_id, result.result)))
    prober.start()
    check = checks[0]
    assert member.health is Health.UP  # the first check ran at once and passed
    assert observed == [(member.id, "pass")]
    assert [e[1] for e in events] == ["up"]
    check.result = False
    clock.advance(1)
    clock.advance(1)
    assert member.health is Health.UP and member.check_failures == 2  # fall not reached
    check.result = True
    clock.advance(1)  # one pass resets the failures: hysteresis
    assert member.check_failures == 0 and member.check_successes == 1
    check.result = False
    for _ in range(3):
        clock.advance(1)
    assert member.health is Health.DOWN and not is_eligible(member)
    assert events[-2][1:3] == ("down", member.id)
    assert events[-2][3] == "3 failed checks: HTTP 503"
    check.result = True
    clock.advance(1)
    assert member.health is Health.DOWN  # one pass is not enough
    check.result = False
    clock.advance(1)
    check.result = True
    clock.advance(1)
    assert member.health is Health.DOWN
    clock.advance(1)
    assert member.health is Health.UP and is_eligible(member)
    assert member.last_check.ok and member.last_check.detail == "HTTP 200"
    assert member.last_check.at == clock.seconds()
    prober.stop()
    assert clock.getDelayedCalls() == []


def test_a_first_failure_marks_an_unknown_backend_down():
    clock, pool, [member], prober, checks, events = _setup()
    checks_result = []

    def factory(s):
        check = ScriptedCheck(clock, result=False)
        checks_result.append(check)
        return check

    prober.check_factory = factory
    prober.start()
    assert member.health is Health.DOWN
    prober.stop()


def test_the_down_interval_applies_while_down_and_the_interval_after():
    clock, pool, [member], prober, checks, _ = _setup(interval=5, down_interval=1, rise=2, fall=2)
    prober.start()
    check = checks[0]
    _run(clock, 10)
    assert check.started == [0, 5, 10]
    check.result = False
    _run(clock, 10)  # fails at 15 and 20: down at 20
    assert member.health is Health.DOWN
    _run(clock, 5)
    assert check.started[-6:] == pytest.approx([15, 20, 21, 22, 23, 24, 25][-6:])
    check.result = True
    _run(clock, 2.001)  # passes at 26, 27: up at 27
    assert member.health is Health.UP
    _run(clock, 10)
    assert check.started[-3:] == pytest.approx([27, 32, 37])
    prober.stop()


def test_a_short_interval_is_also_the_down_interval_by_default():
    clock, pool, [member], prober, checks, _ = _setup(interval=0.5, rise=1, fall=1)
    prober.start()
    check = checks[0]
    check.result = False
    _run(clock, 0.5)  # fails at 0.5: down
    assert member.health is Health.DOWN
    _run(clock, 1.5)
    assert check.started == pytest.approx([0, 0.5, 1.0, 1.5, 2.0])  # every 0.5 s, not 1 s
    prober.stop()


def test_jitter_delays_each_check_within_its_bound():
    clock, pool, [member], prober, checks, _ = _setup(seed=3, interval=2, jitter=0.25)
    prober.start()
    step = 1 / 1024
    _run(clock, 200, step=step)
    started = checks[0].started
    assert len(started) >= 90
    for n, at in enumerate(started):
        # Tick n is at 2n; its check waits up to 25% of the interval.
        assert 2 * n <= at <= 2 * n + 0.5 + step
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert min(gaps) >= 1.5 - step and max(gaps) <= 2.5 + step
    assert max(gaps) - min(gaps) > 0.5  # it does vary
    prober.stop()
    assert clock.getDelayedCalls() == []


def test_a_probe_that_raises_or_fails_is_a_result_and_the_loop_goes_on():
    clock, pool, [member], prober, checks, events = _setup(interval=1, fall=2)
    prober.start()
    check = checks[0]
    check.result = "raise"
    clock.advance(1)
    assert member.last_check.ok is False and "probe bug" in member.last_check.detail
    check.result = "fail"
    clock.advance(1)
    assert member.last_check.detail == "connect refused"
    assert member.health is Health.DOWN
    check.result = True
    for _ in range(2):
        clock.advance(1)
    assert member.health is Health.UP
    assert len(check.started) == 5
    assert prober._probes[member.id].loop.running


def test_a_probe_that_hangs_times_out_and_never_overlaps_the_next():
    clock, pool, [member], prober, checks, _ = _setup(interval=1, down_interval=1, timeout=2.5, fall=1)
    prober.start()
    check = checks[0]
    check.result = "hang"
    clock.advance(1)
    assert len(check.started) == 2  # started at 1
    _run(clock, 2.25)
    assert len(check.started) == 2  # still pending: no second probe meanwhile
    _run(clock, 0.25)  # 2.5 s after it started
    assert check.cancelled == 1
    assert member.last_check.detail == "timeout after 2.5s" and member.last_check.latency == pytest.approx(2.5)
    assert member.health is Health.DOWN
    _run(clock, 0.5)  # the missed ticks (at 2 and 3) are skipped; the next is on the grid
    assert check.started[-1] == pytest.approx(4)
    prober.stop()
    assert check.cancelled == 2  # the one in progress
    assert clock.getDelayedCalls() == []


def test_stop_during_the_jitter_delay_leaves_nothing_behind():
    clock, pool, members, prober, checks, _ = _setup(n=3, interval=1, jitter=0.5)
    prober.start()
    clock.advance(0.999)
    prober.stop()
    assert clock.getDelayedCalls() == []
    counts = [len(c.started) for c in checks.values()]
    clock.advance(10)
    assert [len(c.started) for c in checks.values()] == counts


def test_the_prober_follows_membership_and_starts_slow_start_on_runtime_additions():
    clock, pool, [first], prober, checks, _ = _setup(interval=1, slow_start=10)
    pool.set_weight(first.id, 10)
    prober.start()
    assert first.slow_start_began is None  # at start-up: no ramp for anyone
    added = pool.add(Backend.from_url("http://127.0.0.1:9100", weight=10))
    assert len(checks) == 2 and checks[1].started == [0]
    assert added.slow_start_began == 0 and added.weight == 1
    _run(clock, 5)
    assert added.weight == 5
    pool.remove(added.id)
    _run(clock, 3)
    assert len(checks[1].started) == 6  # 0..5, none after the removal
    assert id(added) not in [id(p.member) for p in prober._probes.values()]
    prober.stop()
    pool.stop()
    assert clock.getDelayedCalls() == []


def test_an_ejected_backend_returns_after_rise_passes_started_after_the_ejection():
    clock, pool, [member, other], prober, checks, events = _setup(n=2, interval=5, down_interval=1, rise=2)
    prober.start()
    clock.advance(2)
    pool.eject(member.id, clock.seconds() + 30, "5 consecutive failures")
    # The switch to the down interval happens at once, not at the next tick.
    clock.advance(1)
    assert checks[0].started[-1] == 3
    assert member.ejected
    clock.advance(1)
    assert not member.ejected and is_eligible(member)
    assert events[-1][1:] == ("returned", member.id, "2 passed checks: HTTP 200")
    _run(clock, 4.5)
    assert checks[0].started[-1] == 4  # back to the up interval: next at 9
    _run(clock, 1)
    assert checks[0].started[-1] == 9
    prober.stop()


def test_per_backend_settings_and_none():
    clock = Clock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    a = pool.add(Backend.from_url("http://127.0.0.1:9000"))
    b = pool.add(Backend.from_url("http://127.0.0.1:9001"))
    config = parse_health({"jitter": 0, "interval": "3s", "backends": {"127.0.0.1:9001": {"type": "none"}}})
    built = []
    prober = HealthProber(pool, config, clock, default_check_factory(MemoryReactorClock(), agent=object()))
    prober.check_factory = lambda s: built.append(s) or (ScriptedCheck(clock) if s.type != "none" else None)
    prober.start()
    assert [s.type for s in built] == ["http", "none"]
    assert a.health is Health.UP and b.health is Health.UNKNOWN
    assert prober.settings_for(b.id).interval == 3
    prober.stop()
