"""
Tests for the demo backend (L{heimdall.backend}): in-process on port 0
through treq, and once as a real subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet.defer import CancelledError, DeferredList
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import UNKNOWN_LENGTH

from heimdall.backend import PATTERN, BackendResource, expected_bytes, listen_backend

# Every request is bounded: a broken backend fails the test instead of hanging it.
REQUEST_TIMEOUT = 5.0
CLIENT_GONE = (CancelledError, ResponseNeverReceived, ResponseFailed, TwistedTimeoutError)


@attrs.frozen
class RunningBackend:
    port: int
    resource: BackendResource
    client: treq.client.HTTPClient

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest_twisted.async_yield_fixture
async def backend():
    from twisted.internet import reactor

    listening = listen_backend(reactor=reactor, host="127.0.0.1", port=0, name="test-backend")
    # Not persistent: no connection outlives its request.
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))
    try:
        yield RunningBackend(listening.getHost().port, listening.factory.resource, client)
    finally:
        await pool.closeCachedConnections()
        await listening.stopListening()


async def _sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await deferLater(reactor, seconds, lambda: None)


def _x_backend(response) -> str:
    return response.headers.getRawHeaders(b"x-backend")[0].decode("ascii")


@pytest_twisted.ensureDeferred
async def test_default_answer_describes_request_and_counts(backend):
    first = await backend.client.get(backend.url("/some/path?a=1&b=2"), timeout=REQUEST_TIMEOUT)
    body = await first.json()
    assert first.code == 200
    assert _x_backend(first) == backend.address
    assert first.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert body == {
        "backend": backend.address,
        "name": "test-backend",
        "host": "127.0.0.1",
        "port": backend.port,
        "method": "GET",
        "path": "/some/path?a=1&b=2",
        "count": 1,
        "pid": os.getpid(),
    }
    second = await backend.client.get(backend.url("/"), timeout=REQUEST_TIMEOUT)
    assert (await second.json())["count"] == 2


@pytest_twisted.ensureDeferred
async def test_any_method_and_request_body(backend):
    payload = b"hello, backend" * 100
    posted = await backend.client.post(backend.url("/upload"), data=payload, timeout=REQUEST_TIMEOUT)
    body = await posted.json()
    assert body["method"] == "POST"
    assert body["body_bytes"] == len(payload)
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()

    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        response = await backend.client.request(method, backend.url("/thing"), timeout=REQUEST_TIMEOUT)
        assert response.code == 200
        assert (await response.json())["method"] == method

    head = await backend.client.head(backend.url("/thing"), timeout=REQUEST_TIMEOUT)
    assert head.code == 200
    assert _x_backend(head) == backend.address
    assert await head.content() == b""


@pytest_twisted.ensureDeferred
async def test_health(backend):
    response = await backend.client.get(backend.url("/health"), timeout=REQUEST_TIMEOUT)
    assert response.code == 200
    assert _x_backend(response) == backend.address
    assert await response.json() == {"status": "ok", "backend": backend.address}


@pytest_twisted.ensureDeferred
async def test_delay_does_not_block(backend):
    from twisted.internet import reactor

    started = reactor.seconds()
    responses = await DeferredList(
        [backend.client.get(backend.url("/delay?ms=500"), timeout=REQUEST_TIMEOUT) for _ in range(2)],
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    elapsed = reactor.seconds() - started
    assert [ok for ok, _ in responses] == [True, True]
    for _, response in responses:
        assert response.code == 200
        assert (await response.json())["path"] == "/delay?ms=500"
    # Served one after the other this would take 1 s.
    assert 0.48 <= elapsed < 0.95


@pytest_twisted.ensureDeferred
async def test_delay_timer_cancelled_when_client_leaves(backend):
    with pytest.raises(CLIENT_GONE):
        await backend.client.get(backend.url("/delay?ms=5000"), timeout=0.2)
    for _ in range(40):
        if not backend.resource.active_delays:
            break
        await _sleep(0.025)
    assert backend.resource.active_delays == set()


@pytest_twisted.ensureDeferred
async def test_status_codes(backend):
    teapot = await backend.client.get(backend.url("/status/418"), timeout=REQUEST_TIMEOUT)
    assert teapot.code == 418
    assert _x_backend(teapot) == backend.address
    assert (await teapot.json())["status"] == 418

    server_error = await backend.client.post(backend.url("/status/503"), data=b"x", timeout=REQUEST_TIMEOUT)
    assert server_error.code == 503

    for code in (204, 304):
        response = await backend.client.get(backend.url(f"/status/{code}"), timeout=REQUEST_TIMEOUT)
        assert response.code == code
        assert await response.content() == b""

    for bad in ("600", "100", "abc", "", "-5"):
        response = await backend.client.get(backend.url(f"/status/{bad}"), timeout=REQUEST_TIMEOUT)
        assert response.code == 400, bad
        assert "error" in await response.json()


@pytest_twisted.ensureDeferred
async def test_bytes_streams_five_megabytes(backend):
    size = 5 * 1024 * 1024
    response = await backend.client.get(backend.url(f"/bytes?n={size}"), unbuffered=True, timeout=REQUEST_TIMEOUT)
    assert response.code == 200
    assert response.length == size
    assert response.headers.getRawHeaders(b"content-type") == [b"application/octet-stream"]
    assert _x_backend(response) == backend.address

    received = hashlib.sha256()
    pieces = []

    def collect(data: bytes) -> None:
        pieces.append(len(data))
        received.update(data)

    await treq.collect(response, collect)
    assert sum(pieces) == size
    assert len(pieces) > 1  # it arrived as a stream, not one block

    # Same digest as the documented pattern, computed without 5 MB at once.
    expected = hashlib.sha256()
    block = PATTERN * 1024
    for offset in range(0, size, len(block)):
        expected.update(block[: size - offset])
    assert received.hexdigest() == expected.hexdigest()


@pytest_twisted.ensureDeferred
async def test_bytes_chunked_and_unaligned_chunks(backend):
    response = await backend.client.get(backend.url("/bytes?n=10007&chunk=1000&chunked=1"), timeout=REQUEST_TIMEOUT)
    assert response.code == 200
    assert response.length == UNKNOWN_LENGTH
    assert response.headers.getRawHeaders(b"content-length") is None
    assert await response.content() == expected_bytes(10007)

    empty = await backend.client.get(backend.url("/bytes?n=0"), timeout=REQUEST_TIMEOUT)
    assert await empty.content() == b""


class _StalledReader(Protocol):
    """
    Sends one request, then stops reading: the server's socket fills up.
    """

    def __init__(self, request: bytes) -> None:
        self._request = request

    def connectionMade(self) -> None:
        self.transport.write(self._request)
        self.transport.pauseProducing()


@pytest_twisted.ensureDeferred
async def test_bytes_backpressure_from_a_slow_reader(backend):
    from twisted.internet import reactor

    size = 512 * 1024 * 1024
    request = f"GET /bytes?n={size} HTTP/1.1\r\nHost: {backend.address}\r\n\r\n".encode("ascii")
    factory = ClientFactory.forProtocol(lambda: _StalledReader(request))
    factory.noisy = False
    connector = reactor.connectTCP("127.0.0.1", backend.port, factory, timeout=REQUEST_TIMEOUT)
    try:
        for _ in range(40):
            if backend.resource.active_streams:
                break
            await _sleep(0.025)
        (stream,) = backend.resource.active_streams
        await _sleep(0.5)
        sent_once = stream.sent
        await _sleep(0.2)
        # Paused by the full socket: only kernel buffers' worth was produced.
        assert stream.sent == sent_once
        assert stream.sent < 64 * 1024 * 1024
    finally:
        connector.disconnect()
    for _ in range(40):
        if not backend.resource.active_streams:
            break
        await _sleep(0.025)
    assert backend.resource.active_streams == set()


@pytest_twisted.ensureDeferred
async def test_echo_preserves_headers_and_body(backend):
    payload = os.urandom(70_000)
    response = await backend.client.post(
        backend.url("/echo?x=1&x=2"),
        data=payload,
        headers={"X-Multi": ["first", "second"], "X-Single": "only"},
        timeout=REQUEST_TIMEOUT,
    )
    assert response.code == 200
    assert _x_backend(response) == backend.address
    echo = await response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo"
    assert echo["query"] == "x=1&x=2"
    assert echo["body_bytes"] == len(payload)
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert echo["client"]["host"] == "127.0.0.1"
    assert isinstance(echo["client"]["port"], int)
    headers = [(name.lower(), value) for name, value in echo["headers"]]
    multi = [value for name, value in headers if name == "x-multi"]
    assert multi == ["first", "second"]
    assert ("x-single", "only") in headers
    assert ("content-length", str(len(payload))) in headers


@pytest_twisted.ensureDeferred
async def test_echo_without_body(backend):
    response = await backend.client.get(backend.url("/echo"), timeout=REQUEST_TIMEOUT)
    echo = await response.json()
    assert echo["method"] == "GET"
    assert echo["body_bytes"] == 0
    assert echo["query"] == ""


@pytest_twisted.ensureDeferred
async def test_bad_query_values(backend):
    for path in ("/delay?ms=abc", "/delay?ms=-1", "/bytes", "/bytes?n=-1", "/bytes?n=1&chunk=0",
                 "/bytes?n=1&chunked=maybe"):
        response = await backend.client.get(backend.url(path), timeout=REQUEST_TIMEOUT)
        assert response.code == 400, path
        assert _x_backend(response) == backend.address
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert "error" in await response.json()


@pytest_twisted.ensureDeferred
async def test_close_drops_the_connection(backend):
    with pytest.raises((ResponseNeverReceived, ResponseFailed)):
        await backend.client.get(backend.url("/close"), timeout=REQUEST_TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_hang_never_answers(backend):
    from twisted.internet import reactor

    started = reactor.seconds()
    with pytest.raises(CLIENT_GONE):
        await backend.client.get(backend.url("/hang"), timeout=0.3)
    assert reactor.seconds() - started >= 0.29
    # The server is still fine afterwards.
    response = await backend.client.get(backend.url("/health"), timeout=REQUEST_TIMEOUT)
    assert response.code == 200


def _read_line(stream, deadline: float) -> bytes:
    """
    One line from a pipe, or b"" at EOF or when the deadline passes.
    """
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b""
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            return b""
        byte = os.read(stream.fileno(), 1)
        if not byte:
            return line
        line += byte
    return line


def test_runs_as_a_program_and_exits_cleanly_on_sigterm():
    # Plain blocking test: the server is another process, the reactor is not needed.
    process = subprocess.Popen(
        [sys.executable, "-m", "heimdall.backend", "--port", "0", "--name", "sub"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        line = _read_line(process.stdout, time.monotonic() + 8).decode("ascii")
        prefix = "heimdall backend listening on http://127.0.0.1:"
        assert line.startswith(prefix) and line.endswith("\n"), line
        port = int(line[len(prefix) :])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as answer:
            assert answer.headers["X-Backend"] == f"127.0.0.1:{port}"
            body = json.loads(answer.read())
        assert body["name"] == "sub"
        assert body["pid"] == process.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        process.stdout.close()
