"""
Strict request framing (RFC 9112): Host rules and chunk sizes get 400 with
nothing reaching the backend; bare-LF line ends are read as CRLF and the
request goes upstream with clean CRLFs.  Through real sockets, to a raw
backend that records every byte it gets.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from heimdall.proxy.site import MAX_CHUNK_SIZE_DIGITS, HeimdallSite, framing_problem
from tests.rawhttp import raw_exchange


class _Recorder(Protocol):
    def connectionMade(self):
        self.factory.connections += 1
        self.data = b""

    def dataReceived(self, data):
        self.data += data
        self.factory.received += data
        if b"\r\n\r\n" in self.data:
            body = b"ok\n"
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            self.data = b""


class RecordingBackend(Factory):
    """Answers 200 to each head; keeps every byte it received."""

    protocol = _Recorder

    def __init__(self):
        self.connections = 0
        self.received = b""


@pytest.fixture
def proxied(tracked, start_proxy):
    backend = RecordingBackend()
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    return proxy, backend


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


BAD_REQUESTS = {
    "no Host on HTTP/1.1": b"GET / HTTP/1.1\r\n\r\n",
    "two Host lines": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two Host lines on HTTP/1.0": b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
    "userinfo in Host": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "a space in Host": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "a slash in Host": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "no Host with a body": b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    "chunk size overflow": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1" + b"0" * 16 + b"\r\nx\r\n0\r\n\r\n"
    ),
    "chunk size overflow in leading zeros": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"0" * 17 + b"1\r\nx\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
@pytest_twisted.inlineCallbacks
def test_a_malformed_request_gets_400_and_nothing_reaches_the_backend(name, reactor, proxied):
    proxy, backend = proxied
    raw = yield raw_exchange(reactor, proxy.port, BAD_REQUESTS[name], timeout=3.0)
    assert _status(raw) == 400, raw
    assert backend.received == b""
    assert proxy.pool.members()[0].in_flight == 0


@pytest_twisted.inlineCallbacks
def test_http10_without_host_is_served(reactor, proxied):
    proxy, backend = proxied
    raw = yield raw_exchange(reactor, proxy.port, b"GET /ten HTTP/1.0\r\n\r\n", timeout=3.0)
    assert _status(raw) == 200
    assert backend.received.startswith(b"GET /ten HTTP/1.1\r\n")


@pytest_twisted.inlineCallbacks
def test_a_chunk_size_of_16_hex_digits_is_fine(reactor, proxied):
    proxy, backend = proxied
    body = b"0" * 15 + b"2\r\nhi\r\n0\r\n\r\n"
    raw = yield raw_exchange(
        reactor,
        proxy.port,
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body,
        timeout=3.0,
    )
    assert _status(raw) == 200
    assert backend.received.endswith(b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n")


@pytest_twisted.inlineCallbacks
def test_bare_lf_line_ends_are_answered_and_forwarded_with_crlf(reactor, proxied):
    proxy, backend = proxied
    raw = yield raw_exchange(
        reactor,
        proxy.port,
        b"POST /lf HTTP/1.1\nHost: a\nX-Mixed: 1\r\nContent-Length: 3\nConnection: close\n\nabc",
        timeout=3.0,
    )
    assert _status(raw) == 200
    head, _, body = backend.received.partition(b"\r\n\r\n")
    assert body == b"abc"
    assert head.startswith(b"POST /lf HTTP/1.1\r\n")
    assert b"X-Mixed: 1\r\n" in head
    assert head.count(b"\n") == head.count(b"\r\n")


@pytest_twisted.inlineCallbacks
def test_bare_lf_keep_alive_serves_the_next_request(reactor, proxied):
    proxy, backend = proxied
    raw = yield raw_exchange(
        reactor,
        proxy.port,
        b"GET /1 HTTP/1.1\nHost: a\n\nGET /2 HTTP/1.1\nHost: a\nConnection: close\n\n",
        timeout=3.0,
    )
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert b"GET /1 HTTP/1.1\r\n" in backend.received and b"GET /2 HTTP/1.1\r\n" in backend.received


@pytest_twisted.inlineCallbacks
def test_a_bare_cr_in_a_header_is_still_400(reactor, proxied):
    proxy, backend = proxied
    raw = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\r\nX: 1\r\n\r\n", timeout=3.0)
    assert _status(raw) == 400
    assert backend.received == b""


# --- units ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts, version, bad",
    [
        (None, b"HTTP/1.1", True),
        (None, b"HTTP/1.0", False),
        ([b"a", b"a"], b"HTTP/1.1", True),
        ([b"u@a"], b"HTTP/1.1", True),
        ([b"a.example:8080"], b"HTTP/1.1", False),
        ([b"[::1]:8080"], b"HTTP/1.1", False),
        ([b""], b"HTTP/1.1", False),  # an empty Host is allowed (RFC 9112 3.2)
        ([b"a\tb"], b"HTTP/1.1", True),
    ],
)
def test_framing_problem(hosts, version, bad):
    assert (framing_problem(hosts, version) is not None) is bad


def test_the_chunk_size_limit_is_64_bits():
    assert MAX_CHUNK_SIZE_DIGITS == 16


def _channel():
    from twisted.internet.task import Clock
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    class Waiting(Resource):
        isLeaf = True

        def render(self, request):
            return NOT_DONE_YET

    site = HeimdallSite(Waiting(), reactor=Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_an_overflowing_chunk_size_split_over_reads_gets_400():
    channel, transport = _channel()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(17):
        channel.dataReceived(b"f")
    assert transport.value().startswith(b"HTTP/1.1 400")
    assert transport.disconnecting
    channel.connectionLost(None)
