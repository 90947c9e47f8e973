"""
Backup servers and connection limits through real sockets: a backup takes
over when the primary goes down (active checks) and gives the traffic back
when it returns; max_connections 1 with a queue of 2 (the 4th concurrent
request gets 503 with Retry-After, the 2nd and 3rd are answered in order);
a queue timeout; the queue in /metrics.
"""

from __future__ import annotations

import json
import time

import pytest_twisted
from twisted.internet import defer, task

from heimdall.backend import make_backend_site
from heimdall.observe.metrics import Metrics
from tests.routing.conftest import backend_of, fetch


class Backend:
    """
    A demo backend whose listening port and connections can be taken away
    and brought back on the same port.
    """

    def __init__(self, tracked, reactor):
        self.tracked, self.reactor = tracked, reactor
        self.port = None
        self.listening = None
        self.site = None

    def start(self):
        self.site = make_backend_site(None, "127.0.0.1", lambda: self.port, reactor=self.reactor)
        self.listening = self.tracked.listen(self.site, port=self.port or 0)
        self.port = self.listening.getHost().port
        return self

    @defer.inlineCallbacks
    def stop(self):
        yield self.listening.stopListening()
        for protocol in self.tracked.protocols:
            if getattr(protocol, "factory", None) is self.site and getattr(protocol, "transport", None) is not None:
                protocol.transport.abortConnection()

    @property
    def id(self):
        return f"127.0.0.1:{self.port}"


@defer.inlineCallbacks
def until(reactor, condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        yield task.deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.inlineCallbacks
def test_a_backup_takes_over_and_gives_back(tracked, reactor, routed, http):
    primary, backup = Backend(tracked, reactor).start(), Backend(tracked, reactor).start()
    lb = routed(
        {
            "services": {
                "api": {
                    "backends": [f"http://{primary.id}", {"url": f"http://{backup.id}", "backup": True}],
                    "health": {"interval": "100ms", "down_interval": "100ms", "timeout": "500ms",
                               "rise": 1, "fall": 1, "jitter": 0},
                }
            },
            "routes": [{"match": {}, "service": "api"}],
        }
    )
    service = lb.proxy.services["api"]
    service.health.startService()
    tracked.cleanups.append(service.health.stopService)
    seen = []
    for _ in range(4):
        response, _ = yield fetch(http, lb.url + "/")
        seen.append(backend_of(response))
    assert seen == [primary.id] * 4
    yield primary.stop()
    yield until(reactor, lambda: not service.pool.get(primary.id).health_details()["eligible"])
    seen = []
    for _ in range(4):
        response, _ = yield fetch(http, lb.url + "/")
        seen.append((response.code, backend_of(response)))
    assert seen == [(200, backup.id)] * 4
    primary.start()  # back on its port
    yield until(reactor, lambda: service.pool.get(primary.id).health_details()["eligible"])
    seen = []
    for _ in range(4):
        response, _ = yield fetch(http, lb.url + "/")
        seen.append(backend_of(response))
    assert seen == [primary.id] * 4


@pytest_twisted.inlineCallbacks
def test_one_slot_and_a_queue_of_two(tracked, reactor, routed, http):
    backend = Backend(tracked, reactor).start()
    lb = routed(
        {
            "services": {
                "api": {
                    "backends": [{"url": f"http://{backend.id}", "max_connections": 1}],
                    "queue": {"size": 2, "timeout": "5s"},
                }
            },
            "routes": [{"match": {}, "service": "api"}],
        }
    )
    service = lb.proxy.services["api"]
    metrics = Metrics(process_metrics=False)
    detach = metrics.attach(service.pool, service.resource, service.upstream, service="api")
    tracked.cleanups.append(detach)
    done = []
    started = time.monotonic()

    def send(name):
        d = fetch(http, lb.url + "/delay?ms=300")
        d.addCallback(lambda result: done.append((name, result[0].code, result[0].headers, result[1],
                                                  time.monotonic() - started)))
        return d

    requests = []
    for name in ("1st", "2nd", "3rd", "4th"):
        requests.append(send(name))
        # Each one reaches heimdall before the next is sent.
        member = service.pool.get(backend.id)
        yield until(reactor, lambda n=len(requests): member.in_flight + len(service.resource.queue) + len(done) >= n)
    assert len(service.resource.queue) == 2
    assert metrics.registry.get_sample_value("heimdall_queue_length", {"service": "api"}) == 2
    yield defer.gatherResults(requests)
    names = [name for name, *_ in done]
    assert names == ["4th", "1st", "2nd", "3rd"]
    name, code, headers, body, at = done[0]
    assert code == 503 and headers.getRawHeaders("retry-after") == ["5"] and at < 0.25
    assert json.loads(body)["error"] == "every backend is busy and the queue is full"
    answered = [(name, code, json.loads(body)["count"]) for name, code, _, body, _ in done[1:]]
    assert [code for _, code, _ in answered] == [200, 200, 200]
    counts = [count for _, _, count in answered]
    assert counts == sorted(counts)  # the backend saw them in order: FIFO
    get = metrics.registry.get_sample_value
    assert get("heimdall_queued_total", {"service": "api"}) == 2
    assert get("heimdall_queue_rejected_total", {"service": "api", "reason": "full"}) == 1
    assert get("heimdall_queue_wait_seconds_count", {"service": "api"}) == 2
    assert get("heimdall_queue_wait_seconds_sum", {"service": "api"}) >= 0.3 + 0.25


@pytest_twisted.inlineCallbacks
def test_a_queued_request_times_out_with_503_and_retry_after(tracked, reactor, routed, http):
    backend = Backend(tracked, reactor).start()
    lb = routed(
        {
            "backends": [{"url": f"http://{backend.id}", "max_connections": 1}],
            "services": {"default": {"queue": {"size": 1, "timeout": "200ms"}}},
        }
    )
    slow = fetch(http, lb.url + "/delay?ms=1000")
    yield until(reactor, lambda: lb.proxy.default.pool.get(backend.id).in_flight == 1)
    started = time.monotonic()
    response, body = yield fetch(http, lb.url + "/")
    assert response.code == 503 and 0.15 < time.monotonic() - started < 0.9
    assert response.headers.getRawHeaders("retry-after") == ["1"]
    assert json.loads(body)["error"] == "timed out waiting for a free backend"
    response, _ = yield slow
    assert response.code == 200
