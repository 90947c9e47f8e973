"""
Connection limits (issue 10): limits.max_connections pauses the listening
ports (the N+1th connection waits in the kernel's backlog until one
closes) and limits.max_connections_per_client answers 429 with
Retry-After.  Units on fake ports and a Clock; then through real sockets
on 127.0.0.1, plain and TLS.
"""

from __future__ import annotations

import socket
import ssl

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from heimdall.observe.protection import ProtectionMetrics
from heimdall.proxy.limits import REFUSAL_LINGER, TOO_MANY_REQUESTS, ConnectionLimits
from tests.rawhttp import raw_connect, raw_exchange

# --- units ------------------------------------------------------------------------------


class _Port:
    def __init__(self):
        self.reading = True
        self.numberAccepts = 100
        self.disconnecting = False

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True


class _Quiet(Protocol):
    pass


def _addr(host="10.0.0.1", port=1234):
    return IPv4Address("TCP", host, port)


def _open(limits, factory, host="10.0.0.1"):
    protocol = limits.build(factory, _addr(host))
    protocol.makeConnection(StringTransport())
    return protocol


def test_at_max_connections_the_ports_stop_reading_and_resume_below():
    clock = task.Clock()
    limits = ConnectionLimits(max_connections=3, max_per_client=0, clock=clock)
    port = _Port()
    limits.add_port(port)
    assert port.numberAccepts == 3  # one read of the port never accepts more than there is room for
    factory = Factory.forProtocol(_Quiet)
    opened = [_open(limits, factory) for _ in range(3)]
    assert (limits.current, limits.paused, port.reading, limits.accept_pauses) == (3, True, False, 1)
    opened[0].connectionLost(None)
    assert (limits.current, limits.paused, port.reading) == (2, False, True)
    assert port.numberAccepts == 1
    clock.advance(1)
    assert clock.getDelayedCalls() == []
    limits.close()


def test_near_the_limit_a_port_is_clamped_after_its_read():
    clock = task.Clock()
    limits = ConnectionLimits(max_connections=10, max_per_client=0, clock=clock)
    port = _Port()
    limits.add_port(port)
    port.numberAccepts = 30  # what the port set after a full read
    _open(limits, Factory.forProtocol(_Quiet))
    clock.advance(0)
    assert port.numberAccepts == 9


def test_a_client_over_its_limit_gets_429_and_is_closed():
    clock = task.Clock()
    limits = ConnectionLimits(max_connections=0, max_per_client=2, clock=clock)
    factory = Factory.forProtocol(_Quiet)
    first, second = _open(limits, factory), _open(limits, factory)
    other = _open(limits, factory, host="10.0.0.2")  # another address has its own count
    refused = limits.build(factory, _addr())
    transport = StringTransport()  # not a TCP transport: as inside TLS
    refused.makeConnection(transport)
    assert transport.value() == b""  # TLS: once the handshake is done
    refused.handshakeCompleted()
    clock.advance(0)
    assert transport.value() == TOO_MANY_REQUESTS
    assert b"\r\nRetry-After: 1\r\n" in TOO_MANY_REQUESTS and TOO_MANY_REQUESTS.startswith(b"HTTP/1.1 429 ")
    assert transport.disconnecting  # closed after the answer
    assert (limits.current, limits.refused_per_client) == (3, 1)
    clock.advance(REFUSAL_LINGER)
    refused.connectionLost(None)
    assert clock.getDelayedCalls() == []
    first.connectionLost(None)
    again = limits.build(factory, _addr())
    assert isinstance(again, _Quiet)  # room again once one closed
    for protocol in (second, other):
        protocol.connectionLost(None)


def test_a_half_closing_transport_is_aborted_after_the_linger():
    clock = task.Clock()
    limits = ConnectionLimits(max_connections=0, max_per_client=1, clock=clock)
    _open(limits, Factory.forProtocol(_Quiet))

    from twisted.internet.abstract import FileDescriptor

    class HalfClosing(StringTransport, FileDescriptor):  # a socket's transport
        half_closed = aborted = False
        write = StringTransport.write

        def loseWriteConnection(self):
            self.half_closed = True

        def abortConnection(self):
            self.aborted = True

    refused = limits.build(Factory.forProtocol(_Quiet), _addr())
    transport = HalfClosing()
    refused.makeConnection(transport)
    assert transport.value() == TOO_MANY_REQUESTS
    assert transport.half_closed and not transport.disconnecting and not transport.aborted
    refused.dataReceived(b"GET / HTTP/1.1\r\n\r\n")  # read and dropped
    clock.advance(REFUSAL_LINGER)
    assert transport.aborted


def test_per_client_counts_are_forgotten_at_zero():
    limits = ConnectionLimits(max_connections=0, max_per_client=5, clock=task.Clock())
    protocols = [_open(limits, Factory.forProtocol(_Quiet), host=f"10.0.0.{i}") for i in range(50)]
    for protocol in protocols:
        protocol.connectionLost(None)
    assert limits._per_client == {} and limits.current == 0


# --- through real sockets ---------------------------------------------------------------


class _Answer(Protocol):
    """A backend answering each request head with 200, kept alive."""

    buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def limited(reactor, tracked, start_proxy):
    """
    limited(max_connections, max_per_client, wrap=None) -> (port, limits,
    registry): a proxy site behind ConnectionLimits on 127.0.0.1:0.
    """

    def start(max_connections, max_per_client, wrap=None):
        backend_port = tracked.listen(Factory.forProtocol(_Answer)).getHost().port
        proxy = start_proxy([f"http://127.0.0.1:{backend_port}"])
        limits = ConnectionLimits(max_connections=max_connections, max_per_client=max_per_client, clock=reactor)
        factory = limits.wrap(proxy.site)
        if wrap is not None:
            factory = wrap(factory)
        port = tracked.listen(factory)
        limits.add_port(port)
        tracked.cleanups.append(limits.close)
        registry = CollectorRegistry()
        ProtectionMetrics(registry, sites=[proxy.site], limits=limits)
        return port.getHost().port, limits, registry

    return start


def _request(client, path=b"/"):
    client.transport.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)


def _later(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def _until(reactor, predicate, timeout=3.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        yield _later(reactor, 0.01)
    return predicate()


@defer.inlineCallbacks
def _answered(reactor, client, count, timeout=3.0):
    for _ in range(int(timeout / 0.01)):
        if client.received.count(b"HTTP/1.1 200 OK") >= count:
            return True
        yield _later(reactor, 0.01)
    return False


@pytest_twisted.inlineCallbacks
def test_the_n_plus_first_connection_waits_until_one_closes(reactor, limited):
    port, limits, registry = limited(max_connections=2, max_per_client=0)
    first = yield raw_connect(reactor, port)
    second = yield raw_connect(reactor, port)
    for client in (first, second):
        _request(client)
        assert (yield _answered(reactor, client, 1))
    assert limits.current == 2 and limits.paused
    # The kernel completes the third handshake (the backlog), heimdall does not accept it.
    third = yield raw_connect(reactor, port)
    _request(third)
    yield _later(reactor, 0.3)
    assert third.received == b"" and limits.current == 2
    assert registry.get_sample_value("heimdall_client_connections") == 2
    assert registry.get_sample_value("heimdall_accept_paused") == 1
    assert registry.get_sample_value("heimdall_client_connections_limit") == 2
    first.transport.loseConnection()
    yield first.closed
    assert (yield _answered(reactor, third, 1))  # accepted and served once one closed
    assert limits.current == 2
    assert registry.get_sample_value("heimdall_accept_pauses_total") >= 1
    # The others are still served, keep-alive.
    _request(second)
    assert (yield _answered(reactor, second, 2))
    for client in (second, third):
        client.transport.loseConnection()
        yield client.closed
    assert (yield _until(reactor, lambda: limits.current == 0)) and not limits.paused
    assert registry.get_sample_value("heimdall_accept_paused") == 0


@pytest_twisted.inlineCallbacks
def test_a_burst_of_connections_never_goes_over_the_limit(reactor, limited):
    port, limits, _ = limited(max_connections=5, max_per_client=0)
    socks = []
    try:
        for _ in range(20):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
        yield _later(reactor, 0.3)
        assert limits.current == 5
    finally:
        for sock in socks:
            sock.close()
    assert (yield _until(reactor, lambda: limits.current == 0))


@pytest_twisted.inlineCallbacks
def test_a_client_over_its_limit_gets_429_with_retry_after(reactor, limited):
    port, limits, registry = limited(max_connections=100, max_per_client=2)
    held = []
    for _ in range(2):
        held.append((yield raw_connect(reactor, port)))
    for client in held:
        _request(client)
        assert (yield _answered(reactor, client, 1))
    raw = yield raw_exchange(reactor, port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=3.0)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 429 ") and b"\r\nRetry-After: 1" in head
    assert registry.get_sample_value("heimdall_connections_refused_total", {"reason": "per_client"}) == 1
    assert limits.current == 2
    held[0].transport.loseConnection()
    yield held[0].closed
    again = yield raw_connect(reactor, port)
    _request(again)
    assert (yield _answered(reactor, again, 1))
    for client in (held[1], again):
        client.transport.loseConnection()
        yield client.closed


@pytest_twisted.inlineCallbacks
def test_per_client_429_and_the_count_on_the_tls_port(reactor, limited, tmp_path):
    import trustme
    from twisted.internet import threads

    from heimdall.config.tls import CertificateConfig, TlsConfig
    from heimdall.tls.server import ServerTls
    from tests.tlsutil import client_context, tls_request, write_ca, write_cert

    ca = trustme.CA()
    cert = write_cert(ca, tmp_path, "site", "site.test")
    server_tls = ServerTls(TlsConfig(listen="tcp:0", certificates=(CertificateConfig(cert.cert, cert.key),)))
    port, limits, _ = limited(max_connections=100, max_per_client=1, wrap=server_tls.wrap)
    context = client_context(write_ca(ca, tmp_path))

    def held_and_refused():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="site.test") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                first = tls.recv(65536)
                refused = tls_request(port, context, "site.test", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                return first, refused.response

    first, refused = yield threads.deferToThread(held_and_refused)
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert refused.startswith(b"HTTP/1.1 429 ")  # inside TLS
    assert limits.refused_per_client == 1
    assert (yield _until(reactor, lambda: limits.current == 0))


# --- a twistd heimdall: the limits wired to its listener and /metrics ---------------------


@pytest_twisted.inlineCallbacks
def test_twistd_heimdall_limits_its_clients_and_shows_it_in_metrics(reactor, start_backends, run_heimdall, http):
    from tests.netutil import free_port

    [backend] = start_backends(1)
    port, manager = free_port(), free_port()
    run_heimdall(
        {
            "listen": f"tcp:{port}:interface=127.0.0.1",
            "backends": [f"http://127.0.0.1:{backend}"],
            "access_log": {"enabled": False},
            "limits": {"max_connections": 50, "max_connections_per_client": 1},
            "manager": {"listen": f"tcp:{manager}:interface=127.0.0.1"},
        }
    )
    for _ in range(400):  # until it listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            yield _later(reactor, 0.05)
    yield _later(reactor, 0.3)  # heimdall sees that probe closed
    held = yield raw_connect(reactor, port)
    _request(held)
    assert (yield _answered(reactor, held, 1, timeout=10.0))
    raw = yield raw_exchange(reactor, port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5.0)
    assert raw.startswith(b"HTTP/1.1 429 ") and b"\r\nRetry-After: 1\r\n" in raw
    response = yield http.get(f"http://127.0.0.1:{manager}/metrics")
    text = (yield response.text()).splitlines()
    assert 'heimdall_connections_refused_total{reason="per_client"} 1.0' in text
    assert "heimdall_client_connections 1.0" in text
    assert "heimdall_client_connections_limit 50.0" in text
    assert 'heimdall_timeouts_total{kind="upstream_read"} 0.0' in text
    held.transport.loseConnection()
    yield held.closed


def test_the_limits_keys_and_their_defaults():
    from heimdall.config.model import LimitsConfig, parse_config
    from heimdall.errors import ConfigError

    defaults = LimitsConfig()
    assert (defaults.max_connections, defaults.max_connections_per_client) == (10000, 0)
    config = parse_config({"limits": {"max_connections": 0, "max_connections_per_client": 8}})
    assert (config.limits.max_connections, config.limits.max_connections_per_client) == (0, 8)
    with pytest.raises(ConfigError) as info:
        parse_config({"limits": {"max_connections": -1}})
    assert info.value.path == "limits.max_connections"
    with pytest.raises(ConfigError) as info:
        parse_config({"limits": {"max_connections_per_client": "8"}})
    assert info.value.path == "limits.max_connections_per_client"


def test_no_limit_never_pauses():
    limits = ConnectionLimits(max_connections=0, max_per_client=0, clock=task.Clock())
    port = _Port()
    limits.add_port(port)
    for _ in range(20000):
        limits.build(Factory.forProtocol(_Quiet), _addr())
    assert port.reading and limits.current == 20000 and port.numberAccepts == 100
