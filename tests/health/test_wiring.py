"""
L{heimdall.health.wiring.build_health}: the prober, the outlier detector
and the alerts of one pool, started and stopped together.
"""

from __future__ import annotations

import random

from twisted.internet.testing import MemoryReactorClock

from heimdall.config.health import parse_alerts, parse_health
from heimdall.health.wiring import HealthService, build_health
from heimdall.pool.pool import BackendPool
from heimdall.pool.values import Backend, Outcome
from heimdall.strategies.registry import default_registry


def test_build_health_wires_and_unwires_everything():
    reactor = MemoryReactorClock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), reactor), clock=reactor)
    member = pool.add(Backend.from_url("http://127.0.0.1:9000"))
    service = build_health(
        parse_health({"type": "tcp", "interval": "1s"}),
        parse_alerts({"webhooks": [{"url": "http://127.0.0.1:1/hook"}]}),
        pool,
        reactor,
        reactor,
        random=random.Random(0),
    )
    assert isinstance(service, HealthService)
    assert [type(s).__name__ for s in service.alerts.sinks] == ["WebhookSink"]
    service.startService()
    reactor.advance(0.1)  # the first probe at once, after its jitter (up to 10% of 1 s)
    assert len(reactor.tcpClients) == 1
    assert service.prober.running and service.detector.running
    pool.lease(member).release(Outcome(failure="connect"))
    assert member.ejected
    service.stopService()
    assert not service.prober.running and not service.detector.running
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
