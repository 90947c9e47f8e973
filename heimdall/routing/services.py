"""
The running services: one L{Service} per configured service, each with its
own pool and strategy, upstream connections, health checks, retry budget
and balancing resource, built by L{build_service} from a resolved
L{heimdall.config.services.ServiceConfig}.

Services are plain objects handed to whoever needs them (the router, the
manager, metrics); nothing here is global.
"""

from __future__ import annotations

import random as _random
from typing import Any, Dict, Mapping, Optional

import attrs

from heimdall.config.health import RetryBudgetConfig
from heimdall.config.model import Config
from heimdall.config.services import DEFAULT_SERVICE, ServiceConfig, service_configs
from heimdall.health.probes import probe_agent
from heimdall.health.wiring import HealthService, build_health
from heimdall.pool.pool import BackendPool
from heimdall.proxy.queue import RequestQueue
from heimdall.proxy.resource import BalancerResource
from heimdall.proxy.retry_budget import RetryBudget
from heimdall.proxy.upstream import UpstreamPool
from heimdall.strategies.registry import default_registry

__all__ = ["Service", "build_pool", "build_retry_budget", "build_service", "build_services"]


def build_pool(settings: ServiceConfig, clock: Any) -> BackendPool:
    """
    A service's backend pool with its strategy and the pool settings of
    its C{health} section (panic mode); empty.
    """
    strategy = default_registry().create(
        settings.strategy.name, dict(settings.strategy.options), _random.Random(), clock
    )
    return BackendPool(strategy, clock=clock, panic_mode=settings.health.pool.panic_mode)


def build_retry_budget(settings: RetryBudgetConfig, clock: Any) -> RetryBudget:
    """
    A service's retry budget.  Live requests are counted by the proxy
    (request_started/finished), not summed from the pool's leases: right
    after a backend dies its failed leases are gone while its requests
    still need a retry.
    """
    return RetryBudget(
        budget_ratio=settings.percent / 100.0, min_retry_concurrency=settings.min_retry_concurrency, clock=clock
    )


@attrs.define(eq=False)
class Service:
    """
    One service's running parts.

    @ivar settings: its resolved config.
    @ivar health: its active checks, outlier detection and alerts (a
        Twisted service, started by its parent).
    """

    name: str
    settings: ServiceConfig
    pool: BackendPool
    upstream: UpstreamPool
    resource: BalancerResource
    health: HealthService


def build_service(
    name: str,
    settings: ServiceConfig,
    config: Config,
    reactor: Any,
    access_log: Optional[Any] = None,
    tls: Optional[Any] = None,
) -> Service:
    """
    A service from its resolved C{settings}, with an empty pool: its
    server manager loads its backends with its state file's changes.
    C{config} gives what all services share (forwarded headers, body
    limit, alerts).  C{tls} (an L{heimdall.interfaces.IBackendTls}) is how
    its requests and its health probes reach https backends.
    """
    pool = build_pool(settings, reactor)
    agent = probe_agent(reactor, tls=tls) if tls is not None else None
    health = build_health(settings.health, config.alerts, pool, reactor, reactor, agent=agent)
    if name != DEFAULT_SERVICE:
        # Named services in one MultiService must have distinct names.
        health.setName(f"{health.name}:{name}")
    timeouts = settings.timeouts
    upstream = UpstreamPool(
        reactor=reactor,
        connect_timeout=timeouts.connect,
        idle_timeout=timeouts.idle_upstream,
        max_idle_per_backend=settings.upstream.max_idle_per_backend,
        tls=tls,
    )
    queue = (
        RequestQueue(pool, settings.queue.size, settings.queue.timeout, reactor) if settings.queue.size else None
    )
    resource = BalancerResource(
        pool,
        upstream,
        clock=reactor,
        retries=settings.retries,
        response_timeout=timeouts.response,
        max_body_bytes=config.limits.max_body_bytes,
        trusted_proxies=config.forwarded.trusted_proxies,
        access_log=access_log,
        retry_on=settings.retry_on,
        retry_budget=build_retry_budget(settings.health.retry_budget, reactor),
        service=name,
        queue=queue,
        tunnel_idle=timeouts.tunnel_idle,
    )
    return Service(name, settings, pool, upstream, resource, health)


def build_services(
    config: Config, reactor: Any, access_log: Optional[Any] = None, tls: Optional[Mapping[str, Any]] = None
) -> Dict[str, Service]:
    """
    Every service of C{config}, C{default} first, with empty pools: each
    service's server manager loads its backends with its state file's
    changes.  C{tls}: each service's L{heimdall.interfaces.IBackendTls}, by
    name.
    """
    tls = tls or {}
    return {
        name: build_service(name, settings, config, reactor, access_log, tls.get(name))
        for name, settings in service_configs(config).items()
    }
