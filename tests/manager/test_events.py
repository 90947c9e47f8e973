"""
GET /events through real sockets on 127.0.0.1: the manager's site with a
live feed over a real pool (the server manager of tests/manager/support.py).
An event arrives within 200 ms of the pool change; a client that never
reads is disconnected and its queue never grows past its bound; the token
rules are those of every manager route.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task

from heimdall.config.model import BackendConfig
from heimdall.manager.events import event_streams
from heimdall.manager.site import ManagerResource, ManagerSite
from heimdall.observe.live import LiveFeed
from heimdall.pool.pool import Health
from tests.manager.support import Harness

BACKEND = "127.0.0.1:8081"


class StreamClient(protocol.Protocol):
    """
    Sends one request and keeps what comes back, with the time each part
    arrived; C{wait_for(text)} fires when C{text} has arrived.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.arrivals = []
        self.waiting = []
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.arrivals.append((time.monotonic(), data))
        for text, d in list(self.waiting):
            if text in self.data:
                self.waiting.remove((text, d))
                d.callback(time.monotonic())

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)

    def wait_for(self, text: bytes, reactor, timeout: float = 5.0) -> defer.Deferred:
        d = defer.Deferred()
        if text in self.data:
            d.callback(time.monotonic())
            return d
        self.waiting.append((text, d))
        return d.addTimeout(timeout, reactor)


@pytest.fixture
def manager(tmp_path, tracked, reactor):
    """
    (harness, feed, port, token) with the manager's site on 127.0.0.1:0.
    """

    def make(token=None, max_queued=256):
        h = Harness(str(tmp_path / "state.json"), (BackendConfig.from_url("http://" + BACKEND),), token=token)
        feed = LiveFeed(reactor, {"default": h.pool}, max_queued=max_queued)
        feed.start()
        tracked.cleanups.append(feed.stop)
        site = ManagerSite(ManagerResource(h.manager, token=token, events=event_streams(feed)), reactor=reactor)
        port = tracked.listen(site).getHost().port
        return h, feed, port

    return make


async def _connect(reactor, port, request: bytes) -> StreamClient:
    client = StreamClient(request)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port)
    return client


def _get(path: str, token=None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


async def _until(reactor, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await task.deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_pool_event_arrives_within_200ms(manager, reactor):
    h, feed, port = manager()
    client = await _connect(reactor, port, _get("/events"))
    await client.wait_for(b"event: snapshot", reactor)
    head = client.data.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200") and b"content-type: text/event-stream" in head
    for attempt in range(3):
        changed = time.monotonic()
        h.pool.set_health(BACKEND, Health.DOWN if attempt % 2 == 0 else Health.UP, "connect refused")
        arrived = await client.wait_for(b'"kind":"%s"' % (b"down" if attempt % 2 == 0 else b"up"), reactor)
        assert arrived - changed < 0.2
    await client.wait_for(b"event: stats", reactor, timeout=3)  # and a sample every second
    client.transport.loseConnection()
    await client.lost
    await _until(reactor, lambda: feed.subscriptions == [])


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_dropped_and_its_queue_stays_bounded(manager, reactor):
    h, feed, port = manager(max_queued=64)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port))
    slow.sendall(_get("/events"))
    try:
        await _until(reactor, lambda: len(feed.subscriptions) == 1)
        subscription = feed.subscriptions[0]
        # A fast reader at the same time gets everything.
        fast = await _connect(reactor, port, _get("/events"))
        await _until(reactor, lambda: len(feed.subscriptions) == 2)
        weight = 1
        deadline = time.monotonic() + 30
        while not subscription.ended:
            assert time.monotonic() < deadline, "the slow client was never dropped"
            for _ in range(20):
                weight = weight % 1000 + 1
                h.pool.set_weight(BACKEND, weight)
            await task.deferLater(reactor, 0.005, lambda: None)
            assert len(subscription.queue) <= 64
        assert subscription.peak == 65 and not subscription.queue
        assert subscription not in feed.subscriptions and len(feed.subscriptions) == 1
        # Its connection was aborted: the socket ends (reset, or EOF after what was sent).
        slow.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while slow.recv(65536):
                pass
            raise ConnectionResetError("EOF")
        # The fast reader saw the last change.
        await fast.wait_for(b'"kind":"weight","backend":"%s","detail":"%d"' % (BACKEND.encode(), weight), reactor)
        fast.transport.loseConnection()
        await fast.lost
    finally:
        slow.close()


@pytest_twisted.ensureDeferred
async def test_the_stream_needs_the_token_like_every_route(manager, reactor):
    h, feed, port = manager(token="s3cret")
    for request in (_get("/events"), _get("/events", token="wrong")):
        client = await _connect(reactor, port, request)
        await client.wait_for(b"\r\n\r\n", reactor)
        assert client.data.startswith(b"HTTP/1.1 401")
        assert feed.subscriptions == []
        client.transport.loseConnection()
        await client.lost
    client = await _connect(reactor, port, _get("/events", token="s3cret"))
    await client.wait_for(b"event: snapshot", reactor)
    assert len(feed.subscriptions) == 1
    client.transport.loseConnection()
    await client.lost


@pytest_twisted.ensureDeferred
async def test_head_answers_at_once_and_stopping_ends_the_streams(manager, reactor):
    h, feed, port = manager()
    head = await _connect(reactor, port, b"HEAD /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await head.lost
    assert head.data.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head.data
    assert feed.subscriptions == []
    client = await _connect(reactor, port, b"GET /events HTTP/1.0\r\n\r\n")
    await client.wait_for(b"event: snapshot", reactor)
    feed.stop()
    await client.lost  # HTTP/1.0: the end of the stream closes it
    assert feed.subscriptions == []


@pytest_twisted.ensureDeferred
async def test_without_a_feed_the_route_is_404(tmp_path, tracked, reactor):
    h = Harness(str(tmp_path / "state.json"))
    port = tracked.listen(ManagerSite(ManagerResource(h.manager), reactor=reactor)).getHost().port
    client = await _connect(reactor, port, b"GET /events HTTP/1.0\r\n\r\n")
    await client.lost
    assert client.data.startswith(b"HTTP/1.0 404")


def test_twistd_heimdall_streams_to_curl(run_heimdall):
    from tests.manager.test_integration import Heimdall, _config
    from tests.processes import free_base

    h = run_heimdall(_config(free_base(3)), process_class=Heimdall).wait_ready()
    curl = subprocess.Popen(["curl", "-s", "-N", "--noproxy", "*", "--max-time", "4", h.manager + "/events"],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert h.call("POST", "/servers/add", {"url": "http://127.0.0.1:9"})[0] == 201
        out, _ = curl.communicate(timeout=10)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()
    events = [line[len("event: "):] for line in out.splitlines() if line.startswith("event: ")]
    assert events[0] == "snapshot" and "stats" in events and "pool" in events
    assert '"kind":"added","backend":"127.0.0.1:9"' in out


def test_an_event_stream_is_a_push_producer(tmp_path):
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.task import Clock
    from zope.interface.verify import verifyObject

    from heimdall.manager.events import EventStream

    h = Harness(str(tmp_path / "state.json"))
    assert verifyObject(IPushProducer, EventStream(LiveFeed(Clock(), {"default": h.pool}), request=None))
