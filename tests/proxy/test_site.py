"""
HeimdallSite's channel in memory (Clock + StringTransport): the header
deadline, the idle timeout, and what is left behind.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from heimdall.proxy.site import HeimdallSite


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


def _connect(**options):
    clock = Clock()
    site = HeimdallSite(Hello(), reactor=clock, **options)
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 12345))
    protocol.makeConnection(transport)
    return clock, protocol, transport


def _lose(protocol, transport):
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    protocol.connectionLost(Failure(ConnectionDone()))


def test_slowloris_head_gets_408_even_while_bytes_trickle_in():
    clock, protocol, transport = _connect(header_timeout=10, idle_timeout=100)
    for part in [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"]:
        protocol.dataReceived(part)
        clock.advance(3)  # idle timer reset each time; the head deadline is not
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert transport.disconnecting


def test_each_request_gets_its_own_header_deadline():
    clock, protocol, transport = _connect(header_timeout=10, idle_timeout=100)
    for _ in range(3):
        clock.advance(8)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert transport.value().endswith(b"hello")
        transport.clear()
    clock.advance(9)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_idle_keep_alive_connection_is_closed_after_idle_timeout():
    clock, protocol, transport = _connect(header_timeout=5, idle_timeout=30)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().endswith(b"hello")
    clock.advance(29)
    assert not transport.disconnecting
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # activity resets it
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


def test_timers_are_lazy_and_gone_after_disconnect():
    clock, protocol, transport = _connect(header_timeout=10, idle_timeout=60)
    for _ in range(50):
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # Fifty requests, still one header timer and one idle timer.
    assert len(clock.getDelayedCalls()) == 2
    _lose(protocol, transport)
    assert clock.getDelayedCalls() == []


def test_open_connections_are_counted_once_each():
    clock = Clock()
    site = HeimdallSite(Hello(), reactor=clock)
    opened = []
    for port in (1, 2):
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        protocol.makeConnection(transport)
        opened.append((protocol, transport))
    assert site.open_connections == 2
    _lose(*opened[0])
    assert site.open_connections == 1
    opened[0][0].uncount()  # a second time changes nothing
    _lose(*opened[1])
    assert site.open_connections == 0
