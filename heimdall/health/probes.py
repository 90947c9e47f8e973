"""
The one HTTP and TCP probe of heimdall: active health checks, the manager's
readiness check and the spawner's wait-for-port all use this module.

The API, from the bottom up:

  - C{quiet_connection_pool(reactor)}: a non-persistent
    L{HTTPConnectionPool} whose client factory does not log every
    connection (probes and webhooks open one connection per request; a
    "Starting factory" line per probe would flood the log).
    C{probe_agent(reactor, connect_timeout=None, tls=None)}: an L{Agent}
    over one; with C{tls} (a service's L{IBackendTls}) it reaches https
    backends with the proxy's endpoints and TLS settings.

  - C{HttpProbe(agent, method=b"GET", headers=(), body_limit=0)}: one HTTP
    request per C{fetch(url)}, a L{Deferred} firing with an
    C{HttpAnswer(code, body)} (C{body}: at most C{body_limit} bytes; the
    rest is not read, the connection is closed), failing with the
    transport's error.  Cancelling it closes the connection.  C{headers}
    is a sequence of C{(name, value)} byte pairs; a C{User-Agent:
    heimdall-health-check/1} comes first.  The readiness check is
    C{HttpProbe(probe_agent(reactor, attempt_timeout)).fetch(url)} with
    C{addTimeout} per attempt, passing on C{200 <= answer.code < 300}.

  - C{connect_once(reactor, host, port, timeout)}: one TCP connection
    attempt; fires with L{None} once accepted (the connection is closed at
    once), fails with the connect error (C{ConnectionRefusedError},
    C{TimeoutError}, ...); cancelling it abandons the attempt.
    C{accepts_connections(reactor, host, port, timeout)}: the same as a
    yes/no answer (fires C{True} or C{False}, never fails): the spawner's
    wait-for-port.

  - C{ProbeOutcome(ok, detail)} and C{describe_failure(failure)}: what a
    health check found, and a short stable text for a failed probe
    (C{"connect refused"}, C{"connect timeout"}, ...).

  - The L{IHealthCheck}s built on them, for
    L{heimdall.health.active.HealthProber}: C{HttpCheck(agent, settings)}
    (status and optional body regex), C{TcpCheck(reactor, timeout)}, and
    C{default_check_factory(reactor, agent=None)}, which builds the check
    of a backend's L{CheckSettings}.

C{reactor} always names what connects (an L{IReactorTCP}); timeouts that
need a clock are the caller's (C{Deferred.addTimeout}), except the connect
timeout, which the reactor applies.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence, Tuple

import attrs
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.web import client as web_client
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.http_headers import Headers
from zope.interface import implementer

from heimdall.config.health import CheckSettings
from heimdall.interfaces import IHealthCheck
from heimdall.pool.values import Backend
from heimdall.proxy.endpoints import backend_endpoint

__all__ = [
    "HttpAnswer",
    "HttpCheck",
    "HttpProbe",
    "MAX_PROBE_BODY",
    "ProbeOutcome",
    "TcpCheck",
    "accepts_connections",
    "connect_once",
    "default_check_factory",
    "describe_failure",
    "probe_agent",
    "quiet_connection_pool",
]

#: Bytes of a probe's response body kept for C{body_regex}; the rest is
#: not read (the connection is closed).
MAX_PROBE_BODY = 64 * 1024

USER_AGENT = b"heimdall-health-check/1"

# Agent's own default; the prober's timeout cancels a probe before it.
_DEFAULT_CONNECT_TIMEOUT = 30.0


@attrs.frozen
class ProbeOutcome:
    """
    What an L{IHealthCheck} found: passed or not, and a short detail such
    as C{"HTTP 200"} or C{"HTTP 503, expected 200-399"}.
    """

    ok: bool
    detail: str = ""


def describe_failure(failure: Failure) -> str:
    """
    A short, stable description of why a probe failed: C{"connect
    refused"}, C{"connect timeout"}, C{"connection reset"}, C{"no response"},
    or the exception's message.
    """
    value = failure.value
    # Agent wraps the real reasons in lists.
    reasons = getattr(value, "reasons", None)
    if reasons:
        return describe_failure(reasons[0])
    if isinstance(value, error.ConnectionRefusedError):
        return "connect refused"
    if isinstance(value, (error.TimeoutError, error.TCPTimedOutError)):
        return "connect timeout"
    if isinstance(value, error.DNSLookupError):
        return "DNS lookup failed"
    if isinstance(value, (error.ConnectionLost, error.ConnectionDone)):
        return "connection closed"
    if isinstance(value, error.ConnectError):
        return f"connect failed: {value.osError or value}" if getattr(value, "osError", None) else "connect failed"
    if isinstance(value, CancelledError):
        return "cancelled"
    text = str(value) or type(value).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- the HTTP client ---------------------------------------------------------------


class _QuietHTTP11ClientFactory(web_client._HTTP11ClientFactory):
    noisy = False  # a probe every 2 s per backend would flood the log


def quiet_connection_pool(reactor: Any) -> web_client.HTTPConnectionPool:
    """
    A non-persistent connection pool that does not log every connection:
    for probes and webhooks, where each request opens its own (as a new
    client would) and leaves no idle connection behind.
    """
    pool = web_client.HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietHTTP11ClientFactory
    return pool


@implementer(IAgentEndpointFactory)
@attrs.frozen
class _BackendEndpoints:
    """
    Agent's endpoints for backends: the proxy's own (TLS settings, the
    handshake as part of connecting), so a probe meets what a request meets.
    """

    reactor: Any
    tls: Any
    connect_timeout: float

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("ascii").strip("[]")
        backend = Backend(uri.scheme.decode("ascii"), host, uri.port)
        return backend_endpoint(self.reactor, backend, self.connect_timeout, self.tls)


def probe_agent(reactor: Any, connect_timeout: Optional[float] = None, tls: Any = None) -> web_client.Agent:
    """
    An L{Agent} over a L{quiet_connection_pool}.  With C{tls} (a service's
    L{heimdall.interfaces.IBackendTls}) it connects as the proxy does
    (L{heimdall.proxy.endpoints.backend_endpoint}): https backends with
    their service's TLS settings.
    """
    pool = quiet_connection_pool(reactor)
    if tls is not None:
        timeout = connect_timeout if connect_timeout is not None else _DEFAULT_CONNECT_TIMEOUT
        return web_client.Agent.usingEndpointFactory(reactor, _BackendEndpoints(reactor, tls, timeout), pool=pool)
    return web_client.Agent(reactor, pool=pool, connectTimeout=connect_timeout)


# --- HTTP --------------------------------------------------------------------------


@attrs.frozen
class HttpAnswer:
    """
    A probe's response: its status code and the first bytes of its body.
    """

    code: int
    body: bytes = b""


class _BodyCollector(Protocol):
    """
    Collects up to C{limit} bytes of a response body, then stops reading
    (the probe's connection is never reused, so it is simply closed).
    """

    def __init__(self, done: Deferred, limit: int) -> None:
        self.done = done
        self.limit = limit
        self.parts: list = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        room = self.limit - self.size
        self.parts.append(data[:room])
        self.size += min(len(data), room)
        if len(data) >= room:
            self.done.callback(b"".join(self.parts))
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:
        if self.done.called:
            return
        if reason.check(web_client.ResponseDone, web_client.PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def _stop_reading(collector: _BodyCollector) -> None:
    transport = getattr(collector, "transport", None)
    if transport is not None:
        transport.stopProducing()


@attrs.define(eq=False)
class HttpProbe:
    """
    One HTTP request per L{fetch}, over C{agent} (use one whose pool is not
    persistent: L{probe_agent}).

    @ivar headers: C{(name, value)} byte pairs sent after the User-Agent.
    @ivar body_limit: bytes of the body kept in the L{HttpAnswer}.
    """

    agent: Any
    method: bytes = b"GET"
    headers: Sequence[Tuple[bytes, bytes]] = ()
    body_limit: int = 0

    def fetch(self, url: bytes) -> Deferred:
        """
        Request C{url}: fires with an L{HttpAnswer} once the status and up
        to C{body_limit} bytes of the body are in, fails with the
        transport's error; cancelling it closes the connection.
        """
        headers = Headers({b"User-Agent": [USER_AGENT]})
        for name, value in self.headers:
            headers.setRawHeaders(name, [value])
        d = self.agent.request(self.method, url, headers, None)
        d.addCallback(self._response)
        return d

    def _response(self, response: Any) -> Deferred:
        body: Deferred = Deferred(lambda _: _stop_reading(collector))
        collector = _BodyCollector(body, self.body_limit)
        response.deliverBody(collector)
        code = response.code
        return body.addCallback(lambda data: HttpAnswer(code, data))


@implementer(IHealthCheck)
@attrs.define(eq=False)
class HttpCheck:
    """
    An HTTP health check: C{method path} with the configured headers,
    passing when the status is expected and, if C{body_regex} is set, the
    body's first 64 KiB match it.

    @ivar agent: an L{IAgent}; use one whose connection pool is not
        persistent (L{default_check_factory} does), so every probe opens a
        connection as a new client would.
    """

    agent: Any
    settings: CheckSettings
    _regex: Optional["re.Pattern"] = attrs.field(init=False, default=None)
    _probe: HttpProbe = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        settings = self.settings
        if settings.body_regex is not None:
            self._regex = re.compile(settings.body_regex.encode("utf-8"))
        headers = tuple((name.encode("ascii"), value.encode("utf-8")) for name, value in settings.headers)
        limit = MAX_PROBE_BODY if self._regex is not None else 0
        self._probe = HttpProbe(self.agent, settings.method.encode("ascii"), headers, limit)

    def check(self, backend: Any) -> Deferred:
        d = self._probe.fetch((backend.url + self.settings.path).encode("ascii"))
        return d.addCallback(self._judge)

    def _judge(self, answer: HttpAnswer) -> ProbeOutcome:
        settings = self.settings
        code = answer.code
        if not settings.status_ok(code):
            return ProbeOutcome(False, f"HTTP {code}, expected {settings.describe_statuses()}")
        if self._regex is not None and not self._regex.search(answer.body):
            return ProbeOutcome(False, f"HTTP {code}, body does not match {settings.body_regex!r}")
        return ProbeOutcome(True, f"HTTP {code}")


# --- TCP ---------------------------------------------------------------------------


class _HangUp(Protocol):
    """
    Reports an accepted connection and closes it at once.
    """

    def __init__(self, result: Deferred) -> None:
        self.result = result

    def connectionMade(self) -> None:
        self.transport.loseConnection()
        if not self.result.called:
            self.result.callback(None)


class _ConnectOnce(ClientFactory):
    noisy = False  # one probe every 50 ms (the spawner) would flood the log

    def __init__(self, result: Deferred) -> None:
        self.result = result

    def buildProtocol(self, addr: Any) -> Protocol:
        return _HangUp(self.result)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.result.called:
            self.result.errback(reason)


def connect_once(reactor: Any, host: str, port: int, timeout: float) -> Deferred:
    """
    One TCP connection attempt to C{host:port}: fires with L{None} once it
    is accepted (and closes it), fails with the connect error.  Cancelling
    it abandons the attempt.
    """
    connector = None

    def cancel(_: Deferred) -> None:
        if connector is not None:
            connector.disconnect()

    result: Deferred = Deferred(cancel)
    connector = reactor.connectTCP(host, port, _ConnectOnce(result), timeout=timeout)
    return result


def accepts_connections(reactor: Any, host: str, port: int, timeout: float) -> Deferred:
    """
    Whether C{host:port} accepts a TCP connection within C{timeout}: fires
    with C{True} or C{False}, never fails (except when cancelled).
    """
    d = connect_once(reactor, host, port, timeout)
    return d.addCallbacks(lambda _: True, lambda f: f if f.check(CancelledError) else False)


@implementer(IHealthCheck)
@attrs.define(eq=False)
class TcpCheck:
    """
    A TCP health check: passes when the backend accepts a connection.

    @ivar reactor: an L{IReactorTCP}.
    @ivar timeout: the connect timeout (the prober's own timeout applies
        too).
    """

    reactor: Any
    timeout: float = 1.0

    def check(self, backend: Any) -> Deferred:
        d = connect_once(self.reactor, backend.host, backend.port, self.timeout)
        return d.addCallback(lambda _: ProbeOutcome(True, "TCP connect"))


def default_check_factory(reactor: Any, agent: Any = None) -> Callable[[CheckSettings], Optional[IHealthCheck]]:
    """
    Builds the check for a backend's settings: an L{HttpCheck} over one
    shared non-persistent L{Agent}, a L{TcpCheck}, or L{None} for C{"none"}.
    """
    if agent is None:
        agent = probe_agent(reactor)

    def build(settings: CheckSettings) -> Optional[IHealthCheck]:
        if settings.type == "http":
            return HttpCheck(agent, settings)
        if settings.type == "tcp":
            return TcpCheck(reactor, settings.timeout)
        return None

    return build
