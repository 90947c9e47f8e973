"""
L{heimdall.observe.alerts}: the alert document, flap damping, the webhook and
command sinks; in memory where possible, and with a real webhook receiver
on 127.0.0.1.
"""

from __future__ import annotations

import json
import random
import sys
from typing import List

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from heimdall.observe.alerts import AlertDispatcher, CommandSink, LogSink, WebhookSink, alert_document
from heimdall.config.health import parse_alerts
from heimdall.interfaces import IAlertSink
from heimdall.pool.pool import BackendPool
from heimdall.pool.values import Backend, Health, PoolEvent
from heimdall.strategies.registry import default_registry
from tests.netutil import free_port


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.alerts: List[dict] = []

    def send(self, alert):
        self.alerts.append(alert)

    def stop(self):
        return None


def _pool(clock, n=2):
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    members = [pool.add(Backend.from_url(f"http://127.0.0.1:{9000 + i}")) for i in range(n)]
    return pool, members


def test_the_alert_document():
    clock = Clock()
    clock.advance(1718000000.25)
    pool, [a, b] = _pool(clock)
    pool.set_health(a.id, Health.UP, "HTTP 200")
    pool.set_health(a.id, Health.DOWN, "3 failed checks: connect refused")
    event = PoolEvent("down", a.id, clock.seconds(), "3 failed checks: connect refused", "up")
    document = alert_document(event, pool)
    assert document == {
        "version": 1,
        "service": "default",
        "source": "heimdall",
        "event": "down",
        "severity": "critical",
        "backend": "127.0.0.1:9000",
        "url": "http://127.0.0.1:9000",
        "detail": "3 failed checks: connect refused",
        "previous": "up",
        "at": 1718000000.25,
        "time": "2024-06-10T06:13:20.250Z",
        "pool": {"eligible": 1, "total": 2},
        "suppressed": None,
        "text": "heimdall: backend 127.0.0.1:9000 is DOWN: 3 failed checks: connect refused",
    }
    json.dumps(document)
    pool_event = alert_document(PoolEvent("all_down", None, 0.0, "panic mode fail"), pool)
    assert pool_event["backend"] is None and pool_event["severity"] == "critical"
    assert pool_event["text"] == "heimdall: ALL backends are down: panic mode fail"


def test_sinks_provide_the_interface():
    clock = Clock()
    for sink in (LogSink(), WebhookSink(object(), clock, "http://127.0.0.1:1/"), CommandSink(clock, ["true"])):
        verifyObject(IAlertSink, sink)


def test_delivery_is_scheduled_never_on_the_callers_stack_and_first_ups_are_not_alerted():
    clock = Clock()
    pool, [a, b] = _pool(clock)
    sink = RecordingSink()
    logged = RecordingSink()
    dispatcher = AlertDispatcher(pool, clock, [sink], flap_window=0, log_sink=logged)
    dispatcher.start()
    pool.set_health(a.id, Health.UP, "HTTP 200")  # unknown -> up: logged only
    pool.set_health(a.id, Health.DOWN, "connect refused")
    assert sink.alerts == []
    clock.advance(0)
    assert [x["event"] for x in sink.alerts] == ["down"]
    assert [x["event"] for x in logged.alerts] == ["up", "down"]
    dispatcher.stop()
    pool.set_health(a.id, Health.UP)
    clock.advance(0)
    assert len(sink.alerts) == 1


def test_flap_damping_one_alert_per_backend_per_window_with_a_summary():
    clock = Clock()
    pool, [a, b, c] = _pool(clock, 3)
    sink = RecordingSink()
    dispatcher = AlertDispatcher(pool, clock, [sink], flap_window=60)
    dispatcher.start()
    pool.set_health(a.id, Health.UP)
    clock.advance(1)
    pool.set_health(a.id, Health.DOWN, "timeout")  # sent
    pool.set_health(b.id, Health.DOWN, "timeout")  # another backend: sent
    for _ in range(3):
        clock.advance(5)
        pool.set_health(a.id, Health.UP, "HTTP 200")
        clock.advance(5)
        pool.set_health(a.id, Health.DOWN, "timeout")
    clock.advance(0)
    assert [(x["event"], x["backend"]) for x in sink.alerts] == [("down", a.id), ("down", b.id)]
    assert dispatcher.suppressed_total == 6
    clock.advance(31)  # the window (opened at 1) closes at 61
    summary = sink.alerts[-1]
    assert summary["event"] == "down" and summary["backend"] == a.id
    assert summary["suppressed"] == {"count": 5, "events": {"up": 3, "down": 2}, "since": 1.0}
    assert "5 more events held back" in summary["text"]
    # Still flapping: the next alert waits for the next window.
    pool.set_health(a.id, Health.UP, "HTTP 200")
    clock.advance(1)
    assert len(sink.alerts) == 3
    clock.advance(60)
    assert sink.alerts[-1]["event"] == "up" and sink.alerts[-1]["suppressed"] is None
    clock.advance(60)  # quiet window: nothing more, and no timer left
    assert len(sink.alerts) == 4
    dispatcher.stop()
    assert clock.getDelayedCalls() == []


def test_delivery_observers_hear_each_sinks_result():
    clock = Clock()
    pool, [a, b] = _pool(clock)

    class Answering(RecordingSink):
        kind = "webhook"

        def send(self, alert):
            super().send(alert)
            return defer.succeed(alert["event"] == "down")

    seen = []
    dispatcher = AlertDispatcher(pool, clock, [Answering()], flap_window=0)
    dispatcher.delivery_observers.append(lambda kind, ok: seen.append((kind, ok)))
    dispatcher.delivery_observers.append(lambda kind, ok: 1 / 0)  # logged, not raised
    dispatcher.start()
    pool.set_health(a.id, Health.DOWN)
    pool.set_health(a.id, Health.UP)
    clock.advance(0)
    assert seen == [("webhook", True), ("webhook", False)]
    dispatcher.stop()


def test_events_filter_and_parse_config():
    clock = Clock()
    pool, [a, b] = _pool(clock)
    config = parse_alerts({"flap_window": 0, "events": ["ejected"], "webhooks": [{"url": "http://127.0.0.1:1/x"}]})
    dispatcher = AlertDispatcher.from_config(config, pool, clock, webhook_client=object())
    assert [type(s).__name__ for s in dispatcher.sinks] == ["WebhookSink"]
    sink = RecordingSink()
    dispatcher.sinks = [sink]
    dispatcher.start()
    pool.set_health(a.id, Health.DOWN)
    pool.eject(b.id, 30, "1 consecutive connect failures")
    clock.advance(0)
    assert [x["event"] for x in sink.alerts] == ["ejected"]
    dispatcher.stop()


# --- the webhook sink, in memory -------------------------------------------------------


class _Receiver(Resource):
    isLeaf = True

    def __init__(self, codes=(200,)) -> None:
        super().__init__()
        self.codes = list(codes)
        self.bodies: List[dict] = []
        self.headers: List[dict] = []
        self.hang = False
        self.hanging: list = []

    def render_POST(self, request):
        self.bodies.append(json.loads(request.content.read()))
        self.headers.append({k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()})
        if self.hang:
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.codes.pop(0) if len(self.codes) > 1 else self.codes[0])
        return b"ok"


def _results(d):
    out = []
    d.addBoth(out.append)
    return out


def test_webhook_retries_with_backoff_then_gives_up_and_never_raises():
    clock = Clock()
    receiver = _Receiver(codes=(500, 503, 200))
    stub = StubTreq(receiver)
    sink = WebhookSink(stub, clock, "http://hooks.example/x", retries=3, backoff=1.0, headers=(("Authorization", "Bearer t"),))
    result = _results(sink.send({"event": "down", "text": "x"}))
    stub.flush()
    assert len(receiver.bodies) == 1
    clock.advance(1)
    stub.flush()
    assert len(receiver.bodies) == 2
    clock.advance(1.9)
    stub.flush()
    assert len(receiver.bodies) == 2  # backoff doubled: 2 s
    clock.advance(0.1)
    stub.flush()
    assert result == [True] and len(receiver.bodies) == 3
    assert sink.kind == "webhook"
    assert receiver.bodies[0] == {"event": "down", "text": "x"}
    assert receiver.headers[0][b"content-type"] == [b"application/json"]
    assert receiver.headers[0][b"authorization"] == [b"Bearer t"]
    assert sink.delivered_total == 1

    failing = _Receiver(codes=(500,))
    stub = StubTreq(failing)
    sink = WebhookSink(stub, clock, "http://hooks.example/x", retries=2, backoff=0.5)
    result = _results(sink.send({"event": "up"}))
    for _ in range(5):
        stub.flush()
        clock.advance(1)
    assert result == [False] and len(failing.bodies) == 3 and sink.failed_total == 1
    assert clock.getDelayedCalls() == []


def test_webhook_timeout_and_stop_cancel_everything():
    clock = Clock()

    class Hanging:
        def __init__(self):
            self.requests: List[Deferred] = []

        def request(self, method, url, data=None, headers=None):
            d = Deferred()
            self.requests.append(d)
            return d

    client = Hanging()
    sink = WebhookSink(client, clock, "http://hooks.example/x", timeout=2, retries=1, backoff=1)
    result = _results(sink.send({"event": "down"}))
    clock.advance(2)  # the first attempt times out
    clock.advance(1)  # the retry starts
    assert len(client.requests) == 2
    clock.advance(2)
    assert result == [False]
    second = _results(sink.send({"event": "up"}))
    sink.stop()
    assert second == [False]
    assert clock.getDelayedCalls() == []
    # Bounded: beyond max_pending alerts are dropped, not queued.
    sink = WebhookSink(client, clock, "http://hooks.example/x", max_pending=2)
    results = [_results(sink.send({"event": "down"})) for _ in range(3)]
    assert results[2] == [False] and results[0] == []
    sink.stop()


# --- the command sink, with real processes -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_command_sink_gets_the_alert_on_stdin(tmp_path):
    from twisted.internet import reactor

    out = tmp_path / "alert.json"
    script = (
        "import json, os, sys; alert = json.load(sys.stdin); "
        f"open({str(out)!r}, 'w').write(json.dumps([alert, os.environ['HEIMDALL_EVENT'], os.environ['HEIMDALL_BACKEND']]))"
    )
    sink = CommandSink(reactor, [sys.executable, "-c", script], timeout=10)
    ok = await sink.send({"event": "down", "backend": "127.0.0.1:9000", "text": "x"})
    assert ok is True
    alert, event, backend = json.loads(out.read_text())
    assert alert["text"] == "x" and event == "down" and backend == "127.0.0.1:9000"

    failing = CommandSink(reactor, [sys.executable, "-c", "import sys; print('nope'); sys.exit(3)"])
    assert await failing.send({"event": "up"}) is False
    slow = CommandSink(reactor, [sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.3)
    assert await slow.send({"event": "up"}) is False
    missing = CommandSink(reactor, ["/nonexistent/heimdall-alert"])
    assert await missing.send({"event": "up"}) is False


# --- a real webhook receiver on 127.0.0.1 ----------------------------------------------------


@pytest.fixture
def webhook_client(reactor):
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    yield treq.client.HTTPClient(Agent(reactor, pool=pool))
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest_twisted.ensureDeferred
async def test_a_webhook_receiver_gets_down_and_up_with_the_documented_json(tracked, reactor, webhook_client):
    from heimdall.health.active import HealthProber
    from heimdall.health.probes import default_check_factory
    from heimdall.config.health import parse_health
    from heimdall.backend import make_backend_site

    receiver = _Receiver()
    port = tracked.listen(Site(receiver)).getHost().port
    # One real backend, checked for real every 100 ms.
    backend_port = free_port()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), reactor), clock=reactor)
    member = pool.add(Backend.from_url(f"http://127.0.0.1:{backend_port}"))
    config = parse_alerts({"flap_window": 0, "webhooks": [{"url": f"http://127.0.0.1:{port}/hook", "timeout": "2s"}]})
    dispatcher = AlertDispatcher.from_config(config, pool, reactor, reactor, webhook_client)
    health = parse_health({"interval": "100ms", "down_interval": "100ms", "timeout": "500ms", "rise": 1, "fall": 1})
    prober = HealthProber(pool, health, reactor, default_check_factory(reactor), random.Random(0))
    dispatcher.start()
    prober.start()
    try:
        # Nothing listens yet: down.
        for _ in range(50):
            await deferLater(reactor, 0.05, lambda: None)
            if receiver.bodies:
                break
        site = make_backend_site(None, "127.0.0.1", lambda: backend_port, reactor=reactor)
        tracked.listen(site, port=backend_port)
        for _ in range(50):
            await deferLater(reactor, 0.05, lambda: None)
            if any(body["event"] == "up" for body in receiver.bodies):
                break
    finally:
        prober.stop()
        await dispatcher.stop()
    down, up = [body for body in receiver.bodies if body["event"] in ("down", "up")][:2]
    assert down["event"] == "down" and up["event"] == "up"
    for alert in (down, up):
        assert set(alert) == {
            "version", "source", "service", "event", "severity", "backend", "url", "detail",
            "previous", "at", "time", "pool", "suppressed", "text",
        }
        assert alert["backend"] == member.id and alert["url"] == member.backend.url
        assert alert["source"] == "heimdall" and alert["version"] == 1
    assert down["detail"] == "connect refused" and down["severity"] == "critical"
    assert down["text"] == f"heimdall: backend {member.id} is DOWN: connect refused"
    assert up["previous"] == "down" and up["severity"] == "info" and up["detail"].endswith("HTTP 200")
    assert up["pool"] == {"eligible": 1, "total": 1}


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_is_down_or_hangs_does_not_affect_proxying(
    tracked, reactor, start_backends, start_proxy, http, webhook_client
):
    hanging = _Receiver()
    hanging.hang = True
    hang_port = tracked.listen(Site(hanging)).getHost().port
    ports = start_backends(2)
    proxy = start_proxy([f"http://127.0.0.1:{p}" for p in ports])
    pool = proxy.pool
    config = parse_alerts(
        {
            "flap_window": 0,
            "webhooks": [
                {"url": f"http://127.0.0.1:{free_port()}/refused", "retries": 1, "backoff": "50ms"},
                {"url": f"http://127.0.0.1:{hang_port}/hangs", "timeout": "300ms", "retries": 1, "backoff": "50ms"},
            ],
        }
    )
    dispatcher = AlertDispatcher.from_config(config, pool, reactor, reactor, webhook_client)
    dispatcher.start()
    a, b = pool.members()
    statuses = []
    slowest = 0.0
    try:
        for i in range(40):
            if i % 4 == 0:
                pool.set_health(a.id, Health.DOWN if i % 8 == 0 else Health.UP, "flapping")
            started = reactor.seconds()
            response = await http.get(proxy.url + "/")
            await response.content()
            slowest = max(slowest, reactor.seconds() - started)
            statuses.append(response.code)
        refused, hangs = dispatcher.sinks
        for _ in range(60):  # until every delivery gave up
            await deferLater(reactor, 0.05, lambda: None)
            if not refused._pending and not hangs._pending:
                break
        assert refused.failed_total == 10 and refused.delivered_total == 0
        assert hangs.failed_total == 10 and len(hanging.bodies) == 20  # each alert tried twice
    finally:
        await dispatcher.stop()
        for request in hanging.hanging:
            if request.channel is not None:
                request.channel.transport.abortConnection()
    assert statuses == [200] * 40
    assert slowest < 0.25


def test_an_alert_names_its_service():
    clock = Clock()
    pool, [a, _] = _pool(clock)
    event = PoolEvent("down", a.id, clock.seconds(), "connect refused", "up")
    document = alert_document(event, pool, service="api")
    assert document["service"] == "api"
    assert document["text"] == "heimdall [api]: backend 127.0.0.1:9000 is DOWN: connect refused"
    sink = RecordingSink()
    dispatcher = AlertDispatcher(pool, clock, [sink], flap_window=0, service="api")
    dispatcher.start()
    pool.set_health(a.id, Health.DOWN, "connect refused")
    clock.advance(0)
    assert [(alert["service"], alert["event"]) for alert in sink.alerts] == [("api", "down")]
    dispatcher.stop()
