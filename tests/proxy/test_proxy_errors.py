"""
Failures on the data path, through real sockets: what the client sees,
what is retried, and what is never sent twice.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import task

from tests.netutil import free_port
from tests.rawhttp import ScriptedBackend, raw_connect


def _sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_503_when_no_backend(start_proxy, http):
    proxy = start_proxy([])
    response = yield http.get(proxy.url + "/")
    assert response.code == 503
    assert json.loads((yield response.content()))["error"] == "no backend available"


@pytest_twisted.inlineCallbacks
def test_refused_connect_is_retried_on_another_backend(start_backends, start_proxy, http):
    [good] = start_backends(1)
    dead = free_port()
    proxy = start_proxy([f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{good}"])
    for _ in range(6):
        response = yield http.get(proxy.url + "/")
        yield response.content()
        assert response.code == 200
        assert response.headers.getRawHeaders(b"X-Backend") == [f"127.0.0.1:{good}".encode()]
    dead_member = proxy.pool.get(f"127.0.0.1:{dead}")
    assert dead_member.failures_total >= 3
    assert dead_member.in_flight == 0


@pytest_twisted.inlineCallbacks
def test_502_when_every_connect_fails(start_proxy, http):
    proxy = start_proxy([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"], retries=1)
    response = yield http.get(proxy.url + "/")
    assert response.code == 502
    assert json.loads((yield response.content()))["error"] == "could not connect to a backend"
    assert all(m.in_flight == 0 for m in proxy.pool.members())


@pytest_twisted.inlineCallbacks
def test_504_on_response_timeout(start_backends, start_proxy, http, reactor):
    [port] = start_backends(1)
    proxy = start_proxy([f"http://127.0.0.1:{port}"], response_timeout=0.3)
    response = yield http.get(proxy.url + "/hang")
    assert response.code == 504
    yield response.content()
    member = proxy.pool.members()[0]
    assert member.in_flight == 0 and member.failures_total == 1
    # The timed-out connection was dropped, not pooled.
    assert proxy.upstream.idle_count() == 0


@pytest_twisted.inlineCallbacks
def test_502_on_malformed_responses_and_connection_closed(tracked, start_proxy, http):
    replies = {
        b"/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"/bad-status": b"HTTP/1.1 2x0 Weird\r\n\r\n",
        b"/not-http": b"SSH-2.0-OpenSSH\r\n\r\n",
        b"/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    }

    def respond(protocol, head):
        protocol.transport.write(replies[head.split(b" ")[1]])

    backend = ScriptedBackend(respond)
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    for path in replies:
        if path == b"/bad-chunk":
            # The head was already forwarded: the client sees a broken
            # response, never a complete-looking one.
            with pytest.raises(Exception):
                response = yield http.get(proxy.url + path.decode())
                yield response.content()
            continue
        response = yield http.get(proxy.url + path.decode())
        body = yield response.content()
        assert response.code == 502, (path, body)
        assert json.loads(body)["error"] == "bad response from backend"
    yield _sleep(tracked.reactor, 0.05)
    # Every malformed exchange closed its upstream connection.
    assert all(not p.transport.connected for p in backend.protocols)
    # ...and none was reused: one request head per connection.  (The
    # client may retry /bad-chunk itself when the abort discarded the
    # head before it left.)
    assert len(backend.heads) == backend.connections >= len(replies)


@pytest_twisted.inlineCallbacks
def test_stale_pooled_connection_retried_for_get_not_for_post(tracked, start_proxy, http, reactor):
    """
    The backend closes each connection right after reading the *second*
    request on it, without answering: a pooled connection gone stale.
    """

    def respond(protocol, head):
        protocol.served = getattr(protocol, "served", 0) + 1
        if protocol.served == 1:
            protocol.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            protocol.transport.loseConnection()

    backend = ScriptedBackend(respond)
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    response = yield http.get(proxy.url + "/1")
    assert (yield response.content()) == b"ok"
    # GET on the stale connection: retried on a fresh one, the client sees 200.
    response = yield http.get(proxy.url + "/2")
    assert response.code == 200
    assert (yield response.content()) == b"ok"
    assert [h.split(b" ")[1] for h in backend.heads] == [b"/1", b"/2", b"/2"]
    # The stale close is not held against the backend.
    assert proxy.pool.members()[0].failures_total == 0
    # POST on the stale connection reached the backend: never sent twice.
    response = yield http.post(proxy.url + "/3", data=b"")
    yield response.content()
    assert response.code == 502
    assert [h.split(b" ")[1] for h in backend.heads].count(b"/3") == 1


@pytest_twisted.inlineCallbacks
def test_client_disconnect_aborts_upstream(reactor, tracked, start_proxy):
    heads = []

    def respond(protocol, head):
        heads.append(protocol)  # never answers

    backend = ScriptedBackend(respond)
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    client = yield raw_connect(reactor, proxy.port)
    client.transport.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if heads:
            break
        yield _sleep(reactor, 0.01)
    assert heads, "request never reached the backend"
    member = proxy.pool.members()[0]
    assert member.in_flight == 1
    client.transport.loseConnection()
    for _ in range(100):
        if not heads[0].transport.connected:
            break
        yield _sleep(reactor, 0.01)
    assert not heads[0].transport.connected, "upstream connection was not aborted"
    assert member.in_flight == 0
    assert proxy.upstream.idle_count() == 0


@pytest_twisted.inlineCallbacks
def test_slow_client_pauses_backend_read(reactor, start_backends, start_proxy):
    """A client that does not read: the proxy stops reading the backend
    instead of buffering the whole 200 MB response."""
    [port] = start_backends(1)
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    client = yield raw_connect(reactor, proxy.port)
    client.transport.pauseProducing()  # never read
    size = 200 * 1024 * 1024
    client.transport.write(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
    yield _sleep(reactor, 1.0)
    from heimdall.proxy.site import HeimdallChannel

    [channel] = [p for p in proxy.site_protocols if isinstance(p, HeimdallChannel) and p.transport.connected]
    buffered = sum(len(b) for b in channel.transport._tempDataBuffer) + len(channel.transport.dataBuffer)
    conns = list(proxy.upstream._connections)
    assert len(conns) == 1 and conns[0]._paused
    # What the proxy holds for the client stays far below the response size.
    assert buffered < 16 * 1024 * 1024, buffered
    client.transport.abortConnection()
    yield client.closed
    for _ in range(100):
        if proxy.pool.members()[0].in_flight == 0:
            break
        yield _sleep(reactor, 0.01)
    assert proxy.pool.members()[0].in_flight == 0
