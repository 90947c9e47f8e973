"""
The backend pool: membership, admin and operational state, live counters.

The pool is the single owner of what is known about each backend.  Who may
write what:

  - membership, weight and admin state (ready, draining, maintenance):
    the config at start-up and the manager at runtime;
  - operational state, only health checks and outlier detection: the
    active health (unknown, up, down) through L{BackendPool.set_health},
    the last check's details through L{BackendPool.record_check}, and the
    ejection by outlier detection through L{BackendPool.eject} and
    L{BackendPool.uneject} (a flag separate from the health, as in Envoy,
    so that neither check overwrites the other's verdict);
  - live counters: only leases (L{BackendPool.lease} / L{Lease.release}).

One predicate, L{is_eligible}, says who may get new requests.  Whenever its
answer may change, the pool rebuilds the strategy with the eligible members
and emits a L{PoolEvent} to its subscribers.

Of the eligible members the strategy sees the I{tier} in use: the
non-backup ones, or the backups when no other member is eligible (HAProxy's
and nginx's C{backup}); and of that tier only the members with a free slot
(in flight below their C{max_connections}, 0 being no limit).  A member
that fills or frees its last slot changes that set at once.  When the tier
has members but none has a free slot, L{BackendPool.pick} raises
L{BackendsBusy} (a request queue waits for L{BackendPool.has_free_slot});
with an empty tier, L{NoBackendAvailable}.

Panic mode (L{BackendPool.panic_mode}): when no member is eligible, C{"fail"}
(the default) makes L{BackendPool.pick} raise at once (the proxy answers
503 without waiting for a connect timeout); C{"route"} picks among every
member that is only operationally unavailable (down or ejected, but ready,
weighted and not removed), as Envoy does below its panic threshold.

Slow start: a member with a slow-start window that recovers (down to up,
returned from ejection, back to ready) or is added at runtime gets an
effective L{Member.weight} that ramps from 10% of its configured weight to
all of it over the window; the pool rebuilds the strategy in steps while
any ramp runs.  C{member.backend.weight} stays the configured weight.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Collection, Dict, List, Optional

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from heimdall.clock import maybe_global_reactor
from heimdall.errors import BackendsBusy, NoBackendAvailable
from heimdall.interfaces import IInFlightAware, ILoadAware, IResponseObserver, IStrategy
from heimdall.pool.context import RequestContext
from heimdall.pool.values import AdminState, Backend, CheckResult, EventKind, Health, Outcome, PoolEvent

__all__ = ["BackendPool", "Lease", "Member", "PANIC_MODES", "is_eligible"]

_log = Logger()


#: The values of L{BackendPool.panic_mode}.
PANIC_MODES = ("fail", "route")

#: An effective weight during slow start never starts below this fraction
#: of the configured weight (Envoy's min_weight_percent default).
SLOW_START_MIN_FRACTION = 0.1


@attrs.define(eq=False)
class Member:
    """
    A backend in a pool, with its state and live counters.  Strategies read
    these; only the pool writes them.

    @ivar last_check: the last active check's L{CheckResult}, if any.
    @ivar check_successes: consecutive passed active checks.
    @ivar check_failures: consecutive failed active checks.
    @ivar passive_failures: consecutive failures seen while proxying, as
        counted by outlier detection.
    @ivar ejected_at: when outlier detection ejected it, None if it is not
        ejected.
    @ivar ejected_until: when that ejection ends at the latest.
    @ivar ejections_total: how many times it was ejected.
    @ivar slow_start_window: seconds its weight ramps up over after a
        recovery (0: no slow start).
    @ivar slow_start_began: when the current ramp began, None if none runs.
    """

    backend: Backend
    added_at: float
    admin: AdminState = AdminState.READY
    health: Health = Health.UNKNOWN
    health_reason: str = ""
    in_flight: int = 0
    requests_total: int = 0
    failures_total: int = 0
    ttfb_avg: Optional[float] = None
    ttlb_avg: Optional[float] = None
    last_used_at: Optional[float] = None
    removed: bool = False
    last_check: Optional[CheckResult] = None
    check_successes: int = 0
    check_failures: int = 0
    passive_failures: int = 0
    ejected_at: Optional[float] = None
    ejected_until: Optional[float] = None
    ejection_reason: str = ""
    ejections_total: int = 0
    slow_start_window: float = 0.0
    slow_start_began: Optional[float] = None
    #: Gets requests only while no non-backup member is eligible.
    backup: bool = False
    #: Requests in flight it may have at most (0: no limit).
    max_connections: int = 0
    #: Added by a reload with health checks on: no traffic until its first
    #: active check has a result (nginx's "checking" state).
    checking: bool = False
    # The pool's clock, for the effective weight during slow start.
    _clock: Optional[IReactorTime] = attrs.field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.backend.id

    @property
    def ejected(self) -> bool:
        return self.ejected_at is not None

    @property
    def has_free_slot(self) -> bool:
        return not self.max_connections or self.in_flight < self.max_connections

    @property
    def weight(self) -> int:
        """
        The effective weight: the configured C{backend.weight}, or less
        while a slow-start ramp runs (at least 1 when the configured weight
        is above 0; integer, since strategies build rings and heaps on it).
        """
        configured = self.backend.weight
        began = self.slow_start_began
        if began is None or configured == 0 or self._clock is None or self.slow_start_window <= 0:
            return configured
        elapsed = self._clock.seconds() - began
        if elapsed >= self.slow_start_window:
            return configured
        fraction = max(SLOW_START_MIN_FRACTION, elapsed / self.slow_start_window)
        return max(1, min(configured, math.ceil(configured * fraction)))

    def health_details(self) -> Dict[str, Any]:
        """
        Everything known about this member's state, as plain JSON-ready
        data, for the manager API and metrics.
        """
        return {
            "id": self.id,
            "url": self.backend.url,
            "eligible": is_eligible(self),
            "admin": self.admin.value,
            "health": self.health.value,
            "health_reason": self.health_reason,
            "last_check": self.last_check.as_dict() if self.last_check is not None else None,
            "check_successes": self.check_successes,
            "check_failures": self.check_failures,
            "passive_failures": self.passive_failures,
            "ejected": self.ejected,
            "ejected_at": self.ejected_at,
            "ejected_until": self.ejected_until,
            "ejection_reason": self.ejection_reason,
            "ejections_total": self.ejections_total,
            "weight": self.backend.weight,
            "effective_weight": self.weight,
            "slow_start_began": self.slow_start_began,
            "slow_start_window": self.slow_start_window,
            "backup": self.backup,
            "max_connections": self.max_connections,
            "checking": self.checking,
            "in_flight": self.in_flight,
            "requests_total": self.requests_total,
            "failures_total": self.failures_total,
        }


def is_eligible(member: Member, *, panic: bool = False) -> bool:
    """
    The one predicate that says whether C{member} may get new requests:
    weight above 0, admin state ready, not removed, not known to be down,
    not ejected and not waiting for its first check (L{Member.checking}).
    A backend whose health is still unknown is otherwise eligible (as in
    HAProxy, where a server starts UP): a fresh pool serves at once.

    With C{panic=True} (panic mode "route", when no member is eligible) the
    operational state (down, ejected) is ignored; admin state and weight
    still count: a drained backend never gets traffic.
    """
    if member.backend.weight <= 0 or member.admin is not AdminState.READY or member.removed:
        return False
    if panic:
        return True
    return member.health is not Health.DOWN and member.ejected_at is None and not member.checking


@attrs.define(eq=False)
class Lease:
    """
    One proxied request's hold on a member: taken by L{BackendPool.lease},
    given back exactly once by L{release}.
    """

    _pool: "BackendPool"
    member: Member
    started_at: float
    released: bool = False

    def release(self, outcome: Outcome) -> None:
        """
        Give the lease back and record C{outcome}.  A second call does
        nothing, so every error path may call it safely.
        """
        if self.released:
            return
        self.released = True
        self._pool._released(self, outcome)


@attrs.define(eq=False)
class BackendPool:
    """
    The backends heimdall balances over.
    """

    strategy: IStrategy
    clock: IReactorTime = attrs.field(default=None)
    ewma_alpha: float = 0.3
    # "fail" or "route": see the panic_mode property.
    _panic_mode: str = attrs.field(default="fail", validator=attrs.validators.in_(PANIC_MODES))
    #: Seconds between strategy rebuilds while a slow-start ramp runs.
    slow_start_step: float = 1.0
    _members: Dict[str, Member] = attrs.field(init=False, factory=dict)
    _subscribers: List[Callable[[PoolEvent], None]] = attrs.field(init=False, factory=list)
    _outcome_subscribers: List[Callable[[Member, Outcome], None]] = attrs.field(init=False, factory=list)
    _eligible: List[Member] = attrs.field(init=False, factory=list)
    # What the strategy picks from: the eligible members, or in panic
    # mode "route" with none eligible, every ready member.
    _routable: List[Member] = attrs.field(init=False, factory=list)
    # Requests in flight on the routable members, kept in O(1) per lease
    # for strategies that provide IInFlightAware (bounded-load hashing).
    _routable_set: frozenset = attrs.field(init=False, default=frozenset())
    _routable_in_flight: int = attrs.field(init=False, default=0)
    # The tier in use (see the module docstring), and whether any of its
    # members has a connection limit.
    _tier: List[Member] = attrs.field(init=False, factory=list)
    _tier_limited: bool = attrs.field(init=False, default=False)
    # The strategy, if it provides ILoadAware (told of every change).
    _load_aware: Optional[Any] = attrs.field(init=False, default=None)
    #: The strategy, if it provides IResponseObserver (the proxy tells it
    #: of every response head); found once per strategy, not per response.
    response_observer: Optional[Any] = attrs.field(init=False, default=None)
    _ramp: Optional[LoopingCall] = attrs.field(init=False, default=None)
    _ramp_weights: tuple = attrs.field(init=False, default=())

    def __attrs_post_init__(self) -> None:
        self.clock = maybe_global_reactor(self.clock)
        self._attach(self.strategy)
        self.strategy.rebuild([])

    def _attach(self, strategy: IStrategy) -> None:
        if IInFlightAware.providedBy(strategy):
            strategy.attach_in_flight_total(self.in_flight_total)
        self._load_aware = strategy if ILoadAware.providedBy(strategy) else None
        self.response_observer = strategy if IResponseObserver.providedBy(strategy) else None

    def in_flight_total(self) -> int:
        """
        Requests in flight on the members the strategy picks from.
        """
        return self._routable_in_flight

    @property
    def panic_mode(self) -> str:
        """
        What L{pick} does when no member is eligible: C{"fail"} raises
        L{NoBackendAvailable} (the proxy answers 503 at once), C{"route"}
        picks among every member that is only operationally unavailable.
        Settable at runtime.
        """
        return self._panic_mode

    @panic_mode.setter
    def panic_mode(self, mode: str) -> None:
        if mode not in PANIC_MODES:
            raise ValueError(f"panic_mode must be one of {', '.join(PANIC_MODES)}, not {mode!r}")
        self._panic_mode = mode
        self._changed(None)

    @property
    def in_panic(self) -> bool:
        """
        Whether requests are being routed to unavailable members (panic
        mode "route" with no member eligible).
        """
        return not self._eligible and bool(self._tier)

    @property
    def has_free_slot(self) -> bool:
        """
        Whether L{pick} would find a member now.
        """
        return bool(self._routable)

    # -- reading -------------------------------------------------------

    def members(self) -> List[Member]:
        return list(self._members.values())

    def eligible(self) -> List[Member]:
        return list(self._eligible)

    def get(self, backend_id: str) -> Optional[Member]:
        return self._members.get(backend_id)

    def __len__(self) -> int:
        return len(self._members)

    # -- membership, weight, admin (config and manager) ---------------------

    def add(
        self, backend: Backend, admin: AdminState = AdminState.READY, backup: bool = False, max_connections: int = 0,
        checking: bool = False,
    ) -> Member:
        """
        Add C{backend}.  With C{checking} it gets no request until its first
        active check has a result (L{set_health} from unknown).
        """
        if backend.id in self._members:
            raise KeyError(f"backend {backend.id} is already in the pool")
        member = Member(
            backend=backend, added_at=self.clock.seconds(), admin=admin, clock=self.clock, backup=backup,
            max_connections=max_connections, checking=checking,
        )
        self._members[backend.id] = member
        self._changed(PoolEvent(EventKind.ADDED, backend.id, self.clock.seconds(), backend.url))
        return member

    def remove(self, backend_id: str) -> Member:
        member = self._members.pop(backend_id)
        member.removed = True
        member.slow_start_began = None
        self._changed(PoolEvent(EventKind.REMOVED, backend_id, self.clock.seconds()))
        return member

    def set_weight(self, backend_id: str, weight: int) -> Member:
        member = self._members[backend_id]
        member.backend = attrs.evolve(member.backend, weight=weight)
        self._changed(PoolEvent(EventKind.WEIGHT, backend_id, self.clock.seconds(), str(weight)))
        return member

    def set_admin(self, backend_id: str, admin: AdminState) -> Member:
        member = self._members[backend_id]
        was_ready = member.admin is AdminState.READY
        member.admin = admin
        if admin is AdminState.READY and not was_ready:
            self._begin_ramp(member)
        self._changed(PoolEvent(EventKind.ADMIN, backend_id, self.clock.seconds(), admin.value))
        return member

    def set_backup(self, backend_id: str, backup: bool) -> Member:
        member = self._members[backend_id]
        member.backup = backup
        self._changed(PoolEvent(EventKind.BACKUP, backend_id, self.clock.seconds(), "backup" if backup else "primary"))
        return member

    def set_max_connections(self, backend_id: str, limit: int) -> Member:
        member = self._members[backend_id]
        member.max_connections = limit
        self._changed(PoolEvent(EventKind.LIMIT, backend_id, self.clock.seconds(), str(limit)))
        return member

    def set_strategy(self, strategy: IStrategy) -> None:
        self.strategy = strategy
        self._attach(strategy)
        self.strategy.rebuild(list(self._routable))

    # -- operational state (health checks and outlier detection only) ------

    def set_health(self, backend_id: str, health: Health, reason: str = "") -> None:
        """
        The narrow channel through which health checks and outlier
        detection report.  Emits C{up}/C{down} only on a real transition.
        """
        member = self._members.get(backend_id)
        if member is None:
            return
        member.health_reason = reason
        checked = member.checking and health is not Health.UNKNOWN
        if checked:
            member.checking = False
        if member.health is health:
            if checked:
                self._changed(None)
            return
        previous, member.health = member.health, health
        if previous is Health.DOWN and health is Health.UP:
            self._begin_ramp(member)
        if health is not Health.UNKNOWN:
            self._changed(PoolEvent(EventKind(health.value), backend_id, self.clock.seconds(), reason, previous.value))
        else:
            self._changed(None)

    def record_check(self, backend_id: str, result: CheckResult, successes: int, failures: int) -> None:
        """
        Keep an active check's result and the consecutive counters on the
        member (no event: L{set_health} reports transitions).
        """
        member = self._members.get(backend_id)
        if member is None:
            return
        member.last_check = result
        member.check_successes = successes
        member.check_failures = failures

    def record_passive_failures(self, backend_id: str, consecutive: int) -> None:
        """
        Keep outlier detection's count of consecutive failures seen while
        proxying (no event).
        """
        member = self._members.get(backend_id)
        if member is not None:
            member.passive_failures = consecutive

    def eject(self, backend_id: str, until: float, reason: str) -> bool:
        """
        Outlier detection takes C{backend_id} out of rotation until C{until}
        (or until L{uneject}).  Emits C{ejected}.  Returns False (and does
        nothing) if it is unknown or already ejected.
        """
        member = self._members.get(backend_id)
        if member is None or member.ejected:
            return False
        member.ejected_at = self.clock.seconds()
        member.ejected_until = until
        member.ejection_reason = reason
        member.ejections_total += 1
        self._changed(PoolEvent(EventKind.EJECTED, backend_id, member.ejected_at, reason))
        return True

    def uneject(self, backend_id: str, reason: str = "") -> bool:
        """
        End an ejection (its time is over, or active checks passed).  Emits
        C{returned}.  Returns False if it was not ejected.
        """
        member = self._members.get(backend_id)
        if member is None or not member.ejected:
            return False
        member.ejected_at = member.ejected_until = None
        member.ejection_reason = ""
        member.passive_failures = 0
        self._begin_ramp(member)
        self._changed(PoolEvent(EventKind.RETURNED, backend_id, self.clock.seconds(), reason))
        return True

    # -- slow start --------------------------------------------------------------

    def set_slow_start(self, backend_id: str, window: float, begin: bool = False) -> None:
        """
        Give C{backend_id} a slow-start window (0: none).  With C{begin},
        start a ramp now (a backend added at runtime).
        """
        member = self._members.get(backend_id)
        if member is None:
            return
        member.slow_start_window = max(0.0, float(window))
        if window <= 0:
            member.slow_start_began = None
        elif begin:
            self._begin_ramp(member)
        self._changed(None)

    def _begin_ramp(self, member: Member) -> None:
        if member.slow_start_window <= 0:
            return
        member.slow_start_began = self.clock.seconds()
        if self._ramp is None:
            self._ramp = LoopingCall(self._ramp_step)
            self._ramp.clock = self.clock
            self._ramp.start(self.slow_start_step, now=False)

    def _ramp_step(self) -> None:
        # Never raises: a LoopingCall that raises stops for good.
        try:
            now = self.clock.seconds()
            ramping = False
            for member in self._members.values():
                began = member.slow_start_began
                if began is not None and now - began >= member.slow_start_window:
                    member.slow_start_began = None
                ramping = ramping or member.slow_start_began is not None
            weights = tuple(m.weight for m in self._routable)
            if weights != self._ramp_weights:
                self._changed(None)
            if not ramping and self._ramp is not None:
                self._ramp.stop()
                self._ramp = None
        except Exception:
            _log.failure("slow-start step failed")

    def stop(self) -> None:
        """
        Stop the slow-start timer (at shutdown); ramps end at once.
        """
        for member in self._members.values():
            member.slow_start_began = None
        if self._ramp is not None:
            self._ramp.stop()
            self._ramp = None

    # -- reading health -----------------------------------------------------------

    def health_report(self) -> List[Dict[str, Any]]:
        """
        L{Member.health_details} of every member, in the order they were
        added: the Python API behind the manager's and metrics' views.
        """
        return [member.health_details() for member in self._members.values()]

    # -- events ------------------------------------------------------------

    def subscribe(self, subscriber: Callable[[PoolEvent], None]) -> Callable[[], None]:
        """
        Call C{subscriber} with every L{PoolEvent}.  Returns a function that
        unsubscribes.  A subscriber that raises is logged, never propagated.
        """
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def subscribe_outcomes(self, subscriber: Callable[[Member, Outcome], None]) -> Callable[[], None]:
        """
        Call C{subscriber(member, outcome)} for every released lease: each
        attempt's result, as passive health checks and metrics need it.
        Runs on the data path: it must be cheap and must not raise (what it
        raises is logged).  Returns a function that unsubscribes.
        """
        self._outcome_subscribers.append(subscriber)
        return lambda: self._outcome_subscribers.remove(subscriber)

    def _emit(self, event: PoolEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                _log.failure("pool event subscriber {subscriber!r} failed", subscriber=subscriber)

    def _changed(self, event: Optional[PoolEvent]) -> None:
        had_eligible = bool(self._eligible)
        members = self._members.values()
        self._eligible = [m for m in members if is_eligible(m)]
        if self._eligible or self._panic_mode == "fail":
            tier = [m for m in self._eligible if not m.backup] or self._eligible
        else:
            tier = [m for m in members if is_eligible(m, panic=True)]
        self._tier = tier
        self._tier_limited = any(m.max_connections for m in tier)
        self._refresh_routable()
        if event is not None:
            self._emit(event)
        if had_eligible and not self._eligible and self._members:
            detail = f"panic mode {self._panic_mode}"
            if self._tier:
                detail += f": routing to all {len(self._tier)} ready backends"
            self._emit(PoolEvent(EventKind.ALL_DOWN, None, self.clock.seconds(), detail))
        elif not had_eligible and self._eligible and event is not None and event.kind is not EventKind.ADDED:
            self._emit(PoolEvent(EventKind.RECOVERED, None, self.clock.seconds()))

    def _refresh_routable(self) -> None:
        tier = self._tier
        routable = [m for m in tier if m.has_free_slot] if self._tier_limited else list(tier)
        self._routable = routable
        self._ramp_weights = tuple(m.weight for m in routable)
        self._routable_set = frozenset(routable)
        self._routable_in_flight = sum(m.in_flight for m in routable)
        self.strategy.rebuild(list(routable))

    # -- the data path -------------------------------------------------------

    def pick(self, context: RequestContext, avoid: Collection[Member] = ()) -> Member:
        """
        Ask the strategy for a member of the tier in use with a free slot
        (or in panic mode C{"route"} with none eligible, any ready one).
        @raise BackendsBusy: the tier has members, none with a free slot.
        @raise NoBackendAvailable: when there is none.
        """
        if not self._routable:
            if self._tier:
                raise BackendsBusy("every eligible backend is at its max_connections")
            raise NoBackendAvailable("no eligible backend")
        return self.strategy.pick(context, avoid)

    def lease(self, member: Member) -> Lease:
        member.in_flight += 1
        if member in self._routable_set:
            self._routable_in_flight += 1
            if self._load_aware is not None:
                self._load_aware.in_flight_changed(member)
            if member.max_connections and member.in_flight >= member.max_connections:
                self._refresh_routable()  # its last slot is taken
        now = self.clock.seconds()
        member.last_used_at = now
        return Lease(self, member, now)

    def _released(self, lease: Lease, outcome: Outcome) -> None:
        member = lease.member
        member.in_flight -= 1
        if member in self._routable_set:
            self._routable_in_flight -= 1
            if self._load_aware is not None:
                self._load_aware.in_flight_changed(member)
        elif member.max_connections and member.in_flight == member.max_connections - 1 and member in self._tier:
            self._refresh_routable()  # a slot is free again
        member.requests_total += 1
        if outcome.is_backend_failure:
            member.failures_total += 1
        alpha = self.ewma_alpha
        if outcome.ttfb is not None:
            member.ttfb_avg = (
                outcome.ttfb
                if member.ttfb_avg is None
                else member.ttfb_avg + alpha * (outcome.ttfb - member.ttfb_avg)
            )
        if outcome.ttlb is not None:
            member.ttlb_avg = (
                outcome.ttlb
                if member.ttlb_avg is None
                else member.ttlb_avg + alpha * (outcome.ttlb - member.ttlb_avg)
            )
        for subscriber in self._outcome_subscribers:
            try:
                subscriber(member, outcome)
            except Exception:
                _log.failure("outcome subscriber {subscriber!r} failed", subscriber=subscriber)
