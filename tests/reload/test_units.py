"""
The pieces a reload uses, deterministically (task.Clock, MemoryReactor):
a member waiting for its first check, waiting for first checks, a moved
listener, and the parts that take new settings in place.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from heimdall.config.model import parse_config
from heimdall.config.services import service_configs
from heimdall.errors import NoBackendAvailable
from heimdall.pool.context import RequestContext
from heimdall.pool.pool import Backend, BackendPool, is_eligible
from heimdall.pool.values import Health
from heimdall.proxy.queue import RequestQueue
from heimdall.proxy.upstream import UpstreamPool
from heimdall.reload.apply import first_checks
from heimdall.reload.listeners import Listener
from heimdall.routing.services import build_service
from heimdall.strategies.registry import default_registry


def _pool(clock):
    return BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)


def test_a_checking_member_gets_no_request_until_its_first_check():
    clock = Clock()
    pool = _pool(clock)
    member = pool.add(Backend.from_url("http://127.0.0.1:1"), checking=True)
    assert not is_eligible(member) and member.health_details()["checking"] is True
    with pytest.raises(NoBackendAvailable):
        pool.pick(RequestContext())
    pool.set_health(member.id, Health.UNKNOWN)
    assert member.checking
    pool.set_health(member.id, Health.UP, "HTTP 200")
    assert not member.checking and is_eligible(member) and pool.pick(RequestContext()) is member


def test_a_failed_first_check_ends_checking_as_down():
    pool = _pool(Clock())
    member = pool.add(Backend.from_url("http://127.0.0.1:1"), checking=True)
    pool.set_health(member.id, Health.DOWN, "refused")
    assert not member.checking and not is_eligible(member)


def test_first_checks_fire_when_every_member_had_one_or_on_timeout():
    clock = Clock()
    pool = _pool(clock)
    a = pool.add(Backend.from_url("http://127.0.0.1:1"), checking=True)
    b = pool.add(Backend.from_url("http://127.0.0.1:2"), checking=True)
    waiting = first_checks(pool, [a.id, b.id], 5.0, clock)
    pool.set_health(a.id, Health.UP)
    assert not waiting.called
    pool.remove(b.id)  # one that left counts as done
    assert waiting.called and not clock.getDelayedCalls()
    c = pool.add(Backend.from_url("http://127.0.0.1:3"), checking=True)
    late = first_checks(pool, [c.id], 5.0, clock)
    clock.advance(5)
    assert late.called and c.checking


def test_a_listener_binds_the_new_endpoint_before_closing_the_old_one():
    reactor = MemoryReactorClock()
    factory = object()
    listener = Listener(reactor, factory, "tcp:8001:interface=127.0.0.1", "proxy")
    listener.listen()
    old = listener.port
    stopped = []
    old.stopListening = lambda: stopped.append(old)
    new = []
    listener.bind("tcp:8002:interface=127.0.0.1").addCallback(new.append)
    assert [(port, f) for port, f, _, _ in reactor.tcpServers] == [(8001, factory), (8002, factory)]
    assert listener.port is old
    listener.commit(new[0], "tcp:8002:interface=127.0.0.1")
    assert listener.port is new[0] and listener.endpoint == "tcp:8002:interface=127.0.0.1"
    assert stopped == [old]


def test_parts_take_new_settings_in_place():
    reactor = MemoryReactorClock()
    pool = _pool(reactor)
    queue = RequestQueue(pool, 2, 1.0, reactor)
    queue.resize(0, 3.0)
    assert not queue.enqueue(object()) and queue.timeout == 3.0
    upstream = UpstreamPool(reactor=reactor, connect_timeout=1.0)
    upstream._endpoint(Backend.from_url("http://127.0.0.1:1"))
    upstream.configure(2.0, 30.0, 4)
    assert (upstream.connect_timeout, upstream.idle_timeout, upstream.max_idle_per_backend) == (2.0, 30.0, 4)
    assert upstream._endpoints == {}


def test_a_service_is_reconfigured_keeping_its_pool_and_members():
    reactor = MemoryReactorClock()
    old = parse_config({"backends": ["http://127.0.0.1:1"]})
    new = parse_config({
        "backends": ["http://127.0.0.1:1"], "strategy": "least_connections", "retries": 0, "retry_on": ["5xx"],
        "timeouts": {"response": "3s", "connect": "1s"}, "forwarded": {"trusted_proxies": ["10.0.0.0/8"]},
        "health": {"interval": "7s", "retry_budget": {"percent": 50}},
        "services": {"default": {"queue": {"size": 4, "timeout": "2s"}}},
    })
    service = build_service("default", service_configs(old)["default"], old, reactor)
    member = service.pool.add(Backend.from_url("http://127.0.0.1:1"))
    pool, strategy = service.pool, service.pool.strategy
    service.reconfigure(service_configs(new)["default"], new, reactor)
    assert service.pool is pool and pool.get(member.id) is member and pool.strategy is not strategy
    resource = service.resource
    assert (resource.retries, resource.retry_on, resource.response_timeout) == (0, frozenset({"5xx"}), 3.0)
    assert resource.trusted_proxies and resource.retry_budget.budget_ratio == 0.5
    assert (resource.queue.size, resource.queue.timeout) == (4, 2.0)
    assert service.upstream.connect_timeout == 1.0
    assert service.health.prober.config.check.interval == 7.0
    kept = pool.strategy
    service.reconfigure(service_configs(new)["default"], new, reactor)
    assert pool.strategy is kept  # an unchanged strategy is not rebuilt
