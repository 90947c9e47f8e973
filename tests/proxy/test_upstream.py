"""
The upstream HTTP/1.1 client, in memory: request writing and strict
response parsing, byte by byte as well as all at once.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from heimdall.interfaces import IUpstreamResponseHandler
from heimdall.pool.values import Backend
from heimdall.proxy.upstream import UpstreamConnection, UpstreamPool
from zope.interface import implementer


@implementer(IUpstreamResponseHandler)
class Recorder:
    def __init__(self):
        self.head = None
        self.body = b""
        self.finished = False
        self.failed = None

    def head_received(self, status, reason, headers, content_length):
        self.head = (status, reason, headers, content_length)

    def body_received(self, data):
        self.body += data

    def response_finished(self):
        self.finished = True

    def response_failed(self, kind, detail, response_started):
        self.failed = (kind, response_started)

    def response_timed_out(self):
        self.failed = ("timeout", False)

    def switched_protocols(self, reason, headers, rest):
        self.switched = (reason, headers, rest)


def _conn():
    pool = UpstreamPool(reactor=Clock())
    conn = UpstreamConnection(pool, Backend.from_url("http://127.0.0.1:1"), 0)
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport, pool


def _exchange(response: bytes, method=b"GET", split=False):
    conn, transport, pool = _conn()
    recorder = Recorder()
    conn.send_request(method, b"/p?q", b"host", [(b"A", b"1")], None, recorder)
    if split:
        for i in range(len(response)):
            conn.dataReceived(response[i : i + 1])
    else:
        conn.dataReceived(response)
    return conn, transport, recorder


def test_recorder_provides_interface():
    verifyObject(IUpstreamResponseHandler, Recorder())


def test_request_head_written():
    conn, transport, _ = _conn()
    conn.send_request(b"POST", b"/x", b"h", [(b"A", b"1"), (b"A", b"2")], 3, Recorder())
    conn.write_body(b"abc")
    conn.end_body()
    assert transport.value() == (
        b"POST /x HTTP/1.1\r\nHost: h\r\nA: 1\r\nA: 2\r\nContent-Length: 3\r\n\r\nabc"
    )


def test_chunked_request_body():
    conn, transport, _ = _conn()
    conn.send_request(b"PUT", b"/x", b"h", [], -1, Recorder())
    conn.write_body(b"hello")
    conn.end_body()
    assert transport.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize(
    "response, body, reusable",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", b"hello", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\nT: 1\r\n\r\n", b"hello", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", b"hi", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"hi", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi", b"hi", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b"", True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", b"", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", b"hi", False),
        # Both framings: chunked wins, then the connection is closed.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", b"hi", False),
    ],
)
def test_response_framing(response, body, reusable, split):
    conn, _, recorder = _exchange(response, split=split)
    assert recorder.failed is None
    assert recorder.finished
    assert recorder.body == body
    assert conn.reusable is reusable


def test_head_response_has_no_body():
    conn, _, recorder = _exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", method=b"HEAD")
    assert recorder.finished and recorder.body == b""
    assert recorder.head[3] == 1234
    assert conn.reusable


def test_close_delimited_body_ends_with_connection():
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionDone

    conn, _, recorder = _exchange(b"HTTP/1.1 200 OK\r\n\r\nstream")
    assert not recorder.finished
    conn.connectionLost(Failure(ConnectionDone()))
    assert recorder.finished and recorder.body == b"stream"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Injected: a\nSet-Cookie: evil=1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Injected: a\rb\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_malformed_responses_fail_and_close(response):
    conn, transport, recorder = _exchange(response)
    assert recorder.failed == ("bad_response", True)
    assert not recorder.finished
    assert transport.disconnecting or transport.disconnected


class _TunnelEnd:
    def __init__(self):
        self.data = b""
        self.lost = False

    def upstream_data(self, data):
        self.data += data

    def upstream_lost(self, reason):
        self.lost = True


def test_101_to_an_upgrade_leaves_http_for_a_tunnel():
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionDone

    conn, transport, pool = _conn()
    recorder = Recorder()
    conn.expect_upgrade = True
    conn.send_request(b"GET", b"/ws", b"h", [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], None, recorder)
    conn.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nearly")
    reason, headers, rest = recorder.switched
    assert reason == b"Switching Protocols" and (b"Upgrade", b"websocket") in headers and rest == b"early"
    assert recorder.head is None and not recorder.finished and recorder.failed is None
    assert not conn.reusable
    end = _TunnelEnd()
    conn.attach_tunnel(end)
    conn.dataReceived(b"\x81\x05hello")  # not HTTP any more: passed on as is
    assert end.data == b"\x81\x05hello"
    pool.release(conn)  # refused: never pooled
    assert pool.idle_count() == 0
    conn.connectionLost(Failure(ConnectionDone()))
    assert end.lost


def test_reset_before_any_byte_reports_not_started():
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionLost

    conn, _, _ = _conn()
    recorder = Recorder()
    conn.send_request(b"GET", b"/", b"h", [], None, recorder)
    conn.connectionLost(Failure(ConnectionLost()))
    assert recorder.failed == ("reset", False)


def test_unsolicited_bytes_kill_an_idle_connection():
    conn, transport, _ = _conn()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.disconnecting or transport.disconnected


def test_pool_reuses_lifo_and_sweeps_idle():
    clock = Clock()
    pool = UpstreamPool(reactor=clock, idle_timeout=10)
    backend = Backend.from_url("http://127.0.0.1:1")
    conns = []
    for _ in range(2):
        conn = UpstreamConnection(pool, backend, 0)
        conn.makeConnection(StringTransport())
        pool._connections.add(conn)
        conns.append(conn)
    pool.release(conns[0])
    clock.advance(6)
    pool.release(conns[1])
    d = pool.acquire(backend)
    assert d.result is conns[1]  # most recently used first
    pool.release(conns[1])  # t=6; sweeps run every idle_timeout/2
    clock.advance(5)  # t=11: conns[0] was idle 11 s, closed; conns[1] 5 s, kept
    assert pool._idle[backend.id] == [conns[1]]
    clock.advance(11)  # conns[1] is past the idle timeout now; the sweeper stops
    assert pool.idle_count() == 0
    assert not clock.getDelayedCalls()


def test_forgotten_backend_connections_are_not_reused():
    pool = UpstreamPool(reactor=Clock())
    backend = Backend.from_url("http://127.0.0.1:1")
    conn = UpstreamConnection(pool, backend, 0)
    transport = StringTransport()
    conn.makeConnection(transport)
    pool.forget(backend.id)
    pool.release(conn)
    assert pool.idle_count() == 0
    assert transport.disconnecting or transport.disconnected


def test_response_deadline_is_one_lazy_timer_per_connection():
    clock = Clock()
    pool = UpstreamPool(reactor=clock)
    conn = UpstreamConnection(pool, Backend.from_url("http://127.0.0.1:1"), 0)
    transport = StringTransport()
    conn.makeConnection(transport)
    for i in range(3):
        recorder = Recorder()
        conn.send_request(b"GET", b"/", b"h", [], None, recorder)
        conn.set_deadline(10)
        clock.advance(4)
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert recorder.finished
        assert len(clock.getDelayedCalls()) == 1  # the same timer throughout
    recorder = Recorder()
    conn.send_request(b"GET", b"/", b"h", [], None, recorder)
    conn.set_deadline(10)
    clock.advance(9.9)
    assert recorder.failed is None
    clock.advance(0.2)
    assert recorder.failed == ("timeout", False)
    assert transport.disconnecting or transport.disconnected
    assert not clock.getDelayedCalls()
