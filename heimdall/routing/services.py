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

__all__ = [
    "Service", "build_pool", "build_queue", "build_retry_budget", "build_service", "build_services", "build_strategy",
]


def build_strategy(settings: ServiceConfig, clock: Any) -> Any:
    """
    A service's strategy (an L{heimdall.interfaces.IStrategy}).
    """
    return default_registry().create(settings.strategy.name, dict(settings.strategy.options), _random.Random(), clock)


def build_pool(settings: ServiceConfig, clock: Any) -> BackendPool:
    """
    A service's backend pool with its strategy and the pool settings of
    its C{health} section (panic mode); empty.
    """
    return BackendPool(build_strategy(settings, clock), clock=clock, panic_mode=settings.health.pool.panic_mode)


def build_queue(settings: ServiceConfig, pool: BackendPool, clock: Any) -> Optional[RequestQueue]:
    queue = settings.queue
    return RequestQueue(pool, queue.size, queue.timeout, clock) if queue.size else None


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

    def reconfigure(self, settings: ServiceConfig, config: Config, clock: Any, strategy: bool = True) -> None:
        """
        Take C{settings} (a reload) for what follows, keeping the pool's
        members with their state and the pooled connections: the strategy
        (unless C{strategy} is false: one set at runtime stays), health
        checks, outlier detection and panic mode if the C{health} section
        changed, retries, timeouts, upstream settings and the queue.
        """
        if strategy and settings.strategy != self.settings.strategy:
            self.pool.set_strategy(build_strategy(settings, clock))
        if settings.health != self.settings.health:
            self.health.reconfigure(settings.health)
        timeouts = settings.timeouts
        self.upstream.configure(timeouts.connect, timeouts.idle_upstream, settings.upstream.max_idle_per_backend)
        self.resource.configure(
            retries=settings.retries, retry_on=settings.retry_on, response_timeout=timeouts.response,
            tunnel_idle=timeouts.tunnel_idle, max_body_bytes=config.limits.max_body_bytes,
            trusted_proxies=config.forwarded.trusted_proxies,
            upstream_read=timeouts.upstream_read, request_timeout=timeouts.request,
        )
        budget, wanted = self.resource.retry_budget, settings.health.retry_budget
        if budget is not None:
            budget.budget_ratio, budget.min_retry_concurrency = wanted.percent / 100.0, wanted.min_retry_concurrency
        if self.resource.queue is not None:
            self.resource.queue.resize(settings.queue.size, settings.queue.timeout)
        else:
            self.resource.queue = build_queue(settings, self.pool, clock)
        self.settings = settings


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
    health = build_health(settings.health, config.alerts, pool, reactor, reactor, agent=agent, service=name)
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
    queue = build_queue(settings, pool, reactor)
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
        upstream_read=timeouts.upstream_read,
        request_timeout=timeouts.request,
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
