"""
Passive health checks: L{OutlierDetector} counts the failures the proxy
sees (per attempt, through L{BackendPool.subscribe_outcomes}) and ejects a
backend that fails too often in a row, as Envoy's outlier detection does.

What counts, per attempt outcome:

  - connection failures: C{connect} errors (refused, timed out), and a
    C{reset} before any byte of a response (on a fresh connection: the
    proxy reports a reused keep-alive connection closed under it as no
    failure).  They have their own consecutive counter, which ejects at
    C{consecutive_connection_failures} (default 1: nothing serves on that
    port, or the process is dying, and every further attempt there costs a
    retry; a backend ejected wrongly is back after C{rise} active checks);
  - C{reset} after the response began, C{timeout}, C{bad_response}, and
    5xx statuses when C{count_5xx} is set: the general counter, which
    ejects at C{consecutive_failures} (connection failures count there
    too);
  - any other response resets both counters;
  - C{client_gone} and C{body_too_large} are not the backend's fault, and
    an attempt with neither a status nor a failure (a pooled keep-alive
    connection the backend had just closed, which the proxy retries) proves
    nothing: neither counts.

An ejection lasts C{base_ejection_time} times the backend's ejection
multiplier (1 for the first, +1 for each ejection soon after the last,
decaying by 1 for every C{base_ejection_time} spent in rotation), capped at
C{max_ejection_time}.  It ends when that time is over, or earlier when the
active checks pass C{rise} times (L{heimdall.health.active.HealthProber} does
that).  C{max_ejection_percent} caps the share of the pool ejected at once;
one backend may always be ejected (as in Envoy).

The ejection is its own flag on the member (L{BackendPool.eject}), separate
from the active checks' health and from admin state; L{is_eligible} looks
at all three.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from heimdall.config.health import OutlierConfig
from heimdall.pool.pool import BackendPool, Member
from heimdall.pool.values import BACKEND_FAILURES, EventKind, FailureKind, Outcome, PoolEvent

__all__ = ["OutlierDetector"]

_log = Logger()

_RESET_BEFORE_RESPONSE = "reset before any response"
#: The failures that say the backend does not take connections.
_CONNECTION_FAILURES = frozenset({FailureKind.CONNECT.value, _RESET_BEFORE_RESPONSE})

@attrs.define(eq=False)
class _OutlierState:
    failures: int = 0
    connection_failures: int = 0
    multiplier: int = 0
    returned_at: Optional[float] = None
    timer: Optional[IDelayedCall] = None
    last_failure: str = ""


@attrs.define(eq=False)
class OutlierDetector:
    """
    Ejects backends that fail while proxying.

    @ivar pool: the pool whose outcomes it watches and whose members it
        ejects.
    @ivar config: the C{health.outlier} settings.
    @ivar clock: schedules the ends of ejections.
    """

    pool: BackendPool
    config: OutlierConfig
    clock: IReactorTime
    _states: Dict[str, _OutlierState] = attrs.field(init=False, factory=dict)
    _unsubscribe: List[Callable[[], None]] = attrs.field(init=False, factory=list)
    #: Ejections refused because of max_ejection_percent.
    refused_total: int = attrs.field(init=False, default=0)

    @property
    def running(self) -> bool:
        return bool(self._unsubscribe)

    def start(self) -> None:
        if self.running or not self.config.enabled:
            return
        self._unsubscribe = [
            self.pool.subscribe_outcomes(self.observe),
            self.pool.subscribe(self._pool_event),
        ]

    def stop(self) -> None:
        """
        Stop watching and cancel the ejection timers (members stay as they
        are: this is for shutdown).
        """
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for state in self._states.values():
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            state.timer = None

    def reconfigure(self, config: OutlierConfig, running: bool) -> None:
        """
        Use C{config} from now on (a reload); C{running}: whether its
        health service runs.  Ejections in force end as they were scheduled.
        """
        self.config = config
        if not config.enabled:
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            self._unsubscribe = []
        elif running:
            self.start()

    def ejection_time(self, backend_id: str) -> float:
        """
        How long the next ejection of C{backend_id} would last if it
        happened now.
        """
        state = self._states.get(backend_id) or _OutlierState()
        return self._duration(self._next_multiplier(state))

    # -- outcomes (the data path: cheap, never raises) --------------------------

    def observe(self, member: Member, outcome: Outcome) -> None:
        failure = outcome.failure
        if failure is None:
            status = outcome.status
            if status is None:
                return  # a stale keep-alive connection: proves nothing
            if not (self.config.count_5xx and status >= 500):
                state = self._states.get(member.id)
                if state is not None and (state.failures or state.connection_failures):
                    state.failures = state.connection_failures = 0
                    self.pool.record_passive_failures(member.id, 0)
                return
            kind = f"HTTP {status}"
        elif failure in BACKEND_FAILURES:
            kind = str(failure)
            if failure == FailureKind.RESET and outcome.status is None:
                kind = _RESET_BEFORE_RESPONSE
        else:
            return
        state = self._states.get(member.id)
        if state is None:
            state = self._states[member.id] = _OutlierState()
        state.failures += 1
        connection = kind in _CONNECTION_FAILURES
        state.connection_failures = state.connection_failures + 1 if connection else 0
        state.last_failure = kind
        self.pool.record_passive_failures(member.id, state.failures)
        if member.ejected or member.removed:
            return
        config = self.config
        if connection and state.connection_failures >= config.consecutive_connection_failures:
            reason = f"{state.connection_failures} consecutive connection failures, the last: {kind}"
        elif state.failures >= config.consecutive_failures:
            reason = f"{state.failures} consecutive failures, the last: {kind}"
        else:
            return
        self._eject(member, state, reason)

    def _eject(self, member: Member, state: _OutlierState, reason: str) -> None:
        members = [m for m in self.pool.members() if not m.removed]
        ejected = sum(1 for m in members if m.ejected)
        if ejected and (ejected + 1) * 100 > self.config.max_ejection_percent * len(members):
            self.refused_total += 1
            _log.warn(
                "not ejecting {backend} ({reason}): {ejected} of {total} backends are ejected already "
                "(max_ejection_percent {percent})",
                backend=member.id,
                reason=reason,
                ejected=ejected,
                total=len(members),
                percent=self.config.max_ejection_percent,
            )
            return
        state.multiplier = self._next_multiplier(state)
        duration = self._duration(state.multiplier)
        now = self.clock.seconds()
        if self.pool.eject(member.id, now + duration, f"{reason}; ejected for {duration:g}s"):
            state.timer = self.clock.callLater(duration, self._expire, member.id)

    def _next_multiplier(self, state: _OutlierState) -> int:
        multiplier = state.multiplier
        if state.returned_at is not None and multiplier:
            # One step back for every base time spent in rotation since.
            calm = self.clock.seconds() - state.returned_at
            multiplier = max(0, multiplier - int(calm // self.config.base_ejection_time))
        ceiling = math.ceil(self.config.max_ejection_time / self.config.base_ejection_time)
        return min(multiplier + 1, ceiling)

    def _duration(self, multiplier: int) -> float:
        return min(self.config.base_ejection_time * multiplier, self.config.max_ejection_time)

    def _expire(self, backend_id: str) -> None:
        state = self._states.get(backend_id)
        if state is not None:
            state.timer = None
        self.pool.uneject(backend_id, "ejection time over")

    # -- pool events ------------------------------------------------------------------

    def _pool_event(self, event: PoolEvent) -> None:
        if event.backend_id is None:
            return
        if event.kind is EventKind.RETURNED:
            state = self._states.get(event.backend_id)
            if state is not None:
                if state.timer is not None and state.timer.active():
                    state.timer.cancel()
                state.timer = None
                state.returned_at = event.at
                state.failures = state.connection_failures = 0
        elif event.kind is EventKind.REMOVED:
            state = self._states.pop(event.backend_id, None)
            if state is not None and state.timer is not None and state.timer.active():
                state.timer.cancel()
