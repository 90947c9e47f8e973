"""
Request limits: 413, 414, 431 and the header timeout (408).  An oversized
request never reaches a backend.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import task

from tests.rawhttp import ScriptedBackend, raw_connect, raw_exchange


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _never_called(protocol, head):
    raise AssertionError(f"request reached the backend: {head!r}")


def _proxy(tracked, start_proxy, **site_options):
    backend = ScriptedBackend(_never_called)
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"], site_options=site_options)
    return proxy, backend


@pytest_twisted.inlineCallbacks
def test_414_for_a_long_uri(reactor, tracked, start_proxy):
    proxy, backend = _proxy(tracked, start_proxy, max_uri_bytes=100, max_header_bytes=1000)
    raw = yield raw_exchange(reactor, proxy.port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(raw) == 414
    # Longer than the whole head limit too: still 414, not a bare close.
    raw = yield raw_exchange(reactor, proxy.port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(raw) == 414
    assert backend.connections == 0


@pytest_twisted.inlineCallbacks
def test_431_for_large_headers(reactor, tracked, start_proxy):
    proxy, backend = _proxy(tracked, start_proxy, max_header_bytes=1000)
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(30))
    raw = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert _status(raw) == 431
    one_huge = b"X-Big: " + b"v" * 3000 + b"\r\n"
    raw = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + one_huge + b"\r\n")
    assert _status(raw) == 431
    assert backend.connections == 0


@pytest_twisted.inlineCallbacks
def test_413_from_content_length_before_the_body(reactor, tracked, start_proxy):
    proxy, backend = _proxy(tracked, start_proxy, max_body_bytes=1000)
    raw = yield raw_exchange(
        reactor, proxy.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"
    )
    assert _status(raw) == 413
    assert backend.connections == 0


@pytest_twisted.inlineCallbacks
def test_413_while_streaming_a_chunked_body(reactor, start_backends, start_proxy, tracked):
    [port] = start_backends(1)
    proxy = start_proxy([f"http://127.0.0.1:{port}"], site_options={"max_body_bytes": 10000})
    chunk = b"x" * 4000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    raw = yield raw_exchange(
        reactor,
        proxy.port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert _status(raw) == 413
    assert proxy.pool.members()[0].in_flight == 0
    # The backend never got a complete request: nothing was counted there.
    backend_resource = tracked.ports[0].factory.resource
    assert backend_resource.count == 0


@pytest_twisted.inlineCallbacks
def test_408_when_headers_are_not_finished_in_time(reactor, tracked, start_proxy):
    proxy, backend = _proxy(tracked, start_proxy, header_timeout=0.3)
    client = yield raw_connect(reactor, proxy.port)
    client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes
    timer = reactor.callLater(5, client.transport.abortConnection)
    received = yield client.closed
    assert timer.active(), "the proxy did not close the slow client"
    timer.cancel()
    assert _status(received) == 408
    assert backend.connections == 0


@pytest_twisted.inlineCallbacks
def test_malformed_request_gets_400_and_never_reaches_backend(reactor, tracked, start_proxy):
    proxy, backend = _proxy(tracked, start_proxy)
    for bad in [
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"NONSENSE\r\n\r\n",
    ]:
        raw = yield raw_exchange(reactor, proxy.port, bad)
        assert _status(raw) == 400, (bad, raw)
    assert backend.connections == 0


@pytest_twisted.inlineCallbacks
def test_malformed_streamed_body_aborts_the_upstream_request(reactor, tracked, start_proxy):
    """
    A chunked body streams upstream as it arrives, so its head is already
    there when a malformed chunk comes: the client gets 400 and the
    upstream connection is aborted, so the backend never sees a complete
    request.
    """
    backend = ScriptedBackend(lambda protocol, head: None)
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    client = yield raw_connect(reactor, proxy.port)
    client.transport.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    for _ in range(200):
        if backend.heads and backend.protocols[0].buffer:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    assert backend.protocols[0].buffer == b"5\r\nhello\r\n"
    client.transport.write(b"zz\r\n")
    timer = reactor.callLater(5, client.transport.abortConnection)
    raw = yield client.closed
    timer.cancel()
    assert _status(raw) == 400
    for _ in range(100):
        if not backend.protocols[0].transport.connected:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    assert not backend.protocols[0].transport.connected
    assert not backend.protocols[0].buffer.endswith(b"0\r\n\r\n")
    assert proxy.pool.members()[0].in_flight == 0
