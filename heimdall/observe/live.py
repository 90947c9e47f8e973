"""
heimdall as it happens, for the manager's C{GET /events} (server-sent
events) and the dashboard built on it.

L{LiveFeed} hears every service's L{BackendPool} events and the alerts
their dispatchers send, and every second takes a stats sample from
L{LiveStats} (which observes every client request).  Each reader of the
feed is a L{Subscription} with a bounded queue: messages are handed to its
C{deliver} at once while its client reads, queued while the client's
connection is paused (its socket buffer is full), and when the queue goes
over C{max_queued} the subscription is dropped (its client disconnected):
a client that does not read never grows heimdall's memory.

The messages (each an SSE C{event:} name and one line of JSON C{data:})::

    snapshot   first, once: {"sample": <stats>, "history": [<summary>...], "events": [<pool|alert>...]}
    stats      every second: <stats> = <summary> + {"services": {NAME: [<backend>...]}}
    pool       a pool event: {"service", "kind", "backend" (id or null), "detail", "previous",
                              "at", "time", "state": <backend> or null}
    alert      an alert sent: {"service", "status": "firing"|"resolved"|"info", "alert": <document>,
                               "at", "time"}

    <summary>  {"at", "time", "uptime", "generation", "requests_per_second", "error_rate",
                "p50", "p99", "open_connections", "in_flight"}
    <backend>  {"id", "url", "state", "reason", "health", "admin", "eligible", "backup",
                "weight", "effective_weight", "in_flight", "requests_total", "failures_total",
                "last_check", "requests_per_second", "errors", "error_rate", "p99"}

Choices: C{requests_per_second} in a summary is the count of the second
just ended; error rates and percentiles are over the last L{WINDOW}
seconds, and a backend's requests per second too (so one quiet second does
not blank its row).  An error is a response of status 500 or above (a
backend's 5xx, or heimdall's own 502/503/504).  Latency is the client-side
total time; percentiles come from log-spaced buckets 10% apart, so a
percentile is its bucket's upper bound (at most 10% above the truth).
A backend's C{state} is one word: its admin state when not ready
(maintenance, draining: the operator's intent comes first), else ejected,
down, up or unknown; C{reason} says why.
"""

from __future__ import annotations

import collections
import json
import math
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Tuple

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from heimdall.clock import iso_timestamp
from heimdall.pool.pool import AdminState, BackendPool, Health, Member, is_eligible
from heimdall.pool.values import PoolEvent

__all__ = [
    "HISTORY",
    "MAX_QUEUED",
    "WINDOW",
    "LiveFeed",
    "LiveStats",
    "RequestWindow",
    "Subscription",
    "alert_status",
    "backend_state",
    "encode_message",
    "percentile",
]

_log = Logger()

#: Seconds that error rates, percentiles and backends' request rates cover.
WINDOW = 10
#: Summaries kept for a new reader's charts: five minutes at one a second.
HISTORY = 300
#: Pool events and alerts kept for a new reader's feed.
RECENT = 100
#: Messages a subscription may queue while its client does not read.
MAX_QUEUED = 256

# Latency buckets: 0.1 ms, then 10% apart up to about 4 minutes.
_FIRST = 1e-4
_FACTOR = 1.1
_LOG_FACTOR = math.log(_FACTOR)
_BUCKETS = 160

_FIRING = frozenset({"critical", "warning"})
_RESOLVING = frozenset({"up", "returned", "recovered"})


def _bucket(seconds: float) -> int:
    if seconds <= _FIRST:
        return 0
    return min(_BUCKETS - 1, int(math.log(seconds / _FIRST) / _LOG_FACTOR) + 1)


def _upper(bucket: int) -> float:
    return _FIRST * _FACTOR ** bucket


def percentile(counts: Mapping[int, int], q: float) -> Optional[float]:
    """
    The C{q} quantile (0 < q <= 1) of a latency histogram (bucket index to
    count), as its bucket's upper bound in seconds; None when it is empty.
    """
    total = sum(counts.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return round(_upper(bucket), 6)
    return None  # not reached: the counts add up to total


@attrs.define(eq=False)
class _Second:
    requests: int = 0
    errors: int = 0
    latency: Dict[int, int] = attrs.field(factory=dict)


@attrs.define(eq=False)
class RequestWindow:
    """
    The requests of the last C{size} seconds, one slot a second: the
    current second's slot takes L{record}s, L{roll} closes it.
    """

    size: int = HISTORY
    _slots: Deque[_Second] = attrs.field(init=False)
    _current: _Second = attrs.field(init=False, factory=_Second)

    def __attrs_post_init__(self) -> None:
        self._slots = collections.deque(maxlen=self.size)

    def record(self, seconds: float, error: bool) -> None:
        self.record_bucket(_bucket(seconds), error)

    def record_bucket(self, bucket: int, error: bool) -> None:
        """
        L{record} with the latency bucket already computed (L{_bucket}).
        """
        current = self._current
        current.requests += 1
        if error:
            current.errors += 1
        current.latency[bucket] = current.latency.get(bucket, 0) + 1

    def roll(self) -> None:
        self._slots.append(self._current)
        self._current = _Second()

    def last(self) -> int:
        """
        The requests of the last closed second.
        """
        return self._slots[-1].requests if self._slots else 0

    def summary(self, seconds: int = WINDOW) -> Dict[str, Any]:
        """
        Over the last C{seconds} closed seconds: requests, errors, the
        request rate, the error rate (None without requests), p50 and p99.
        """
        slots = list(self._slots)[-seconds:]
        requests = sum(s.requests for s in slots)
        errors = sum(s.errors for s in slots)
        latency: Dict[int, int] = {}
        for slot in slots:
            for bucket, count in slot.latency.items():
                latency[bucket] = latency.get(bucket, 0) + count
        return {
            "requests": requests,
            "errors": errors,
            "rate": round(requests / seconds, 3) if seconds else 0.0,
            "error_rate": round(errors / requests, 4) if requests else None,
            "p50": percentile(latency, 0.5),
            "p99": percentile(latency, 0.99),
        }


@attrs.define(eq=False)
class LiveStats:
    """
    Every client request, for the live view: one L{RequestWindow} for all
    of them and one per C{(service, backend)}.  L{observe} is a request
    observer (it takes a L{heimdall.proxy.exchange.RequestRecord}); it runs
    on the data path, so it only adds to small dicts.
    """

    total: RequestWindow = attrs.field(factory=RequestWindow)
    _backends: Dict[Tuple[str, str], RequestWindow] = attrs.field(init=False, factory=dict)

    def observe(self, record: Any) -> None:
        # One bucket (a math.log) per request, for both windows.
        bucket = _bucket(record.total_time)
        error = record.status >= 500
        self.total.record_bucket(bucket, error)
        backend = record.backend
        if backend is not None:
            key = (record.service or "default", backend)
            window = self._backends.get(key)
            if window is None:
                window = self._backends[key] = RequestWindow(WINDOW)
            window.record_bucket(bucket, error)

    def roll(self, keep: Iterable[Tuple[str, str]]) -> None:
        """
        Close this second; forget the backends not in C{keep} (removed).
        """
        self.total.roll()
        keep = set(keep)
        for key in list(self._backends):
            if key in keep:
                self._backends[key].roll()
            else:
                del self._backends[key]

    def backend(self, service: str, backend_id: str) -> Dict[str, Any]:
        window = self._backends.get((service, backend_id))
        return (window or RequestWindow(WINDOW)).summary(WINDOW)


def backend_state(member: Member) -> Tuple[str, str]:
    """
    A member's state as one word, and why (see the module docstring).
    """
    if member.admin is not AdminState.READY:
        return member.admin.value, ""
    if member.ejected:
        return "ejected", member.ejection_reason
    if member.health is Health.DOWN:
        return "down", member.health_reason
    return member.health.value, member.health_reason


def backend_row(member: Member, stats: Dict[str, Any]) -> Dict[str, Any]:
    """
    One backend as the live view shows it, with its C{stats} (a
    L{RequestWindow.summary}).
    """
    state, reason = backend_state(member)
    check = member.last_check
    return {
        "id": member.id,
        "url": member.backend.url,
        "state": state,
        "reason": reason,
        "health": member.health.value,
        "admin": member.admin.value,
        "eligible": is_eligible(member),
        "backup": member.backup,
        "weight": member.backend.weight,
        "effective_weight": member.weight,
        "in_flight": member.in_flight,
        "requests_total": member.requests_total,
        "failures_total": member.failures_total,
        "last_check": None if check is None else {
            "result": check.result, "latency": round(check.latency, 6), "detail": check.detail, "at": check.at,
        },
        "requests_per_second": stats["rate"],
        "errors": stats["errors"],
        "error_rate": stats["error_rate"],
        "p99": stats["p99"],
    }


def alert_status(document: Mapping[str, Any]) -> str:
    """
    C{"firing"} for a critical or warning alert, C{"resolved"} for a
    recovery (up, returned, recovered), else C{"info"}.
    """
    if document.get("severity") in _FIRING:
        return "firing"
    return "resolved" if document.get("event") in _RESOLVING else "info"


def encode_message(event: str, data: Any) -> bytes:
    """
    One server-sent event: its name and its data as one line of JSON.
    """
    return b"event: %s\ndata: %s\n\n" % (
        event.encode("ascii"), json.dumps(data, separators=(",", ":")).encode("utf-8"),
    )


@attrs.define(eq=False)
class Subscription:
    """
    One reader of a L{LiveFeed}: C{deliver} takes each message (bytes)
    while the reader is not paused; meanwhile at most C{max_queued} wait,
    and one more drops the subscription.  C{on_end(reason, abort)} is
    called once when it ends without L{close}: dropped (C{abort} True: the
    client must be disconnected) or the feed stopping (C{abort} False).

    @ivar peak: the longest its queue has been (for tests and logs).
    """

    deliver: Callable[[bytes], None]
    on_end: Callable[[str, bool], None]
    max_queued: int = MAX_QUEUED
    _feed: Optional["LiveFeed"] = None
    paused: bool = False
    ended: bool = False
    queue: Deque[bytes] = attrs.field(factory=collections.deque)
    peak: int = 0

    def push(self, message: bytes) -> None:
        if self.ended:
            return
        if not (self.paused or self.queue):
            self.deliver(message)
            return
        self.queue.append(message)
        self.peak = max(self.peak, len(self.queue))
        if len(self.queue) > self.max_queued:
            self._end(f"the client did not read: {len(self.queue)} messages queued", abort=True)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        while self.queue and not self.paused and not self.ended:
            self.deliver(self.queue.popleft())

    def close(self) -> None:
        """
        End it from the reader's side (its client went away).
        """
        if not self.ended:
            self.ended = True
            self.queue.clear()
            if self._feed is not None:
                self._feed.unsubscribe(self)

    def _end(self, reason: str, abort: bool) -> None:
        if self.ended:
            return
        self.close()
        self.on_end(reason, abort)


@attrs.define(eq=False)
class LiveFeed:
    """
    The live view of every service (see the module docstring).

    @ivar pools: every service's pool, by service name.
    @ivar open_connections: the clients' open connections now.
    @ivar generation: the config generation now (1 until a reload).
    @ivar started_at: heimdall's start, for the uptime (the clock's now
        by default).
    """

    clock: IReactorTime
    pools: Dict[str, BackendPool] = attrs.field(converter=dict)
    stats: LiveStats = attrs.field(factory=LiveStats)
    open_connections: Callable[[], int] = lambda: 0
    generation: Callable[[], int] = lambda: 1
    interval: float = 1.0
    max_queued: int = MAX_QUEUED
    started_at: Optional[float] = None
    _subscriptions: List[Subscription] = attrs.field(init=False, factory=list)
    _recent: Deque[Dict[str, Any]] = attrs.field(init=False, factory=lambda: collections.deque(maxlen=RECENT))
    _history: Deque[Dict[str, Any]] = attrs.field(init=False, factory=lambda: collections.deque(maxlen=HISTORY))
    _undo: List[Callable[[], None]] = attrs.field(init=False, factory=list)
    _unsubscribe: Dict[str, Callable[[], None]] = attrs.field(init=False, factory=dict)
    _loop: Optional[LoopingCall] = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock.seconds()

    @property
    def subscriptions(self) -> List[Subscription]:
        return list(self._subscriptions)

    # -- wiring -----------------------------------------------------------------

    def watch_alerts(self, service: str, dispatcher: Any) -> Callable[[], None]:
        """
        Hear the alerts C{dispatcher} (an L{AlertDispatcher}) sends.
        """
        observers = dispatcher.alert_observers

        def observer(document: Dict[str, Any]) -> None:
            self._alert(service, document)

        observers.append(observer)

        def forget() -> None:
            if observer in observers:
                observers.remove(observer)

        self._undo.append(forget)
        return forget

    def add_service(self, name: str, pool: BackendPool, alerts: Any = None) -> Callable[[], None]:
        """
        Follow a service, at start or when a reload adds it: its pool's
        events and C{alerts} (its L{AlertDispatcher}) from now on.  Returns
        the function that forgets it again (a reload removed it).
        """
        self.pools[name] = pool
        undo_alerts = self.watch_alerts(name, alerts) if alerts is not None else (lambda: None)
        if self._loop is not None:
            self._subscribe(name, pool)

        def forget() -> None:
            undo_alerts()
            unsubscribe = self._unsubscribe.pop(name, None)
            if unsubscribe is not None:
                unsubscribe()
            if self.pools.get(name) is pool:
                del self.pools[name]

        return forget

    def _subscribe(self, name: str, pool: BackendPool) -> None:
        self._unsubscribe[name] = pool.subscribe(lambda event: self._pool_event(name, pool, event))

    def start(self) -> None:
        if self._loop is not None:
            return
        for name, pool in self.pools.items():
            self._subscribe(name, pool)
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        """
        Stop hearing and sampling, and end every subscription.
        """
        while self._undo:
            self._undo.pop()()
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self._unsubscribe.clear()
        if self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None
        for subscription in list(self._subscriptions):
            subscription._end("heimdall is stopping", abort=False)

    # -- readers ----------------------------------------------------------------

    def subscribe(self, deliver: Callable[[bytes], None], on_end: Callable[[str, bool], None]) -> Subscription:
        """
        A new reader: it gets the snapshot at once, then every message.
        """
        subscription = Subscription(deliver, on_end, self.max_queued, self)
        self._subscriptions.append(subscription)
        subscription.push(encode_message("snapshot", self.snapshot()))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def snapshot(self) -> Dict[str, Any]:
        return {"sample": self.sample(), "history": list(self._history), "events": list(self._recent)}

    def _publish(self, event: str, data: Any) -> None:
        if not self._subscriptions:
            return
        message = encode_message(event, data)
        for subscription in list(self._subscriptions):
            subscription.push(message)

    # -- what it hears ----------------------------------------------------------

    def _pool_event(self, service: str, pool: BackendPool, event: PoolEvent) -> None:
        member = pool.get(event.backend_id) if event.backend_id is not None else None
        state = None
        if member is not None and not member.removed:
            state = backend_row(member, self.stats.backend(service, member.id))
        data = {
            "service": service,
            "kind": event.kind.value,
            "backend": event.backend_id,
            "detail": event.detail,
            "previous": event.previous,
            "at": event.at,
            "time": iso_timestamp(event.at),
            "state": state,
        }
        self._recent.append({"type": "pool", **data})
        self._publish("pool", data)

    def _alert(self, service: str, document: Dict[str, Any]) -> None:
        now = self.clock.seconds()
        data = {"service": service, "status": alert_status(document), "alert": document, "at": now,
                "time": iso_timestamp(now)}
        self._recent.append({"type": "alert", **data})
        self._publish("alert", data)

    # -- every second -------------------------------------------------------------

    def tick(self) -> None:
        """
        Close this second and send a stats sample.
        """
        self.stats.roll((name, member.id) for name, pool in self.pools.items() for member in pool.members())
        sample = self.sample()
        self._history.append({key: value for key, value in sample.items() if key != "services"})
        self._publish("stats", sample)

    def summary(self) -> Dict[str, Any]:
        now = self.clock.seconds()
        window = self.stats.total.summary(WINDOW)
        return {
            "at": now,
            "time": iso_timestamp(now),
            "uptime": round(now - self.started_at, 3),
            "generation": self.generation(),
            "requests_per_second": self.stats.total.last(),
            "error_rate": window["error_rate"],
            "p50": window["p50"],
            "p99": window["p99"],
            "open_connections": self.open_connections(),
            "in_flight": sum(m.in_flight for pool in self.pools.values() for m in pool.members()),
        }

    def sample(self) -> Dict[str, Any]:
        """
        The summary, and every service's backends.
        """
        sample = self.summary()
        sample["services"] = {
            name: [backend_row(member, self.stats.backend(name, member.id)) for member in pool.members()]
            for name, pool in self.pools.items()
        }
        return sample
