"""
The proxy forwards requests and responses faithfully, through real sockets.
"""

from __future__ import annotations

import hashlib
import json

import pytest_twisted

from heimdall.backend import expected_bytes
from tests.rawhttp import ScriptedBackend, raw_connect, raw_exchange


def _urls(ports):
    return [f"http://127.0.0.1:{p}" for p in ports]


@pytest_twisted.inlineCallbacks
def test_round_robin_and_path_query_forwarded(start_backends, start_proxy, http):
    ports = start_backends(3)
    proxy = start_proxy(_urls(ports))
    seen = []
    for i in range(6):
        response = yield http.get(proxy.url + f"/a/b%2Fc?x={i}&y=%20")
        body = json.loads((yield response.content()))
        assert response.code == 200
        assert body["path"] == f"/a/b%2Fc?x={i}&y=%20"
        seen.append(response.headers.getRawHeaders(b"X-Backend")[0].decode())
    assert sorted(seen) == sorted(f"127.0.0.1:{p}" for p in ports for _ in range(2))


@pytest_twisted.inlineCallbacks
def test_repeated_headers_and_forwarding_headers(reactor, start_backends, start_proxy):
    [port] = start_backends(1)
    proxy = start_proxy(_urls([port]))
    request = (
        b"GET /echo HTTP/1.1\r\n"
        b"Host: example.test:8080\r\n"
        b"X-Multi: one\r\n"
        b"X-Multi: two\r\n"
        b"Accept: a/b\r\n"
        b"Connection: close, X-Drop-Me\r\n"
        b"X-Drop-Me: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n"
        b"\r\n"
    )
    echoed = _echoed((yield raw_exchange(reactor, proxy.port, request)))
    headers = [(n.lower(), v) for n, v in echoed["headers"]]
    names = [n for n, _ in headers]
    assert ("x-multi", "one") in headers and ("x-multi", "two") in headers
    # Order kept: the repeated header before the one sent after it.
    assert names.index("x-multi") < names.index("accept")
    assert [v for n, v in headers if n == "x-multi"] == ["one", "two"]
    assert ("host", "example.test:8080") in headers
    for hop in ("connection", "x-drop-me", "keep-alive", "proxy-connection"):
        assert hop not in names, hop
    # An untrusted client's X-Forwarded-For is replaced, not extended.
    assert ("x-forwarded-for", "127.0.0.1") in headers
    assert ("x-forwarded-proto", "http") in headers
    assert ("x-forwarded-host", "example.test:8080") in headers
    assert ("via", "1.1 heimdall") in headers


def _echoed(raw: bytes) -> dict:
    """
    The echo backend's JSON from a raw 200 response (chunked or not).
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"chunked" in head.lower():
        body = _dechunk(body)
    return json.loads(body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += data[:size]
        data = data[size + 2 :]


@pytest_twisted.inlineCallbacks
def test_chunked_upload_streams_through(reactor, start_backends, start_proxy):
    [port] = start_backends(1)
    proxy = start_proxy(_urls([port]))
    chunks = [b"hello ", b"chunked ", b"world" * 1000]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body
    )
    echoed = _echoed((yield raw_exchange(reactor, proxy.port, request)))
    whole = b"".join(chunks)
    assert echoed["body_bytes"] == len(whole)
    assert echoed["body_sha256"] == hashlib.sha256(whole).hexdigest()


@pytest_twisted.inlineCallbacks
def test_20mb_upload_and_download(start_backends, start_proxy, http):
    [port] = start_backends(1)
    proxy = start_proxy(_urls([port]))
    size = 20 * 1024 * 1024
    upload = expected_bytes(size)
    response = yield http.post(proxy.url + "/echo", data=upload)
    echoed = json.loads((yield response.content()))
    assert echoed["body_bytes"] == size
    assert echoed["body_sha256"] == hashlib.sha256(upload).hexdigest()

    response = yield http.get(proxy.url + f"/bytes?n={size}")
    assert response.length == size  # Agent moves Content-Length here
    digest = hashlib.sha256()
    received = []

    def collect(data):
        received.append(len(data))
        digest.update(data)

    yield response.collect(collect)
    assert sum(received) == size
    assert digest.hexdigest() == hashlib.sha256(expected_bytes(size)).hexdigest()


@pytest_twisted.inlineCallbacks
def test_keep_alive_reuse_1000_requests(start_backends, start_proxy, http, tracked):
    [port] = start_backends(1)
    proxy = start_proxy(_urls([port]))
    backend_site = tracked.ports[0].factory
    accepted = []
    original = backend_site.buildProtocol
    backend_site.buildProtocol = lambda addr: (accepted.append(addr), original(addr))[1]
    for _ in range(1000):
        response = yield http.get(proxy.url + "/")
        yield response.content()
        assert response.code == 200
    assert len(accepted) < 5, len(accepted)
    assert proxy.upstream.opened < 5
    assert proxy.upstream.reused >= 995


@pytest_twisted.inlineCallbacks
def test_head_204_304_and_status_passthrough(start_backends, start_proxy, http):
    [port] = start_backends(1)
    proxy = start_proxy(_urls([port]))
    response = yield http.head(proxy.url + "/bytes?n=1234")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"Content-Length") == [b"1234"]
    assert (yield response.content()) == b""
    for code in (204, 304, 404, 500, 503):
        response = yield http.get(proxy.url + f"/status/{code}")
        body = yield response.content()
        assert response.code == code
        if code in (204, 304):
            assert body == b""
    # The connection is still good after no-body responses.
    response = yield http.get(proxy.url + "/")
    assert response.code == 200
    yield response.content()


@pytest_twisted.inlineCallbacks
def test_response_framings(reactor, tracked, start_proxy, http):
    """Content-Length, chunked (with trailers) and close-delimited bodies."""

    def respond(protocol, head):
        path = head.split(b" ")[1]
        if path == b"/length":
            protocol.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        elif path == b"/chunked":
            protocol.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
            )
        elif path == b"/close":
            protocol.transport.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-close")
            protocol.transport.loseConnection()
        elif path == b"/interim":
            protocol.transport.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            )

    backend = ScriptedBackend(respond)
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    for path, expected in [
        ("/length", b"hello"),
        ("/chunked", b"abcdefg"),
        ("/close", b"until-close"),
        ("/interim", b"ok"),
        ("/length", b"hello"),
    ]:
        response = yield http.get(proxy.url + path)
        assert response.code == 200
        assert (yield response.content()) == expected, path


def _head_lines(raw: bytes) -> list:
    return [line.lower() for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]]


@pytest_twisted.inlineCallbacks
def test_a_response_that_ends_the_connection_says_connection_close(reactor, start_backends, start_proxy):
    # RFC 9112 9.6: wrk and other clients read it to know they must reconnect.
    [port] = start_backends(1)
    proxy = start_proxy(_urls([port]))
    closing = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert closing.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in _head_lines(closing)
    old = yield raw_exchange(reactor, proxy.port, b"GET / HTTP/1.0\r\n\r\n")
    assert b"connection: close" in _head_lines(old)
    # heimdall's own answers too (no backend matches this host's port: 502).
    dead = start_proxy(["http://127.0.0.1:1"])
    error = yield raw_exchange(reactor, dead.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert error.startswith(b"HTTP/1.1 5")
    assert b"connection: close" in _head_lines(error)


@pytest_twisted.inlineCallbacks
def test_a_keep_alive_response_has_no_connection_header(reactor, start_backends, start_proxy):
    from twisted.internet.task import deferLater

    [port] = start_backends(1)
    proxy = start_proxy(_urls([port]))
    client = yield raw_connect(reactor, proxy.port)
    try:
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(500):
            if b"\r\n\r\n" in client.received:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        assert client.received.startswith(b"HTTP/1.1 200")
        assert not [line for line in _head_lines(client.received) if line.startswith(b"connection:")]
        assert not client.closed.called  # still open: keep-alive
    finally:
        client.transport.abortConnection()
        yield client.closed
