"""
The graceful shutdown's units, on a task.Clock: the site's client
connections (real HeimdallSite channels on StringTransports) and the
GracefulShutdown that drains them.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from heimdall.lifecycle.shutdown import GracefulShutdown
from heimdall.proxy.connections import ClientConnections, is_idle
from heimdall.proxy.site import HeimdallSite


class _Held(resource.Resource):
    """
    Answers nothing until the test finishes the request.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        return server.NOT_DONE_YET


class _Transport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True
        self.loseConnection()


def _site(clock):
    held = _Held()
    return HeimdallSite(held, reactor=clock, header_timeout=1000, idle_timeout=1000), held


def _connect(site):
    channel = site.buildProtocol(None)
    transport = _Transport()
    channel.makeConnection(transport)
    return channel, transport


def _lose(channel, transport):
    """
    What the reactor does after loseConnection or abortConnection.
    """
    if transport.disconnecting:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        channel.connectionLost(Failure(ConnectionDone()))


def _answer(request):
    request.setHeader(b"Content-Length", b"2")
    request.write(b"ok")
    request.finish()


class _Port:
    def __init__(self, log):
        self.log = log

    def stopListening(self):
        self.log.append("stopped")
        return defer.succeed(None)


def test_connections_are_tracked_and_told_idle_from_busy():
    clock = task.Clock()
    site, held = _site(clock)
    idle, _ = _connect(site)
    busy, _ = _connect(site)
    busy.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(site.connections) == 2 and site.connections.busy() == 1
    assert is_idle(idle) and not is_idle(busy)
    # A head begun is a request under way too.
    idle.dataReceived(b"GET / HTTP/1.1\r\n")
    assert not is_idle(idle)


def test_drain_closes_idle_connections_and_ends_keep_alive_on_busy_ones():
    clock = task.Clock()
    site, held = _site(clock)
    idle, idle_transport = _connect(site)
    busy, busy_transport = _connect(site)
    busy.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    site.connections.drain()
    assert idle_transport.disconnecting and not busy_transport.disconnecting
    _lose(idle, idle_transport)
    assert len(site.connections) == 1
    empty = site.connections.when_empty()
    assert not empty.called
    _answer(held.requests[0])
    assert busy_transport.value().startswith(b"HTTP/1.1 200")
    assert busy_transport.disconnecting  # closed after the response
    _lose(busy, busy_transport)
    assert empty.called and len(site.connections) == 0


def test_a_request_still_sending_its_head_when_the_drain_starts_gets_no_keep_alive():
    clock = task.Clock()
    site, held = _site(clock)
    channel, transport = _connect(site)
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    site.connections.drain()
    channel.dataReceived(b"Host: x\r\n\r\n")
    _answer(held.requests[0])
    assert transport.disconnecting


def test_a_tunnel_is_busy_until_the_grace_ends():
    clock = task.Clock()
    site, held = _site(clock)
    channel, transport = _connect(site)
    lost = []

    class Tunnel:
        def client_data(self, data):
            pass

        def client_lost(self, reason):
            lost.append(reason)

    channel.tunnel = Tunnel()  # what hand_over leaves after a 101
    shutdown = GracefulShutdown(clock, 5.0)
    d = shutdown.drain([], [site.connections])
    assert not transport.disconnecting
    clock.advance(5.0)
    assert transport.aborted and d.result == "grace over"
    _lose(channel, transport)
    assert lost and len(site.connections) == 0


def test_drain_stops_listening_first_and_ends_when_the_last_request_finishes():
    clock = task.Clock()
    site, held = _site(clock)
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    log = []
    shutdown = GracefulShutdown(clock, 10.0)
    d = shutdown.drain([_Port(log), None], [site.connections])
    assert log == ["stopped"] and not d.called
    clock.advance(9.0)
    assert not d.called
    _answer(held.requests[0])
    _lose(channel, transport)
    assert d.result == "drained" and not transport.aborted
    assert clock.getDelayedCalls() == []  # the grace timer was cancelled


def test_the_grace_over_aborts_requests_still_running():
    clock = task.Clock()
    site, held = _site(clock)
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    d = GracefulShutdown(clock, 10.0).drain([], [site.connections])
    clock.advance(9.99)
    assert not transport.aborted
    clock.advance(0.01)
    assert transport.aborted and d.result == "grace over"


def test_cut_short_aborts_at_once_even_before_the_drain():
    clock = task.Clock()
    site, held = _site(clock)
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    shutdown = GracefulShutdown(clock, 10.0)
    d = shutdown.drain([], [site.connections])
    clock.advance(1.0)
    shutdown.cut_short()
    assert transport.aborted and d.result == "cut short"
    _lose(channel, transport)
    assert clock.getDelayedCalls() == []  # the grace timer too

    site2, _ = _site(clock)
    channel2, transport2 = _connect(site2)
    channel2.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    early = GracefulShutdown(clock, 10.0)
    early.cut_short()  # a second signal before the drain began
    assert early.drain([], [site2.connections]).result == "cut short" and transport2.aborted


def test_nothing_open_drains_at_once_and_zero_grace_waits_for_nothing():
    clock = task.Clock()
    site, _ = _site(clock)
    assert GracefulShutdown(clock, 10.0).drain([], [site.connections]).result == "drained"
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    d = GracefulShutdown(clock, 0.0).drain([], [site.connections])
    clock.advance(0)
    assert d.result == "grace over" and transport.aborted


def test_replace_moves_a_connection_to_its_http2_protocol():
    connections = ClientConnections()
    old, new = object(), object()
    connections.add(old)
    connections.replace(old, new)
    empty = connections.when_empty()
    connections.discard(old)
    assert not empty.called
    connections.discard(new)
    assert empty.called


def test_an_idle_http2_connection_gets_a_goaway_and_closes():
    import pytest

    from heimdall.proxy import h2

    if not h2.H2_ENABLED:
        pytest.skip("no h2 package")
    clock = task.Clock()
    site, _ = _site(clock)
    connection = h2.HeimdallH2Connection(clock)
    connection.site = site
    transport = _Transport()
    connection.makeConnection(transport)
    site.connections.add(connection)
    assert is_idle(connection)
    transport.clear()
    site.connections.drain()
    assert transport.value()[3:4] == b"\x07"  # a GOAWAY frame
    assert transport.disconnecting
    connection.connectionLost(None)
    assert len(site.connections) == 0
