"""
Active health checks: L{HealthProber} probes every backend of a pool on its
own schedule and reports through L{BackendPool.set_health} and
L{BackendPool.record_check}.

Per backend:

  - one L{LoopingCall} on the injected clock, ticking every C{interval}
    while the backend is up (or not known yet) and every C{down_interval}
    while it is down or ejected;
  - each tick waits a random delay of up to C{jitter} x the interval (so
    that checks spread out), then runs the probe (an L{IHealthCheck}: HTTP
    or TCP connect, from L{heimdall.health.probes}) with a timeout; a
    LoopingCall never starts a tick while the last one's Deferred is
    pending, so probes of one backend never overlap (a tick that runs late
    skips the ticks it missed);
  - every outcome, a raised exception included, becomes a L{CheckResult}:
    nothing escapes into the LoopingCall, which would stop for good;
  - hysteresis as in HAProxy: C{fall} consecutive failures take an up
    backend down, C{rise} consecutive passes bring a down one up; the very
    first result settles a backend whose health is still unknown (a
    backend is served before its first check, like HAProxy's servers that
    start up);
  - a backend ejected by outlier detection returns early once C{rise}
    checks started after the ejection passed.

The backends come and go with the pool: the prober follows its C{added} and
C{removed} events.
"""

from __future__ import annotations

import random as _random
from typing import Callable, Dict, List, Optional

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from heimdall.config.health import CheckSettings, HealthConfig
from heimdall.health.probes import ProbeOutcome, describe_failure
from heimdall.interfaces import IHealthCheck
from heimdall.pool.pool import BackendPool, Member
from heimdall.pool.values import CheckResult, EventKind, Health, PoolEvent

__all__ = ["HealthProber"]

_log = Logger()

#: The events after which a backend's check interval may change.
_STATE_CHANGES = frozenset({EventKind.UP, EventKind.DOWN, EventKind.EJECTED, EventKind.RETURNED})


# --- the prober -----------------------------------------------------------------


@attrs.define(eq=False)
class _BackendProbe:
    """
    The schedule and counters of one backend's checks.
    """

    prober: "HealthProber"
    member: Member
    settings: CheckSettings
    check: IHealthCheck
    loop: LoopingCall = attrs.field(init=False)
    interval: float = attrs.field(init=False)
    successes: int = 0
    failures: int = 0
    # Passes of checks started after the current ejection began.
    passes_since_ejection: int = 0
    ejection_seen: Optional[float] = None
    pending: Optional[Deferred] = None
    stopped: bool = False

    def __attrs_post_init__(self) -> None:
        self.interval = self.wanted_interval()
        self.loop = LoopingCall(self.tick)
        self.loop.clock = self.prober.clock

    def wanted_interval(self) -> float:
        member = self.member
        if member.health is Health.DOWN or member.ejected:
            return self.settings.effective_down_interval
        return self.settings.interval

    def start(self) -> None:
        # The first check at once (after its jitter): the state settles fast.
        self.loop.start(self.interval, now=True)

    def stop(self) -> None:
        self.stopped = True
        if self.loop.running:
            self.loop.stop()
        if self.pending is not None:
            self.pending.cancel()

    def reschedule(self) -> None:
        """
        Switch between the up and down intervals now if the state changed
        between ticks (an ejection, a transition from elsewhere).
        """
        wanted = self.wanted_interval()
        # During a tick, _tick_done switches when it ends.
        if wanted != self.interval and self.loop.running and self.loop.call is not None:
            self.interval = self.loop.interval = wanted
            self.loop.reset()

    def tick(self) -> Deferred:
        # Whatever happens, the returned Deferred succeeds: a failed one
        # would stop the LoopingCall for good.
        try:
            clock = self.prober.clock
            delay = self.prober.random.uniform(0, self.settings.jitter * self.interval)
            d = deferLater(clock, delay, self.probe) if delay > 0 else self.probe()
        except Exception:
            _log.failure("health check of {backend} could not start", backend=self.member.id)
            return defer.succeed(None)
        self.pending = d
        d.addErrback(self._swallow)
        d.addBoth(self._tick_done)
        return d

    def _swallow(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            _log.failure("health check of {backend} failed unexpectedly", failure, backend=self.member.id)

    def _tick_done(self, _) -> None:
        self.pending = None
        if self.stopped:
            return
        wanted = self.wanted_interval()
        if wanted != self.interval:
            # LoopingCall aligns ticks on a grid from its start time; moving
            # the start time makes the next tick exactly one new interval
            # from now.
            self.interval = self.loop.interval = wanted
            self.loop.starttime = self.prober.clock.seconds()

    def probe(self) -> Deferred:
        clock = self.prober.clock
        started = clock.seconds()
        timeout = self.settings.timeout
        d = maybeDeferred(self.check.check, self.member.backend)
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        timer = clock.callLater(timeout, expire)

        def finished(result) -> None:
            if timer.active():
                timer.cancel()
            if self.stopped:
                return None
            latency = clock.seconds() - started
            if isinstance(result, Failure):
                detail = f"timeout after {timeout:g}s" if timed_out else describe_failure(result)
                outcome = ProbeOutcome(False, detail)
            elif isinstance(result, ProbeOutcome):
                outcome = result
            else:
                outcome = ProbeOutcome(False, f"probe returned {result!r}")
            self.record(started, latency, outcome)
            return None

        return d.addBoth(finished)

    def record(self, started: float, latency: float, outcome: ProbeOutcome) -> None:
        try:
            self._record(started, latency, outcome)
        except Exception:
            _log.failure("recording the health check of {backend} failed", backend=self.member.id)

    def _record(self, started: float, latency: float, outcome: ProbeOutcome) -> None:
        pool = self.prober.pool
        member = self.member
        settings = self.settings
        if outcome.ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        result = CheckResult(started, outcome.ok, latency, outcome.detail)
        pool.record_check(member.id, result, self.successes, self.failures)
        for observer in self.prober._check_observers:
            try:
                observer(member.id, result)
            except Exception:
                _log.failure("check observer {observer!r} failed", observer=observer)
        if member.health is Health.UNKNOWN:
            pool.set_health(member.id, Health.UP if outcome.ok else Health.DOWN, outcome.detail)
        elif member.health is Health.UP and self.failures >= settings.fall:
            pool.set_health(member.id, Health.DOWN, f"{self.failures} failed checks: {outcome.detail}")
        elif member.health is Health.DOWN and self.successes >= settings.rise:
            pool.set_health(member.id, Health.UP, f"{self.successes} passed checks: {outcome.detail}")
        if member.ejected:
            if self.ejection_seen != member.ejected_at:
                self.ejection_seen, self.passes_since_ejection = member.ejected_at, 0
            if not outcome.ok:
                self.passes_since_ejection = 0
            elif started >= member.ejected_at:
                self.passes_since_ejection += 1
                if self.passes_since_ejection >= settings.rise:
                    pool.uneject(member.id, f"{self.passes_since_ejection} passed checks: {outcome.detail}")


@attrs.define(eq=False)
class HealthProber:
    """
    Runs the active checks of every backend in C{pool}.

    @ivar config: the parsed C{health} section (per-backend settings).
    @ivar clock: the L{IReactorTime} that schedules checks and times them.
    @ivar check_factory: builds the L{IHealthCheck} for a backend's
        L{CheckSettings} (L{None}: that backend is not checked); see
        L{default_check_factory}.
    @ivar random: the source of the jitter.
    """

    pool: BackendPool
    config: HealthConfig
    clock: IReactorTime
    check_factory: Callable[[CheckSettings], Optional[IHealthCheck]]
    random: _random.Random = attrs.field(factory=_random.Random)
    _check_observers: List[Callable[[str, CheckResult], None]] = attrs.field(init=False, factory=list)
    _probes: Dict[str, _BackendProbe] = attrs.field(init=False, factory=dict)
    _unsubscribe: Optional[Callable[[], None]] = attrs.field(init=False, default=None)

    def subscribe_checks(self, observer: Callable[[str, CheckResult], None]) -> Callable[[], None]:
        """
        Call C{observer(backend_id, result)} with the L{CheckResult} of
        every check (metrics).  It must not raise (what it raises is
        logged).  Returns a function that unsubscribes.
        """
        self._check_observers.append(observer)
        return lambda: self._check_observers.remove(observer)

    @property
    def running(self) -> bool:
        return self._unsubscribe is not None

    def start(self) -> None:
        """
        Start checking every member, and follow the pool's membership.
        """
        if self.running:
            return
        self._unsubscribe = self.pool.subscribe(self._pool_event)
        for member in self.pool.members():
            self._watch(member, runtime_addition=False)

    def stop(self) -> None:
        """
        Stop every schedule and cancel the checks in progress; no delayed
        call of the prober is left behind.
        """
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        probes, self._probes = self._probes, {}
        for probe in probes.values():
            probe.stop()

    def reconfigure(self, config: HealthConfig) -> None:
        """
        Check with C{config} from now on (a reload): every member's checks
        start again at once with its new settings; the pool keeps each
        member's health.
        """
        self.config = config
        if not self.running:
            return
        probes, self._probes = self._probes, {}
        for probe in probes.values():
            probe.stop()
        for member in self.pool.members():
            self._watch(member, runtime_addition=False)

    def settings_for(self, backend_id: str) -> CheckSettings:
        return self.config.for_backend(backend_id)

    def _watch(self, member: Member, runtime_addition: bool) -> None:
        settings = self.settings_for(member.id)
        if settings.slow_start > 0:
            self.pool.set_slow_start(member.id, settings.slow_start, begin=runtime_addition)
        check = self.check_factory(settings)
        if check is None:
            return
        probe = _BackendProbe(self, member, settings, check)
        self._probes[member.id] = probe
        probe.start()

    def _pool_event(self, event: PoolEvent) -> None:
        if event.backend_id is None:
            return
        kind = event.kind
        if kind is EventKind.ADDED:
            member = self.pool.get(event.backend_id)
            if member is not None and event.backend_id not in self._probes:
                self._watch(member, runtime_addition=True)
        elif kind is EventKind.REMOVED:
            probe = self._probes.pop(event.backend_id, None)
            if probe is not None:
                probe.stop()
        elif kind in _STATE_CHANGES:
            probe = self._probes.get(event.backend_id)
            if probe is not None:
                probe.reschedule()
