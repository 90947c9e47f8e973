"""
Timeouts on every wait (issue 10): upstream_read, client_write,
client_body and request.  Units on a task.Clock; then through real sockets
on 127.0.0.1: a backend that stalls mid-body, a client that stops reading,
a slow request body, the request limit.  Each shows both connections
closed and the reason in the request record (the access log's
C{timeout}).
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol
from zope.interface.verify import verifyObject

from heimdall.interfaces import ITimedExchange
from heimdall.pool.values import FailureKind
from heimdall.proxy.exchange import ProxyExchange
from heimdall.proxy.timeouts import (
    CLIENT_BODY,
    CLIENT_WRITE,
    REQUEST,
    UPSTREAM_READ,
    ExchangeTimer,
)
from tests.rawhttp import raw_connect, raw_exchange

# --- units: ExchangeTimer on a Clock ---------------------------------------------------


class _Owner:
    timeout = None

    def __init__(self):
        self.fired = []

    def timed_out(self, kind):
        self.fired.append(kind)


def _timer(body=3.0, write=5.0, reusable=False):
    clock = task.Clock()
    return clock, ExchangeTimer(clock, body_limit=body, write_limit=write, reusable=reusable)


def _started(read_limit, request_limit=0, body_pending=False, **limits):
    """A timer started for one exchange: (clock, timer, its owner)."""
    clock, timer = _timer(**limits)
    owner = _Owner()
    timer.start(owner, read_limit=read_limit, request_limit=request_limit, body_pending=body_pending)
    return clock, timer, owner


def test_the_body_wait_fires_after_the_longest_gap_not_the_total():
    clock, timer, owner = _started(10, body_pending=True, body=3)
    for _ in range(5):
        clock.advance(2)
        timer.body_piece()
    assert owner.fired == []  # 10 s in all, never 3 s without a piece
    clock.advance(2.9)
    assert owner.fired == []
    clock.advance(0.2)
    assert owner.fired == [CLIENT_BODY]
    assert clock.getDelayedCalls() == []


def test_a_body_paused_by_heimdall_is_not_waited_on():
    clock, timer, owner = _started(10, body_pending=True, body=3)
    timer.body_paused()
    clock.advance(20)
    assert owner.fired == []
    timer.body_resumed()
    clock.advance(2.9)
    assert owner.fired == []
    clock.advance(0.2)
    assert owner.fired == [CLIENT_BODY]


def test_a_complete_body_is_not_waited_on():
    clock, timer, owner = _started(10, body_pending=True, body=3)
    timer.body_done()
    clock.advance(30)
    assert owner.fired == []


def test_upstream_read_is_the_gap_between_reads():
    clock, timer, owner = _started(2)
    clock.advance(100)  # before the head: the connection's response timeout, not this
    timer.reading()
    for _ in range(10):
        clock.advance(1.5)
        timer.read()
    assert owner.fired == []
    clock.advance(2.1)
    assert owner.fired == [UPSTREAM_READ]


def test_a_paused_response_waits_on_the_client_not_the_backend():
    clock, timer, owner = _started(1, write=5)
    timer.reading()
    timer.writes_paused()
    clock.advance(4.9)
    assert owner.fired == []  # not upstream_read: the client holds it up
    timer.writes_resumed()
    clock.advance(0.9)
    assert owner.fired == []  # reading again, from the resume
    timer.writes_paused()
    clock.advance(5.1)
    assert owner.fired == [CLIENT_WRITE]


def test_the_request_limit_is_the_whole_request_whatever_the_activity():
    clock, timer, owner = _started(10, request_limit=4, body_pending=True)
    for _ in range(3):
        clock.advance(1)
        timer.body_piece()
    timer.body_done()
    timer.reading()
    clock.advance(0.9)
    timer.read()
    assert owner.fired == []
    clock.advance(0.2)
    assert owner.fired == [REQUEST]


def test_one_delayed_call_however_many_reads():
    clock, timer, owner = _started(2)
    timer.reading()
    calls = set()
    for _ in range(1000):
        clock.advance(0.01)
        timer.read()
        calls.update(id(c) for c in clock.getDelayedCalls())
        assert len(clock.getDelayedCalls()) == 1
    # Re-armed only when it fired early: about once per read_limit.
    assert len(calls) <= 6


def test_a_shorter_wait_moves_the_call_earlier():
    clock, timer, owner = _started(60, body_pending=True, body=30)
    timer.body_done()
    timer.reading()
    [call] = clock.getDelayedCalls()
    timer.start(owner, read_limit=60, request_limit=1, body_pending=False)
    assert clock.getDelayedCalls() == [call] and call.getTime() == pytest.approx(1)
    clock.advance(1)
    assert owner.fired == [REQUEST]


def test_a_reusable_timer_keeps_its_call_across_exchanges():
    clock, timer = _timer(reusable=True)
    first, second = _Owner(), _Owner()
    timer.start(first, read_limit=2, request_limit=0, body_pending=False)
    timer.reading()
    [call] = clock.getDelayedCalls()
    timer.stop()
    timer.start(second, read_limit=2, request_limit=0, body_pending=False)
    timer.reading()
    assert clock.getDelayedCalls() == [call]  # no new call for the next request
    clock.advance(2.5)
    assert (first.fired, second.fired) == ([], [UPSTREAM_READ])
    timer.stop()
    clock.advance(10)
    assert clock.getDelayedCalls() == []  # an idle timer drops its call
    timer.cancel()


def test_a_one_shot_timer_cancels_its_call_when_stopped():
    clock, timer = _timer()
    timer.start(_Owner(), read_limit=2, request_limit=5, body_pending=True)
    assert len(clock.getDelayedCalls()) == 1
    timer.stop()
    assert clock.getDelayedCalls() == []


def test_the_exchange_provides_ITimedExchange_and_IPushProducer():
    from twisted.internet.interfaces import IPushProducer

    exchange = ProxyExchange.__new__(ProxyExchange)
    exchange.timeout = None
    assert verifyObject(ITimedExchange, exchange)
    assert verifyObject(IPushProducer, exchange)  # the client's producer for the response body


# --- through real sockets -------------------------------------------------------------


class _Backend(Protocol):
    """Calls factory.on_head(self) once the request head is in."""

    def connectionMade(self):
        self.factory.protocols.append(self)
        self.buffer = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        had_head = b"\r\n\r\n" in self.buffer
        self.buffer += data
        if not had_head and b"\r\n\r\n" in self.buffer:
            self.factory.on_head(self)

    def connectionLost(self, reason):
        self.lost.callback(None)


class Backend(Factory):
    protocol = _Backend

    def __init__(self, on_head):
        self.on_head = on_head
        self.protocols = []


def _setup(tracked, start_proxy, on_head, site_options=None, **resource_options):
    backend = Backend(on_head)
    port = tracked.listen(backend).getHost().port
    records, outcomes = [], []
    proxy = start_proxy(
        [f"http://127.0.0.1:{port}"], site_options=site_options, request_observers=[records.append], **resource_options
    )
    proxy.pool.subscribe_outcomes(lambda member, outcome: outcomes.append(outcome))
    return proxy, backend, records, outcomes


def _when(reactor, predicate, timeout=5.0):
    """Fires once predicate() holds (polled), or fails after timeout."""

    @defer.inlineCallbacks
    def poll():
        for _ in range(int(timeout / 0.02)):
            if predicate():
                return
            yield task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("timed out waiting")

    return poll()


@pytest_twisted.inlineCallbacks
def test_a_backend_that_stalls_mid_body_is_cut_off(reactor, tracked, start_proxy):
    def half_a_body(p):
        p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)

    proxy, backend, records, outcomes = _setup(tracked, start_proxy, half_a_body, upstream_read=0.3)
    raw = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5.0)
    # The client saw a truncated response: the connection closed mid-body.
    assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b"x" * 100)
    [upstream] = backend.protocols
    yield upstream.lost  # the upstream connection is closed too
    [record] = records
    assert (record.status, record.timeout) == (200, UPSTREAM_READ)
    [outcome] = outcomes
    assert outcome.failure is FailureKind.TIMEOUT  # a passive health failure
    assert proxy.pool.members()[0].failures_total == 1


@pytest_twisted.inlineCallbacks
def test_a_backend_that_keeps_sending_slowly_is_fine(reactor, tracked, start_proxy):
    def trickle(p):
        p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for i in range(6):
            reactor.callLater(0.1 * (i + 1), p.transport.write, b"y")

    proxy, backend, records, _ = _setup(tracked, start_proxy, trickle, upstream_read=0.3)
    raw = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.endswith(b"\r\n\r\nyyyyyy")
    assert records[0].timeout is None and records[0].status == 200


def _stream_forever(reactor):
    """A backend that streams a chunked body as long as it may write."""

    def start(p):
        p.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)

        class Streamer:
            paused = False

            def pauseProducing(self):
                self.paused = True

            def resumeProducing(self):
                self.paused = False
                self.write()

            def stopProducing(self):
                self.paused = True

            def write(self):
                while not self.paused and p.transport.connected:
                    p.transport.write(chunk)

        streamer = Streamer()
        p.transport.registerProducer(streamer, True)
        streamer.write()

    return start


def _stalled_client(port):
    """A raw socket with a tiny receive buffer that sends a request and never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    return sock


def _closed_by_peer(sock) -> bool:
    """Whether the peer closed: read what is left until EOF or a reset."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest_twisted.inlineCallbacks
def test_a_client_that_stops_reading_is_closed_with_its_upstream(reactor, tracked, start_proxy):
    proxy, backend, records, outcomes = _setup(
        tracked, start_proxy, _stream_forever(reactor), site_options={"client_write_timeout": 0.3}, upstream_read=5
    )
    sock = _stalled_client(proxy.port)
    try:
        yield _when(reactor, lambda: records)
        [record] = records
        assert (record.status, record.timeout) == (200, CLIENT_WRITE)
        [upstream] = backend.protocols
        yield upstream.lost
        assert _closed_by_peer(sock)
        # The client's fault, not the backend's.
        assert outcomes[0].failure is FailureKind.CLIENT_GONE
        assert proxy.pool.members()[0].failures_total == 0
    finally:
        sock.close()


@pytest_twisted.inlineCallbacks
def test_a_slow_reader_that_keeps_reading_gets_everything(reactor, tracked, start_proxy):
    size = 8 * 1024 * 1024  # over the sockets' buffers: heimdall must wait on the client

    def big(p):
        p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        p.transport.write(b"b" * size)

    proxy, backend, records, _ = _setup(tracked, start_proxy, big, site_options={"client_write_timeout": 0.5})
    pauses = []
    original = ProxyExchange.pauseProducing

    def counting(self):
        pauses.append(1)
        original(self)

    ProxyExchange.pauseProducing = counting
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", proxy.port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    sock.setblocking(False)
    received = 0
    try:
        for _ in range(100):
            # Stall 0.15 s (under client_write), then read up to 1 MiB.
            yield task.deferLater(reactor, 0.15, lambda: None)
            burst = 0
            while burst < 1 << 20 and received + burst <= size:
                try:
                    data = sock.recv((1 << 20) - burst)
                except BlockingIOError:
                    yield task.deferLater(reactor, 0.001, lambda: None)
                    continue
                assert data
                burst += len(data)
            received += burst
            if received > size:
                break
        assert len(pauses) > 3  # heimdall waited on the client, again and again
        yield _when(reactor, lambda: records)
        assert records[0].timeout is None and records[0].bytes_out == size
    finally:
        ProxyExchange.pauseProducing = original
        sock.close()


@pytest_twisted.inlineCallbacks
def test_a_body_that_never_comes_gets_408(reactor, tracked, start_proxy):
    proxy, backend, records, outcomes = _setup(
        tracked, start_proxy, lambda p: None, site_options={"client_body_timeout": 0.3}
    )
    raw = yield raw_exchange(reactor, proxy.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 408 ")
    [record] = records
    assert (record.status, record.timeout) == (408, CLIENT_BODY)
    [upstream] = backend.protocols
    yield upstream.lost  # the backend never takes the truncated request as whole
    assert outcomes[0].failure is FailureKind.CLIENT_GONE


@pytest_twisted.inlineCallbacks
def test_a_body_that_stalls_after_some_bytes_went_upstream_aborts_both(reactor, tracked, start_proxy):
    proxy, backend, records, _ = _setup(tracked, start_proxy, lambda p: None, site_options={"client_body_timeout": 0.3})
    client = yield raw_connect(reactor, proxy.port)
    client.transport.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
    yield _when(reactor, lambda: backend.protocols and backend.protocols[0].buffer.endswith(b"hello"))
    received = yield client.closed
    assert received == b""  # no answer: the request was half sent, so the connection was cut
    [upstream] = backend.protocols
    yield upstream.lost
    assert records[0].timeout == CLIENT_BODY


@pytest_twisted.inlineCallbacks
def test_a_body_that_keeps_coming_slowly_is_fine(reactor, tracked, start_proxy):
    def respond_later(p):
        def check():
            if p.buffer.endswith(b"abcdef"):
                p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif p.transport.connected:
                reactor.callLater(0.05, check)

        check()

    proxy, backend, records, _ = _setup(tracked, start_proxy, respond_later, site_options={"client_body_timeout": 0.3})
    client = yield raw_connect(reactor, proxy.port)
    client.transport.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nConnection: close\r\n\r\n")
    for letter in b"abcdef":
        yield task.deferLater(reactor, 0.15, lambda: None)
        client.transport.write(bytes([letter]))
    received = yield client.closed
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"ok")
    assert records[0].timeout is None


@pytest_twisted.inlineCallbacks
def test_the_request_limit_cuts_a_response_that_never_ends(reactor, tracked, start_proxy):
    calls = []

    def endless_trickle(p):
        p.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")

        def more():
            if p.transport.connected:
                p.transport.write(b"1\r\nq\r\n")
                calls.append(reactor.callLater(0.05, more))

        more()

    proxy, backend, records, _ = _setup(tracked, start_proxy, endless_trickle, upstream_read=0.3, request_timeout=0.6)
    tracked.cleanups.append(lambda: [c.cancel() for c in calls if c.active()])
    raw = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert not raw.endswith(b"0\r\n\r\n")  # truncated, never a complete-looking response
    [record] = records
    assert (record.status, record.timeout) == (200, REQUEST)
    assert 0.5 < record.total_time < 2.0
    [upstream] = backend.protocols
    yield upstream.lost


@pytest_twisted.inlineCallbacks
def test_the_request_limit_before_the_head_is_504(reactor, tracked, start_proxy):
    proxy, backend, records, outcomes = _setup(tracked, start_proxy, lambda p: None, request_timeout=0.3)
    raw = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 504 ")
    assert records[0].timeout == REQUEST
    [upstream] = backend.protocols
    yield upstream.lost
    assert outcomes[0].failure is FailureKind.TIMEOUT  # it waited on the backend


# --- the reason, logged and counted -----------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_each_timeout_is_counted_in_the_metrics_by_kind(reactor, tracked, start_proxy):
    from prometheus_client import CollectorRegistry

    from heimdall.observe.protection import ProtectionMetrics

    def half_a_body(p):
        p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nxx")

    proxy, backend, records, _ = _setup(
        tracked, start_proxy, half_a_body, site_options={"header_timeout": 0.2}, upstream_read=0.2
    )
    registry = CollectorRegistry()
    metrics = ProtectionMetrics(registry, sites=[proxy.site])
    detach = metrics.attach([proxy.resource])
    try:
        yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        raw = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n")  # never ends its head
        assert raw.startswith(b"HTTP/1.1 408 ")

        def value(kind):
            return registry.get_sample_value("heimdall_timeouts_total", {"kind": kind})

        assert (value("upstream_read"), value("client_header"), value("client_write")) == (1, 1, 0)
    finally:
        detach()
    assert registry.get_sample_value("heimdall_timeouts_total", {"kind": "upstream_read"}) is None


def test_the_access_log_names_the_timeout():
    import io
    import json

    from heimdall.observe.accesslog import AccessLog
    from heimdall.proxy.exchange import RequestRecord

    record = RequestRecord("127.0.0.1", b"GET", b"/", 200, "b:1", 0.1, 0.2, 0, 10, 1, timeout=UPSTREAM_READ)
    text, lines = io.StringIO(), io.StringIO()
    AccessLog("text", text).observe(record)
    AccessLog("json", lines).observe(record)
    AccessLog("text", text).observe(RequestRecord("127.0.0.1", b"GET", b"/", 200, "b:1", 0.1, 0.2, 0, 10, 1))
    first, second = text.getvalue().splitlines()
    assert first.endswith(" timeout=upstream_read") and "timeout=" not in second
    assert json.loads(lines.getvalue())["timeout"] == "upstream_read"


# --- config --------------------------------------------------------------------------------


def test_the_timeouts_keys_their_defaults_and_a_services_own():
    from heimdall.config.model import TimeoutsConfig, parse_config
    from heimdall.config.services import service_configs
    from heimdall.errors import ConfigError

    defaults = TimeoutsConfig()
    assert (defaults.upstream_read, defaults.client_write, defaults.client_body, defaults.request) == (60, 60, 30, 0)
    config = parse_config(
        {
            "timeouts": {"upstream_read": "2s", "client_write": "3s", "client_body": "4s", "request": "1m"},
            "services": {"api": {"backends": ["http://127.0.0.1:1"], "timeouts": {"upstream_read": "500ms", "request": 0}}},
        }
    )
    assert (config.timeouts.client_write, config.timeouts.client_body) == (3, 4)
    services = service_configs(config)
    assert (services["default"].timeouts.upstream_read, services["default"].timeouts.request) == (2, 60)
    assert (services["api"].timeouts.upstream_read, services["api"].timeouts.request) == (0.5, 0)
    with pytest.raises(ConfigError) as info:
        parse_config({"timeouts": {"upstream_read": 0}})
    assert (info.value.path, info.value.problem) == ("timeouts.upstream_read", "must be greater than 0")
    for huge in (10**400, "1" + "0" * 400 + "s"):  # too large for a float: an error, not an OverflowError
        with pytest.raises(ConfigError) as info:
            parse_config({"timeouts": {"request": huge}})
        assert info.value.path == "timeouts.request"
    with pytest.raises(ConfigError) as info:
        parse_config({"services": {"api": {"timeouts": {"client_body": "1s"}}}})
    assert info.value.path == "services.api.timeouts.client_body"


def test_a_services_timeouts_reach_its_resource(reactor):
    from heimdall.config.model import parse_config
    from heimdall.routing.services import build_services

    config = parse_config(
        {"services": {"api": {"backends": ["http://127.0.0.1:1"], "timeouts": {"upstream_read": "7s", "request": "9s"}}}}
    )
    services = build_services(config, task.Clock())
    assert (services["api"].resource.upstream_read, services["api"].resource.request_timeout) == (7, 9)
    assert (services["default"].resource.upstream_read, services["default"].resource.request_timeout) == (60, 0)
