"""
In-memory test helpers for applications that embed heimdall, in the spirit
of C{treq.testing}.

L{StubBalancer} runs heimdall's real code (L{HeimdallSite} and its request
and channel, L{BalancerResource}, L{ProxyExchange}, L{UpstreamConnection}'s
parser, L{BackendPool} and the named strategy) against backends that are
plain C{twisted.web} resources.  Only the sockets are replaced: both the
client-to-heimdall and the heimdall-to-backend connections are
C{twisted.test.iosim} transport pairs, and time is a
C{twisted.internet.task.Clock} that moves only when the test moves it::

    stub = StubBalancer({"http://a:1": ResourceA(), "http://b:1": ResourceB()})
    response = stub.request("GET", "/users?id=1")
    assert response.code == 200 and response.json()["id"] == 1

What the memory transports do not model: TCP backpressure (pausing a
transport does nothing, so slow-client flow control is not exercised), and
C{abortConnection}, which behaves like C{loseConnection} (bytes already
written are still delivered).  A backend resource that streams through a
pull producer (C{request.registerProducer(p, False)}) does not progress:
twisted.web drives those through the global cooperator, i.e. the global
reactor, which nothing here runs; write directly or use a push producer.
"""

from __future__ import annotations

import ipaddress
import itertools
import json as _json
import random as _random
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import attrs
from twisted.internet import defer
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import ISSLTransport, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from twisted.web.server import Site
from zope.interface import directlyProvides, implementer

from heimdall.embed import create_strategy
from heimdall.pool.pool import BackendPool, Member
from heimdall.pool.values import Backend
from heimdall.proxy.resource import BalancerResource
from heimdall.proxy.site import HeimdallSite
from heimdall.proxy.upstream import UpstreamConnection, UpstreamPool

__all__ = [
    "ExchangeIncomplete",
    "MemoryUpstreamPool",
    "StubBalancer",
    "StubResponse",
]

# A flush that is still moving bytes after this many rounds is an endless
# stream (or a loop), not a response that is about to complete.
MAX_FLUSH_ROUNDS = 100_000


class ExchangeIncomplete(Exception):
    """
    A request did not complete when every in-memory byte had been moved:
    some backend has not answered (yet).  Advance the stub's clock (past
    C{response_timeout} for a 504) and ask again.
    """


def _backend_id(backend: Union[str, Backend]) -> str:
    """
    C{host:port} for a L{Backend}, a URL (C{http://host:port}) or an id.
    """
    if isinstance(backend, Backend):
        return backend.id
    if "://" in backend:
        return Backend.from_url(backend).id
    return backend


def _address(host: str, port: int):
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return HostnameAddress(host.encode("idna"), port)
    return IPv4Address("TCP", host, port) if version == 4 else IPv6Address("TCP", host, port)


def _pump_until_quiet(pump_lists: Sequence[List[iosim.IOPump]], max_rounds: int) -> bool:
    """
    Pump every connection in C{pump_lists} until no byte and no disconnect
    is left to deliver; drop the pumps of closed connections.  Pumping one
    list may add pumps to another (a client request makes heimdall connect
    upstream), hence rounds over all of them.  Returns whether anything
    moved.
    """
    moved_any = False
    for _ in range(max_rounds):
        moved = False
        for pumps in pump_lists:
            for pump in list(pumps):
                if pump.pump():
                    moved = True
                # A pull producer may have written during the pump, after
                # the buffers were taken.
                if pump.clientIO.stream or pump.serverIO.stream:
                    moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    pumps.remove(pump)
        if not moved:
            return moved_any
        moved_any = True
    raise ExchangeIncomplete(
        f"bytes were still moving after {max_rounds} rounds: an endless response stream?"
    )


@attrs.define(eq=False)
class MemoryUpstreamPool(UpstreamPool):
    """
    An L{UpstreamPool} whose L{connect} opens no socket: it connects a real
    L{UpstreamConnection} to an in-memory C{twisted.web.server.Site} serving
    the resource accepted for that backend id, through a C{twisted.test.iosim}
    transport pair.  Keep-alive reuse, idle sweeping, generations and the
    C{opened}/C{reused} counters are the real pool's.

    Bytes move only on L{flush}.  A backend with no accepted resource
    refuses connections (L{ConnectionRefusedError}), which exercises
    heimdall's retries.

    @ivar opened_by_backend: connections established per backend id (as
        C{opened}; refused attempts count in C{connect_failures}, as in the
        real pool).
    """

    _initial_resources: Mapping = attrs.field(factory=dict, alias="resources", repr=False)
    opened_by_backend: Dict[str, int] = attrs.field(init=False, factory=dict)
    _sites: Dict[str, Site] = attrs.field(init=False, factory=dict)
    _pumps: List[iosim.IOPump] = attrs.field(init=False, factory=list)
    _local_ports: Any = attrs.field(init=False, factory=lambda: itertools.count(40000))

    def __attrs_post_init__(self) -> None:
        if self.reactor is None:
            # In memory, time is the test's: never the global reactor.
            self.reactor = Clock()
        for backend, resource in dict(self._initial_resources).items():
            self.accept(backend, resource)
        self._initial_resources = {}

    # -- what backends exist -------------------------------------------------

    def accept(self, backend: Union[str, Backend], resource) -> None:
        """
        Serve connections to C{backend} (an id C{host:port}, a URL or a
        L{Backend}) with C{resource}: an C{IResource}, or a C{Site} to use
        as it is.  Replaces a previous resource for new connections.
        """
        if isinstance(resource, Site):
            site = resource
        else:
            # No idle timeout: it would only be a pending call on the clock.
            site = Site(resource, reactor=self.reactor, timeout=None)
        self._sites[_backend_id(backend)] = site

    def refuse(self, backend: Union[str, Backend], *, drop_connections: bool = False) -> None:
        """
        Refuse new connections to C{backend}.  With C{drop_connections},
        its open connections are also closed from the backend's side (as
        when a backend process dies); L{flush} delivers that.
        """
        backend_id = _backend_id(backend)
        self._sites.pop(backend_id, None)
        if drop_connections:
            for pump in self._pumps:
                if pump.client.backend.id == backend_id:
                    pump.serverIO.loseConnection()

    def accepts(self, backend: Union[str, Backend]) -> bool:
        return _backend_id(backend) in self._sites

    # -- UpstreamPool ----------------------------------------------------------

    def connect(self, backend: Backend) -> defer.Deferred:
        """
        A new in-memory connection to C{backend}, already connected (the
        Deferred has fired), or a failed Deferred if it refuses.
        """
        generation = self._generations.setdefault(backend.id, 0)
        site = self._sites.get(backend.id)
        if site is None:
            self.connect_failures += 1
            return defer.fail(
                ConnectionRefusedError(string=f"{backend.id} accepts no in-memory connections")
            )
        self.opened += 1
        self.opened_by_backend[backend.id] = self.opened_by_backend.get(backend.id, 0) + 1
        conn = UpstreamConnection(self, backend, generation)
        backend_address = _address(backend.host, backend.port)
        local_address = IPv4Address("TCP", "127.0.0.1", next(self._local_ports))
        server = site.buildProtocol(local_address)
        server_transport = iosim.FakeTransport(
            server, isServer=True, hostAddress=backend_address, peerAddress=local_address
        )
        client_transport = iosim.FakeTransport(
            conn, isServer=False, hostAddress=local_address, peerAddress=backend_address
        )
        if backend.scheme == "https":
            directlyProvides(server_transport, ISSLTransport)
            directlyProvides(client_transport, ISSLTransport)
        # greet=False: nothing to exchange before the first request (as in
        # treq.testing); the pump's clock runs calls due "now" on each pump.
        clock = self.reactor if isinstance(self.reactor, Clock) else None
        pump = iosim.connect(server, server_transport, conn, client_transport, greet=False, clock=clock)
        self._pumps.append(pump)
        self._connections.add(conn)
        return defer.succeed(conn)

    def close_all(self) -> defer.Deferred:
        """
        Close every connection; in memory the returned Deferred has fired.
        """
        closed = super().close_all()
        self.flush()
        return closed

    # -- moving bytes ------------------------------------------------------------

    def flush(self) -> bool:
        """
        Move every pending byte and disconnect between heimdall and the
        backends until none is left.  Returns whether anything moved.
        """
        return _pump_until_quiet([self._pumps], MAX_FLUSH_ROUNDS)

    @property
    def open_connections(self) -> int:
        return len(self._pumps)


@attrs.frozen
class StubResponse:
    """
    A complete response, as the client received it.
    """

    code: int
    headers: Headers
    body: bytes
    phrase: bytes = b""

    def json(self) -> Any:
        return _json.loads(self.body)

    def text(self, encoding: str = "utf-8") -> str:
        return self.body.decode(encoding)

    def header(self, name: Union[str, bytes]) -> Optional[str]:
        """
        The first value of header C{name}, decoded as Latin-1, or L{None}.
        """
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        value = values[0]
        return value.decode("latin-1") if isinstance(value, bytes) else value


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body written in one go: in memory there is no reason to
    stream it, and no reactor to schedule a cooperator on.
    """

    def __init__(self, body: Union[bytes, str]) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.length = len(self.body)

    def startProducing(self, consumer) -> defer.Deferred:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _BodyCollector(Protocol):
    """
    Collects a response body; fails C{done} with the reason if the
    response broke before its end (heimdall aborts the client connection
    when a backend fails after the head was forwarded).
    """

    def __init__(self, done: defer.Deferred) -> None:
        self.done = done
        self.chunks: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason) -> None:
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


@implementer(IStreamClientEndpoint)
@attrs.define
class _SiteEndpoint:
    stub: "StubBalancer"
    secure: bool

    def connect(self, factory) -> defer.Deferred:
        return defer.succeed(self.stub._connect_client(factory, self.secure))


@implementer(IAgentEndpointFactory)
@attrs.define
class _SiteEndpointFactory:
    stub: "StubBalancer"

    def endpointForURI(self, uri):
        # Whatever the host, the connection goes to the stub's site.
        return _SiteEndpoint(self.stub, uri.scheme == b"https")


def _to_bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _to_headers(headers) -> Headers:
    if headers is None:
        return Headers()
    if isinstance(headers, Headers):
        return headers.copy()
    result = Headers()
    for name, value in headers.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        result.setRawHeaders(_to_bytes(name), [_to_bytes(v) for v in values])
    return result


class StubBalancer:
    """
    A whole heimdall balancer in memory, for tests.

    @param backends: backend URL (C{"http://host:port"}) to the C{IResource}
        (or C{Site}) that serves it.  The URLs only name the backends; no
        socket is opened.
    @param strategy: a registered strategy name.
    @param strategy_options: that strategy's options.
    @param seed: seeds the strategy's L{random.Random}, so that random
        starts and picks are the same on every run.
    @param site_options: keyword arguments for L{HeimdallSite}
        (C{max_body_bytes}, C{max_uri_bytes}, ...).
    @param resource_options: keyword arguments for L{BalancerResource}
        (C{retries}, C{response_timeout}, C{path_prefix}, ...).

    @ivar clock: the L{Clock} that heimdall, its site and its upstream
        connections use; it only moves when the test advances it.
    @ivar pool: the L{BackendPool}.
    @ivar upstream: the L{MemoryUpstreamPool}.
    @ivar resource: the L{BalancerResource}.
    @ivar site: the L{HeimdallSite} serving it, in memory.
    """

    def __init__(
        self,
        backends: Mapping[Union[str, Backend], Any] = {},
        strategy: str = "round_robin",
        strategy_options: Optional[Mapping[str, Any]] = None,
        *,
        seed: int = 0,
        site_options: Optional[Mapping[str, Any]] = None,
        **resource_options: Any,
    ) -> None:
        self.clock = Clock()
        self.pool = BackendPool(
            create_strategy(strategy, strategy_options, random=_random.Random(seed), clock=self.clock),
            clock=self.clock,
        )
        self.upstream = MemoryUpstreamPool(reactor=self.clock)
        for backend, resource in backends.items():
            self.add_backend(backend, resource)
        self.resource = BalancerResource(self.pool, self.upstream, clock=self.clock, **resource_options)
        self.site = HeimdallSite(self.resource, reactor=self.clock, **dict(site_options or {}))
        self.agent = Agent.usingEndpointFactory(self.clock, _SiteEndpointFactory(self))
        self._client_pumps: List[iosim.IOPump] = []
        self._client_ports = itertools.count(50000)
        self._client_ip = "127.0.0.1"
        self._treq = None

    # -- backends ----------------------------------------------------------------

    def add_backend(self, backend: Union[str, Backend], resource) -> Member:
        """
        Serve C{backend} (a URL or a L{Backend}) with C{resource} and add it
        to the pool.
        """
        if isinstance(backend, str):
            backend = Backend.from_url(backend)
        self.upstream.accept(backend.id, resource)
        return self.pool.add(backend)

    def remove_backend(self, backend: Union[str, Backend]) -> Member:
        backend_id = _backend_id(backend)
        self.upstream.refuse(backend_id)
        return self.pool.remove(backend_id)

    # -- requests ------------------------------------------------------------------

    def request_deferred(
        self,
        method: Union[str, bytes],
        path: Union[str, bytes],
        headers=None,
        data: Union[bytes, str, None] = None,
        *,
        client_ip: str = "127.0.0.1",
        host: Union[str, bytes] = "heimdall.test",
    ) -> defer.Deferred:
        """
        Send a request without moving any byte yet: returns a Deferred that
        fires with a L{StubResponse} once L{flush} has delivered the whole
        response (see L{result}).

        @param path: the request target, e.g. C{"/users?id=1"}.
        @param headers: a L{Headers}, or a mapping of names to a value or a
            list of values.
        @param client_ip: the client's address as heimdall sees it.
        @param host: the URL's host, sent as C{Host} unless C{headers} has one.
        """
        path = _to_bytes(path)
        if not path.startswith(b"/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        url = b"http://" + _to_bytes(host) + path
        producer = None if data is None else _BytesProducer(data)
        # The agent connects synchronously, inside request(): that is when
        # _connect_client reads the address.
        self._client_ip = client_ip
        d = self.agent.request(_to_bytes(method).upper(), url, _to_headers(headers), producer)
        return d.addCallback(self._read_response)

    def request(self, method, path, headers=None, data=None, **kwargs) -> StubResponse:
        """
        Send a request and return its complete L{StubResponse}, moving
        bytes until it is done.  Takes L{request_deferred}'s arguments.

        @raise ExchangeIncomplete: if the response is not complete once
            every byte has moved (a backend that has not answered).
        """
        return self.result(self.request_deferred(method, path, headers, data, **kwargs))

    def result(self, d: defer.Deferred) -> Any:
        """
        L{flush}, then return what C{d} fired with, or raise its failure.

        @raise ExchangeIncomplete: if C{d} has not fired; C{d} is left as
            it was, so advance L{clock} and call this again.
        """
        self.flush()
        box: List[Any] = []

        def grab(result):
            box.append(result)
            return result

        d.addBoth(grab)
        if not box:
            raise ExchangeIncomplete(
                f"the response has not completed ({self.upstream.open_connections} upstream "
                f"connection(s) open): a backend has not answered; advance stub.clock "
                f"(e.g. past response_timeout={self.resource.response_timeout}) and call "
                f"stub.result(d) again"
            )
        result = box[0]
        if isinstance(result, Failure):
            d.addErrback(lambda _: None)  # handled here, by raising it
            result.raiseException()
        return result

    def flush(self) -> bool:
        """
        Move every pending byte and disconnect, between the client and
        heimdall and between heimdall and the backends, until none is left.
        Returns whether anything moved.  Time does not move: only calls due
        at the clock's present time run.
        """
        return _pump_until_quiet([self._client_pumps, self.upstream._pumps], MAX_FLUSH_ROUNDS)

    @property
    def treq(self):
        """
        A C{treq.client.HTTPClient} over the in-memory site: its methods
        (C{get}, C{post}, ...) take any C{http://host/path} URL and return
        Deferreds; call L{flush} (or L{result}) to complete them.
        """
        if self._treq is None:
            from treq.client import HTTPClient

            self._treq = HTTPClient(agent=self.agent, data_to_body_producer=_BytesProducer)
        return self._treq

    def close(self) -> None:
        """
        Close every client and upstream connection.
        """
        for pump in self._client_pumps:
            pump.serverIO.loseConnection()
        self.upstream.close_all()
        self.flush()

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _read_response(response) -> defer.Deferred:
        headers = response.headers
        if isinstance(response.length, int) and not headers.hasHeader(b"content-length"):
            # Agent moves Content-Length out of the headers into .length;
            # put it back: heimdall did send it.
            headers = headers.copy()
            headers.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        done: defer.Deferred = defer.Deferred()
        response.deliverBody(_BodyCollector(done))
        return done.addCallback(
            lambda body: StubResponse(response.code, headers, body, response.phrase)
        )

    def _connect_client(self, factory, secure: bool):
        server_address = IPv4Address("TCP", "127.0.0.1", 8080)
        client_address = _address(self._client_ip, next(self._client_ports))
        server = self.site.buildProtocol(client_address)
        client = factory.buildProtocol(server_address)
        server_transport = iosim.FakeTransport(
            server, isServer=True, hostAddress=server_address, peerAddress=client_address
        )
        client_transport = iosim.FakeTransport(
            client, isServer=False, hostAddress=client_address, peerAddress=server_address
        )
        if secure:
            # Seen by request.isSecure(): X-Forwarded-Proto becomes https.
            directlyProvides(server_transport, ISSLTransport)
            directlyProvides(client_transport, ISSLTransport)
        pump = iosim.connect(
            server, server_transport, client, client_transport, greet=False, clock=self.clock
        )
        self._client_pumps.append(pump)
        return client
