"""
WebSocket (Upgrade) tunnels through real sockets: a `websockets` client
through heimdall to a `websockets` echo backend, both running in threads of
their own while the reactor serves heimdall; and raw sockets for
backpressure.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task, threads

from prometheus_client import CollectorRegistry, generate_latest

from heimdall.observe.edge import EdgeMetrics
from tests.rawhttp import ScriptedBackend, raw_exchange

websockets_sync = pytest.importorskip("websockets.sync.server", reason="websockets is in the test extra")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


class EchoBackend:
    """
    A websockets echo server on 127.0.0.1:0 in a thread.  A text message
    "bye" makes it close the connection itself.  Remembers how each
    connection ended.
    """

    def __init__(self):
        self.closed = []
        self.handshake_headers = []
        self.server = websockets_sync.serve(self._handle, "127.0.0.1", 0, max_size=None, compression=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, connection):
        self.handshake_headers.append(dict(connection.request.headers.raw_items()))
        try:
            for message in connection:
                if message == "bye":
                    connection.close(1000, "server says bye")
                    break
                connection.send(message)
        except ConnectionClosed:
            pass
        self.closed.append(connection.close_code)

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


# PyPy 3.9's threading races in the websockets sync client's close
# ("RuntimeError: cannot release un-acquired lock" joining its reader
# thread): the websockets tests run on CPython; the raw-socket ones below
# run on both.
websockets_client = pytest.mark.cpython_only


@pytest.fixture
def echo_backend():
    backend = EchoBackend()
    yield backend
    backend.stop()


@pytest.fixture
def ws_proxy(start_proxy):
    def start(port, **options):
        proxy = start_proxy([f"http://127.0.0.1:{port}"], **options)
        proxy.records = []
        proxy.resource.request_observers.append(proxy.records.append)
        return proxy

    return start


# websockets >= 15 would use a proxy from the environment: never here.
_NO_PROXY = {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}


def _client(proxy, **options):
    url = f"ws://127.0.0.1:{proxy.port}/chat"
    return connect(url, max_size=None, compression=None, open_timeout=10, **_NO_PROXY, **options)


def _until(predicate, reactor, timeout=10.0):
    deadline = time.monotonic() + timeout

    @defer.inlineCallbacks
    def wait():
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            yield task.deferLater(reactor, 0.02, lambda: None)

    return wait()


@websockets_client
@pytest_twisted.inlineCallbacks
def test_thousand_messages_and_ten_megabytes_both_ways(echo_backend, ws_proxy, reactor):
    proxy = ws_proxy(echo_backend.port)
    big = os.urandom(10 * 1024 * 1024)

    def talk():
        with _client(proxy) as ws:
            for i in range(1000):
                ws.send(f"message {i}")
            echoed = [ws.recv(timeout=10) for _ in range(1000)]
            ws.send(big)
            back = ws.recv(timeout=30)
            return echoed, hashlib.sha256(back).hexdigest(), len(back)

    echoed, digest, size = yield threads.deferToThread(talk)
    assert echoed == [f"message {i}" for i in range(1000)]
    assert (digest, size) == (hashlib.sha256(big).hexdigest(), len(big))
    # The handshake reached the backend with its WebSocket headers.
    [headers] = echo_backend.handshake_headers
    headers = {name.lower(): value for name, value in headers.items()}
    assert headers["upgrade"].lower() == "websocket" and "sec-websocket-key" in headers
    assert headers["connection"].lower() == "upgrade"
    yield _until(lambda: proxy.records, reactor)
    [record] = proxy.records
    assert record.status == 101
    assert record.bytes_in > len(big) + 1000 * 9 and record.bytes_out > len(big) + 1000 * 9
    assert proxy.resource.tunnels.open == 0 and proxy.resource.tunnels.opened == 1
    assert proxy.upstream.idle_count() == 0  # a tunnel's connection is never pooled
    assert proxy.pool.members()[0].in_flight == 0  # the lease was held, and released
    registry = CollectorRegistry()
    EdgeMetrics(registry, tunnels=[proxy.resource.tunnels])
    exposition = generate_latest(registry).decode()
    assert "heimdall_tunnels_open 0.0" in exposition and "heimdall_tunnels_total 1.0" in exposition
    upstream_line = next(line for line in exposition.splitlines() if line.startswith('heimdall_tunnel_bytes_total{direction="upstream"}'))
    assert float(upstream_line.split()[-1]) == record.bytes_in


@websockets_client
@pytest_twisted.inlineCallbacks
def test_client_close_closes_the_backend_side(echo_backend, ws_proxy, reactor):
    proxy = ws_proxy(echo_backend.port)

    def talk():
        with _client(proxy) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
            ws.close(4001, "client leaves")

    yield threads.deferToThread(talk)
    yield _until(lambda: echo_backend.closed, reactor)
    assert echo_backend.closed == [4001]
    yield _until(lambda: proxy.records, reactor)
    assert proxy.resource.tunnels.open == 0


@websockets_client
@pytest_twisted.inlineCallbacks
def test_backend_close_closes_the_client_side(echo_backend, ws_proxy, reactor):
    proxy = ws_proxy(echo_backend.port)

    def talk():
        with _client(proxy) as ws:
            ws.send("bye")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            return closed.value.rcvd.code, closed.value.rcvd.reason

    code, reason = yield threads.deferToThread(talk)
    assert (code, reason) == (1000, "server says bye")
    yield _until(lambda: proxy.records, reactor)
    assert proxy.resource.tunnels.open == 0


@websockets_client
@pytest_twisted.inlineCallbacks
def test_idle_tunnel_closes_after_tunnel_idle(echo_backend, ws_proxy, reactor):
    proxy = ws_proxy(echo_backend.port, tunnel_idle=0.3)

    def talk():
        with _client(proxy, ping_interval=None) as ws:
            ws.send("still here")
            assert ws.recv(timeout=10) == "still here"
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            return time.monotonic() - started

    waited = yield threads.deferToThread(talk)
    assert 0.2 < waited < 5
    yield _until(lambda: proxy.records, reactor)
    [record] = proxy.records
    assert record.status == 101 and record.total_time >= 0.3


class _Flood(protocol.Protocol):
    """
    A backend that answers an upgrade with 101, then writes as fast as its
    transport lets it (a push producer), up to C{total} bytes.
    """

    total = 32 * 1024 * 1024
    chunk = os.urandom(64 * 1024)

    def __init__(self):
        self.written = 0
        self.paused = False
        self.buffer = b""
        self.received = 0

    def dataReceived(self, data):
        if self.buffer is None:
            self.received += len(data)
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.buffer = None
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: flood\r\nConnection: Upgrade\r\n\r\n")
            self.transport.registerProducer(self, True)
            self.resumeProducing()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.written < self.total:
            self.transport.write(self.chunk)
            self.written += len(self.chunk)

    def stopProducing(self):
        self.paused = True


@pytest_twisted.inlineCallbacks
def test_a_slow_reader_pauses_the_other_side(tracked, ws_proxy, reactor):
    floods = []
    factory = protocol.Factory.forProtocol(lambda: floods.append(_Flood()) or floods[-1])
    backend = tracked.listen(factory)
    proxy = ws_proxy(backend.getHost().port)
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    tracked.cleanups.append(client.close)
    client.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: flood\r\n\r\n")
    yield _until(lambda: floods and floods[0].written > 0, reactor)
    yield task.deferLater(reactor, 0.5, lambda: None)
    flood = floods[0]
    # The client reads nothing: the backend was paused long before the end.
    assert flood.paused and flood.written < flood.total // 2, flood.written

    def read_all():
        received = 0
        digest = hashlib.sha256()
        head = b""
        client.settimeout(10)
        while b"\r\n\r\n" not in head:
            head += client.recv(65536)
        head, _, rest = head.partition(b"\r\n\r\n")
        received += len(rest)
        while received < flood.total:
            data = client.recv(1024 * 1024)
            if not data:
                break
            received += len(data)
        return head, received

    head, received = yield threads.deferToThread(read_all)
    assert head.startswith(b"HTTP/1.1 101") and b"Upgrade: flood" in head
    assert received == flood.total
    # The other way: a backend that stops reading pauses the client.
    flood.transport.pauseProducing()

    def write_until_blocked():
        client.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += client.send(b"x" * 65536)
            except BlockingIOError:
                time.sleep(0.05)
        return sent

    sent = yield threads.deferToThread(write_until_blocked)
    assert sent < 32 * 1024 * 1024, sent  # heimdall stopped reading: bounded
    flood.transport.resumeProducing()
    yield _until(lambda: flood.received == sent, reactor)


@pytest_twisted.inlineCallbacks
def test_h2c_is_not_forwarded_and_other_answers_are_ordinary(tracked, ws_proxy, reactor):
    def respond(protocol, head):
        protocol.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    backend = ScriptedBackend(respond)
    proxy = ws_proxy(tracked.listen(backend).getHost().port)
    h2c = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    websocket = b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n"
    raw = yield raw_exchange(reactor, proxy.port, h2c + websocket)
    assert raw.count(b"HTTP/1.1 200 OK") == 2, raw
    h2c_head = next(head for head in backend.heads if head.startswith(b"GET /a "))
    ws_head = next(head for head in backend.heads if head.startswith(b"GET /b "))
    assert b"upgrade" not in h2c_head.lower() and b"http2-settings" not in h2c_head.lower()
    assert b"Upgrade: websocket" in ws_head and b"Connection: Upgrade" in ws_head
    assert b"sec-websocket-key: dghlihnhbxbszsbub25jzq==" in ws_head.lower()
    # A 200 to an upgrade is an ordinary response.
    assert [r.status for r in proxy.records] == [200, 200]
    assert proxy.resource.tunnels.opened == 0
