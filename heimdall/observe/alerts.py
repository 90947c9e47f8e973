"""
Alerts: pool events (backend up, down, ejected, returned, added, removed;
pool all down, recovered) turned into documents and delivered to sinks.

L{AlertDispatcher} subscribes to the pool.  Every event is logged (the log
sink is always on and never damped).  Events of the configured kinds go to
the other sinks (L{WebhookSink}, L{CommandSink}), with flap damping: at most
one alert per backend (and one for pool-wide events) per C{flap_window};
the events held back meanwhile are summarised in one alert at the window's
end, about the latest of them (so the last alert always tells the current
state).  A backend's first confirmation (unknown to up, at start-up) is
logged but not alerted.

Delivery never runs on the caller's stack (the pool's event may come from
the data path): it is scheduled with C{callLater(0)}, and every sink is
asynchronous and logs its failures instead of raising them.

The alert document (also in docs/health.md)::

    {
      "version": 1,
      "source": "heimdall",
      "service": "default",             # the service the backend belongs to
      "event": "down",                  # up down ejected returned added removed all_down recovered
      "severity": "critical",           # critical (down, all_down), warning (ejected, removed), info
      "backend": "127.0.0.1:8081",      # null for all_down / recovered
      "url": "http://127.0.0.1:8081",   # null when unknown
      "detail": "3 failed checks: connect refused",
      "previous": "up",                 # up/down only: the health before; else null
      "at": 1718000000.25,              # seconds since the epoch
      "time": "2024-06-10T06:13:20.250Z",
      "pool": {"eligible": 2, "total": 3},
      "suppressed": null,               # or {"count": 4, "events": {"down": 2, "up": 2}, "since": 1717999990.0}
      "text": "heimdall: backend 127.0.0.1:8081 is DOWN: 3 failed checks: connect refused"
    }

C{text} makes it a valid Slack (and Mattermost, Rocket.Chat, Teams
connector) incoming-webhook message as it is.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from heimdall.clock import iso_timestamp, maybe_global_reactor
from heimdall.health.probes import describe_failure, probe_agent
from heimdall.config.health import AlertsConfig
from heimdall.interfaces import IAlertSink
from heimdall.pool.pool import BackendPool
from heimdall.pool.values import EventKind, PoolEvent

__all__ = [
    "AlertDispatcher",
    "CommandSink",
    "LogSink",
    "WebhookSink",
    "alert_document",
    "build_sinks",
]

_log = Logger(namespace="heimdall.observe.alerts")

ALERT_VERSION = 1

# The config's default (AlertsConfig.events).
_DEFAULT_EVENTS = AlertsConfig().events

_SEVERITY = {
    "down": "critical",
    "all_down": "critical",
    "ejected": "warning",
    "removed": "warning",
}

_PHRASES = {
    "up": "is UP",
    "down": "is DOWN",
    "ejected": "was EJECTED",
    "returned": "RETURNED from ejection",
    "added": "was added",
    "removed": "was removed",
    "weight": "has a new weight",
    "admin": "changed admin state",
}


def alert_document(
    event: PoolEvent, pool: Optional[BackendPool] = None, suppressed: Optional[Dict[str, Any]] = None,
    service: str = "default",
) -> Dict[str, Any]:
    """
    The JSON-ready alert for C{event} in C{service} (see the module docstring).
    """
    member = pool.get(event.backend_id) if pool is not None and event.backend_id else None
    url = member.backend.url if member is not None else (event.detail if event.kind is EventKind.ADDED else None)
    if event.backend_id is None:
        text = "heimdall: ALL backends are down" if event.kind is EventKind.ALL_DOWN else "heimdall: backends available again"
    else:
        text = f"heimdall: backend {event.backend_id} {_PHRASES.get(event.kind, event.kind.value)}"
    if service != "default":
        text = text.replace("heimdall: ", f"heimdall [{service}]: ", 1)
    if event.detail and event.kind is not EventKind.ADDED:
        text += f": {event.detail}"
    if suppressed:
        listed = ", ".join(f"{kind} x{count}" for kind, count in sorted(suppressed["events"].items()))
        text += f" ({suppressed['count']} more events held back since {iso_timestamp(suppressed['since'])}: {listed})"
    document: Dict[str, Any] = {
        "version": ALERT_VERSION,
        "source": "heimdall",
        "service": service,
        "event": event.kind.value,
        "severity": _SEVERITY.get(event.kind, "info"),
        "backend": event.backend_id,
        "url": url,
        "detail": event.detail,
        "previous": event.previous,
        "at": event.at,
        "time": iso_timestamp(event.at),
        "pool": None,
        "suppressed": suppressed,
        "text": text,
    }
    if pool is not None:
        document["pool"] = {"eligible": len(pool.eligible()), "total": len(pool)}
    return document


# --- sinks -----------------------------------------------------------------------


@implementer(IAlertSink)
@attrs.define(eq=False)
class LogSink:
    """
    Logs every alert: warnings for critical and warning ones, info else.
    """

    logger: Logger = attrs.field(factory=lambda: _log)
    name: str = "log"
    kind: str = "log"

    def send(self, alert: Dict[str, Any]) -> None:
        level = LogLevel.info if alert.get("severity") == "info" else LogLevel.warn
        self.logger.emit(level, "{text}", text=alert.get("text", ""), alert=alert)

    def stop(self) -> None:
        return None


@implementer(IAlertSink)
@attrs.define(eq=False)
class WebhookSink:
    """
    POSTs each alert as JSON (C{Content-Type: application/json}) to C{url};
    a 2xx status is a delivery.  Anything else (a status, a connect error,
    no answer within C{timeout}) is retried C{retries} times after
    C{backoff}, 2 x C{backoff}, 4 x ... seconds, then logged and dropped.
    At most C{max_pending} deliveries run at once; more are dropped (and
    logged), so a receiver that is down costs bounded memory.

    @ivar client: a treq-like client: C{request(method, url, data=...,
        headers=...)} returning a Deferred response with C{code}; the
        response body is read with C{treq.content}.
    """

    client: Any
    clock: IReactorTime
    url: str
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 1.0
    headers: Sequence = ()
    max_pending: int = 100
    _pending: Set[Deferred] = attrs.field(init=False, factory=set)
    delivered_total: int = attrs.field(init=False, default=0)
    failed_total: int = attrs.field(init=False, default=0)

    kind = "webhook"

    @property
    def name(self) -> str:
        return f"webhook {self.url}"

    def send(self, alert: Dict[str, Any]) -> Deferred:
        if len(self._pending) >= self.max_pending:
            self.failed_total += 1
            _log.warn("{sink}: {count} deliveries pending, dropping the {event} alert", sink=self.name, count=len(self._pending), event=alert.get("event"))
            return defer.succeed(False)
        body = json.dumps(alert, sort_keys=False).encode("utf-8")
        d = defer.ensureDeferred(self._deliver(body, alert.get("event")))
        self._pending.add(d)

        def done(result):
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    async def _deliver(self, body: bytes, event: Optional[str]) -> bool:
        problem = ""
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    await deferLater(self.clock, self.backoff * 2 ** (attempt - 1), lambda: None)
                problem = await self._post(body)
                if not problem:
                    self.delivered_total += 1
                    return True
        except CancelledError:
            return False
        except Exception as e:  # a bug, not the receiver: still never raised
            problem = f"unexpected error: {e!r}"
        self.failed_total += 1
        _log.warn(
            "{sink}: could not deliver the {event} alert after {attempts} attempts: {problem}",
            sink=self.name,
            event=event,
            attempts=self.retries + 1,
            problem=problem,
        )
        return False

    def _post(self, body: bytes) -> Deferred:
        """
        One attempt: fires with "" on a 2xx, else with the problem.
        """
        import treq

        headers = {b"Content-Type": [b"application/json"], b"User-Agent": [b"heimdall-alerts/1"]}
        for name, value in self.headers:
            headers[name.encode("ascii")] = [value.encode("utf-8")]
        timed_out = []
        d = self.client.request("POST", self.url, data=body, headers=headers)

        def read(response):
            # Read (and drop) the body so the connection is released.
            return treq.content(response).addCallback(lambda _: response.code)

        d.addCallback(read)

        def expire():
            timed_out.append(True)
            d.cancel()

        timer = self.clock.callLater(self.timeout, expire)

        def judged(result):
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if timed_out:
                    return f"no answer within {self.timeout:g}s"
                if result.check(CancelledError):
                    return result  # stop(): let _deliver end
                return describe_failure(result)
            return "" if 200 <= result < 300 else f"HTTP {result}"

        return d.addBoth(judged)

    def stop(self) -> Deferred:
        pending = list(self._pending)
        for d in pending:
            d.cancel()
        return defer.DeferredList(pending) if pending else defer.succeed(None)


class _AlertProcess(ProcessProtocol):
    def __init__(self, stdin: bytes, done: Deferred) -> None:
        self.stdin = stdin
        self.done = done
        self.output: Deque[bytes] = collections.deque(maxlen=20)

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output.append(data[-2048:])

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if not self.done.called:
            self.done.callback((code, signal))


@implementer(IAlertSink)
@attrs.define(eq=False)
class CommandSink:
    """
    Runs C{command} (an argument list, no shell) for each alert, with the
    alert as JSON on its stdin and C{HEIMDALL_EVENT}, C{HEIMDALL_BACKEND} in
    its environment.  It is killed after C{timeout}.  A non-zero exit is
    logged with the program's last output.  At most C{max_running} run at
    once; more alerts are dropped (and logged).

    @ivar reactor: an L{IReactorProcess} and L{IReactorTime}.
    """

    reactor: Any
    command: Sequence[str]
    timeout: float = 10.0
    env: Optional[Dict[str, str]] = None
    max_running: int = 10
    _running: Dict[Deferred, Any] = attrs.field(init=False, factory=dict)

    kind = "command"

    @property
    def name(self) -> str:
        return f"command {self.command[0]}"

    def send(self, alert: Dict[str, Any]) -> Deferred:
        if len(self._running) >= self.max_running:
            _log.warn("{sink}: {count} still running, dropping the {event} alert", sink=self.name, count=len(self._running), event=alert.get("event"))
            return defer.succeed(False)
        env = dict(os.environ if self.env is None else self.env)
        env["HEIMDALL_EVENT"] = str(alert.get("event") or "")
        env["HEIMDALL_BACKEND"] = str(alert.get("backend") or "")
        env["HEIMDALL_SERVICE"] = str(alert.get("service") or "")
        done: Deferred = Deferred()
        protocol = _AlertProcess(json.dumps(alert).encode("utf-8") + b"\n", done)
        try:
            process = self.reactor.spawnProcess(protocol, self.command[0], list(self.command), env=env)
        except Exception as e:
            _log.warn("{sink}: could not start: {error}", sink=self.name, error=e)
            return defer.succeed(False)
        self._running[done] = process
        killed = []

        def kill():
            killed.append(True)
            try:
                process.signalProcess("KILL")
            except Exception:
                pass

        timer = self.reactor.callLater(self.timeout, kill)

        def ended(result) -> bool:
            self._running.pop(done, None)
            if timer.active():
                timer.cancel()
            code, signal = result
            if code == 0:
                return True
            output = b"".join(protocol.output).decode("utf-8", "replace").strip()[-500:]
            why = f"killed after {self.timeout:g}s" if killed else (f"exit status {code}" if code is not None else f"signal {signal}")
            _log.warn("{sink}: {why}; output: {output}", sink=self.name, why=why, output=output)
            return False

        return done.addCallback(ended)

    def stop(self) -> Deferred:
        running = list(self._running.items())
        for done, process in running:
            try:
                process.signalProcess("KILL")
            except Exception:
                pass
        return defer.DeferredList([d for d, _ in running]) if running else defer.succeed(None)


def build_sinks(config: AlertsConfig, clock: IReactorTime, reactor: Any = None, webhook_client: Any = None) -> List[IAlertSink]:
    """
    The webhook and command sinks of C{config} (the log sink is the
    dispatcher's own).  C{webhook_client} defaults to a treq client over a
    non-persistent connection pool.  C{clock} times deliveries; C{reactor}
    (the global one by default) connects and spawns.
    """
    sinks: List[IAlertSink] = []
    if config.webhooks and webhook_client is None or config.commands:
        reactor = maybe_global_reactor(reactor)
    if config.webhooks and webhook_client is None:
        import treq

        webhook_client = treq.client.HTTPClient(probe_agent(reactor))
    for hook in config.webhooks:
        sinks.append(
            WebhookSink(
                webhook_client,
                clock,
                hook.url,
                timeout=hook.timeout,
                retries=hook.retries,
                backoff=hook.backoff,
                headers=hook.headers,
            )
        )
    for command in config.commands:
        sinks.append(CommandSink(reactor, command.command, timeout=command.timeout))
    return sinks


# --- the dispatcher ------------------------------------------------------------------


@attrs.define(eq=False)
class _Window:
    opened_at: float
    timer: IDelayedCall
    held: List[PoolEvent] = attrs.field(factory=list)


@attrs.define(eq=False)
class AlertDispatcher:
    """
    Pool events to alert sinks, damped.

    @ivar sinks: the L{IAlertSink}s besides the log.
    @ivar flap_window: seconds; 0 turns damping off.
    @ivar events: the event kinds sent to C{sinks} (all are logged).
    @ivar log_sink: the always-on log sink.
    """

    pool: BackendPool
    clock: IReactorTime
    sinks: Sequence[IAlertSink] = ()
    flap_window: float = 60.0
    events: Sequence[str] = _DEFAULT_EVENTS
    log_sink: IAlertSink = attrs.field(factory=LogSink)
    #: The service whose pool it watches (the alerts' C{service}).
    service: str = "default"
    #: Called with C{(sink kind, delivered)} after each delivery to a sink
    #: (C{"webhook"}, C{"command"}): for metrics; must not raise.
    delivery_observers: List[Callable[[str, bool], None]] = attrs.field(factory=list)
    #: Called with each alert document handed to the sinks (damped as
    #: they are), on the reactor's next turn: the live feed; must not raise.
    alert_observers: List[Callable[[Dict[str, Any]], None]] = attrs.field(factory=list)
    _windows: Dict[str, _Window] = attrs.field(init=False, factory=dict)
    _scheduled: Set[IDelayedCall] = attrs.field(init=False, factory=set)
    _unsubscribe: Optional[Callable[[], None]] = attrs.field(init=False, default=None)
    #: Alerts sent to the sinks, and events held back by damping.
    sent_total: int = attrs.field(init=False, default=0)
    suppressed_total: int = attrs.field(init=False, default=0)

    @classmethod
    def from_config(
        cls, config: AlertsConfig, pool: BackendPool, clock: IReactorTime, reactor: Any = None,
        webhook_client: Any = None, service: str = "default",
    ) -> "AlertDispatcher":
        return cls(
            pool,
            clock,
            build_sinks(config, clock, reactor, webhook_client),
            flap_window=config.flap_window,
            events=config.events,
            service=service,
        )

    def start(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self.pool.subscribe(self._event)

    def stop(self) -> Deferred:
        """
        Unsubscribe, drop held-back events and undelivered alerts, and stop
        the sinks.  Fires when they have stopped.
        """
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for window in self._windows.values():
            if window.timer.active():
                window.timer.cancel()
        self._windows.clear()
        for call in self._scheduled:
            if call.active():
                call.cancel()
        self._scheduled.clear()
        stops = []
        for sink in self.sinks:
            try:
                stops.append(defer.maybeDeferred(sink.stop))
            except Exception:
                _log.failure("stopping {sink} failed", sink=sink)
        return defer.DeferredList(stops, consumeErrors=True)

    def _event(self, event: PoolEvent) -> None:
        try:
            self.log_sink.send(alert_document(event, self.pool, service=self.service))
        except Exception:
            _log.failure("logging the {kind} event failed", kind=event.kind)
        if event.kind not in self.events:
            return
        if event.kind is EventKind.UP and event.previous == "unknown":
            return  # first confirmation at start-up, not a recovery
        key = event.backend_id or "pool"
        window = self._windows.get(key)
        if window is not None:
            window.held.append(event)
            self.suppressed_total += 1
            return
        self._deliver(alert_document(event, self.pool, service=self.service))
        self._open_window(key)

    def _open_window(self, key: str) -> None:
        if self.flap_window > 0:
            timer = self.clock.callLater(self.flap_window, self._close_window, key)
            self._windows[key] = _Window(self.clock.seconds(), timer)

    def _close_window(self, key: str) -> None:
        window = self._windows.pop(key, None)
        if window is None or not window.held:
            return
        latest = window.held[-1]
        counts: Dict[str, int] = {}
        for held in window.held[:-1]:
            counts[held.kind.value] = counts.get(held.kind.value, 0) + 1
        summary = {"count": len(window.held) - 1, "events": counts, "since": window.opened_at} if counts else None
        self._deliver(alert_document(latest, self.pool, summary, self.service))
        # Still flapping: the next alert waits for another window.
        self._open_window(key)

    def _delivered(self, ok: Any, kind: str) -> None:
        for observer in self.delivery_observers:
            try:
                observer(kind, bool(ok))
            except Exception:
                _log.failure("delivery observer {observer!r} failed", observer=observer)

    def _deliver(self, alert: Dict[str, Any]) -> None:
        # Never on the caller's stack: the event may come from the data path.
        self.sent_total += 1
        holder: List[IDelayedCall] = []

        def send_all() -> None:
            self._scheduled.discard(holder[0])
            for observer in self.alert_observers:
                try:
                    observer(alert)
                except Exception:
                    _log.failure("alert observer {observer!r} failed", observer=observer)
            for sink in self.sinks:
                try:
                    d = sink.send(alert)
                    if isinstance(d, Deferred):
                        d.addCallback(self._delivered, getattr(sink, "kind", type(sink).__name__))
                        d.addErrback(lambda f, s=sink: _log.failure("{sink} failed", f, sink=getattr(s, "name", s)))
                except Exception:
                    _log.failure("alert sink {sink} failed", sink=getattr(sink, "name", sink))

        call = self.clock.callLater(0, send_all)
        holder.append(call)
        self._scheduled.add(call)
