"""
The backend pool: membership, admin and operational state, live counters.

The pool is the single owner of what is known about each backend.  Who may
write what:

  - membership, weight and admin state (ready, draining, maintenance):
    the config at start-up and the manager at runtime;
  - operational state (unknown, up, down): only health checks and outlier
    detection, through L{BackendPool.set_health};
  - live counters: only leases (L{BackendPool.lease} / L{Lease.release}).

One predicate, L{is_eligible}, says who may get new requests.  Whenever its
answer may change, the pool rebuilds the strategy with the eligible members
and emits a L{PoolEvent} to its subscribers.
"""

from __future__ import annotations

import enum
from typing import Callable, Collection, Dict, List, Optional
from urllib.parse import urlsplit

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from heimdall.context import RequestContext
from heimdall.errors import NoBackendAvailable
from heimdall.interfaces import IStrategy

_log = Logger()


class AdminState(enum.Enum):
    READY = "ready"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


def _check_weight(instance, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 1000:
        raise ValueError(f"weight must be an integer from 0 to 1000, not {value!r}")


@attrs.frozen
class Backend:
    """
    A backend's identity and configuration.  Change it with C{attrs.evolve}.
    """

    scheme: str = attrs.field(validator=attrs.validators.in_(("http", "https")))
    host: str = attrs.field(validator=attrs.validators.instance_of(str))
    port: int = attrs.field(validator=attrs.validators.instance_of(int))
    weight: int = attrs.field(default=1, validator=_check_weight)

    @port.validator
    def _check_port(self, attribute, value):
        if isinstance(value, bool) or not 0 < value < 65536:
            raise ValueError(f"port must be from 1 to 65535, not {value!r}")

    @host.validator
    def _check_host(self, attribute, value):
        if not value:
            raise ValueError("host must not be empty")

    @classmethod
    def from_url(cls, url: str, weight: int = 1) -> "Backend":
        """
        Parse C{http://host:port}.  Raises L{ValueError} with a readable
        message for anything else (a path, a query, a user name).
        """
        if not isinstance(url, str):
            raise ValueError(f"must be a URL string, not {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("scheme must be http or https")
        if not parts.hostname:
            raise ValueError("a host is required")
        if parts.username or parts.password:
            raise ValueError("user information is not supported")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must not have a path, query or fragment")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("port must be a number from 1 to 65535") from None
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        return cls(scheme=parts.scheme, host=parts.hostname, port=port, weight=weight)

    @property
    def id(self) -> str:
        """
        A stable identifier: C{host:port} (IPv6 hosts in brackets).
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.id}"


@attrs.frozen
class Outcome:
    """
    How one proxied request ended, as reported to the pool by the proxy.

    @ivar status: the upstream status code, if a response head arrived.
    @ivar failure: L{None} on success, else a short kind: C{"connect"},
        C{"reset"}, C{"timeout"}, C{"bad_response"}, C{"client_gone"},
        C{"body_too_large"}.
    @ivar ttfb: seconds from the upstream request to the first response byte.
    @ivar ttlb: seconds from the upstream request to the last response byte.
    """

    status: Optional[int] = None
    failure: Optional[str] = None
    ttfb: Optional[float] = None
    ttlb: Optional[float] = None

    @property
    def is_backend_failure(self) -> bool:
        """
        Whether this outcome counts against the backend (a client that went
        away, or a body over the limit, does not).
        """
        return self.failure in ("connect", "reset", "timeout", "bad_response")


@attrs.define(eq=False)
class Member:
    """
    A backend in a pool, with its state and live counters.  Strategies read
    these; only the pool writes them.
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

    @property
    def id(self) -> str:
        return self.backend.id

    @property
    def weight(self) -> int:
        return self.backend.weight


def is_eligible(member: Member) -> bool:
    """
    The one predicate that says whether C{member} may get new requests:
    weight above 0, admin state ready, and not known to be down.  A backend
    whose health is still unknown is eligible (as in HAProxy, where a server
    starts UP): a fresh pool serves at once.
    """
    return (
        member.backend.weight > 0
        and member.admin is AdminState.READY
        and member.health is not Health.DOWN
        and not member.removed
    )


@attrs.frozen
class PoolEvent:
    """
    A change in the pool.  C{kind} is one of C{added}, C{removed}, C{up},
    C{down}, C{weight}, C{admin}, C{all_down}, C{recovered}.
    """

    kind: str
    backend_id: Optional[str]
    at: float
    detail: str = ""


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
    _members: Dict[str, Member] = attrs.field(init=False, factory=dict)
    _subscribers: List[Callable[[PoolEvent], None]] = attrs.field(init=False, factory=list)
    _outcome_subscribers: List[Callable[[Member, Outcome], None]] = attrs.field(init=False, factory=list)
    _eligible: List[Member] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        self.strategy.rebuild([])

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

    def add(self, backend: Backend, admin: AdminState = AdminState.READY) -> Member:
        if backend.id in self._members:
            raise KeyError(f"backend {backend.id} is already in the pool")
        member = Member(backend=backend, added_at=self.clock.seconds(), admin=admin)
        self._members[backend.id] = member
        self._changed(PoolEvent("added", backend.id, self.clock.seconds(), backend.url))
        return member

    def remove(self, backend_id: str) -> Member:
        member = self._members.pop(backend_id)
        member.removed = True
        self._changed(PoolEvent("removed", backend_id, self.clock.seconds()))
        return member

    def set_weight(self, backend_id: str, weight: int) -> Member:
        member = self._members[backend_id]
        member.backend = attrs.evolve(member.backend, weight=weight)
        self._changed(PoolEvent("weight", backend_id, self.clock.seconds(), str(weight)))
        return member

    def set_admin(self, backend_id: str, admin: AdminState) -> Member:
        member = self._members[backend_id]
        member.admin = admin
        self._changed(PoolEvent("admin", backend_id, self.clock.seconds(), admin.value))
        return member

    def set_strategy(self, strategy: IStrategy) -> None:
        self.strategy = strategy
        self.strategy.rebuild(list(self._eligible))

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
        if member.health is health:
            return
        member.health = health
        if health is not Health.UNKNOWN:
            self._changed(PoolEvent(health.value, backend_id, self.clock.seconds(), reason))
        else:
            self._changed(None)

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
        self._eligible = [m for m in self._members.values() if is_eligible(m)]
        self.strategy.rebuild(list(self._eligible))
        if event is not None:
            self._emit(event)
        if had_eligible and not self._eligible and self._members:
            self._emit(PoolEvent("all_down", None, self.clock.seconds()))
        elif not had_eligible and self._eligible and event is not None and event.kind != "added":
            self._emit(PoolEvent("recovered", None, self.clock.seconds()))

    # -- the data path -------------------------------------------------------

    def pick(self, context: RequestContext, avoid: Collection[Member] = ()) -> Member:
        """
        Ask the strategy for a member.
        @raise NoBackendAvailable: when no member is eligible.
        """
        if not self._eligible:
            raise NoBackendAvailable("no eligible backend")
        return self.strategy.pick(context, avoid)

    def lease(self, member: Member) -> Lease:
        member.in_flight += 1
        now = self.clock.seconds()
        member.last_used_at = now
        return Lease(self, member, now)

    def _released(self, lease: Lease, outcome: Outcome) -> None:
        member = lease.member
        member.in_flight -= 1
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
