"""
One call that builds health checks, outlier detection and alerts for a
pool: L{build_health}, returning a L{HealthService} to add to heimdall's
MultiService.

    health = build_health(config.health, config.alerts, pool, reactor, reactor)
    health.setServiceParent(multi_service)       # or health.startService()
    health.prober, health.detector, health.alerts    # the three components
    health.retry_budget                              # for the proxy

Start order: alerts, outlier detection, active checks (so that the first
transitions are already alerted); stop order the reverse.
"""

from __future__ import annotations

import random as _random
from typing import Any, Mapping, Optional

from twisted.application.service import Service
from twisted.internet import defer

from heimdall.observe.alerts import AlertDispatcher
from heimdall.health.active import HealthProber
from heimdall.health.probes import default_check_factory
from heimdall.config.health import AlertsConfig, HealthConfig, parse_alerts, parse_health
from heimdall.health.outlier import OutlierDetector
from heimdall.pool.pool import BackendPool
from heimdall.proxy.retry_budget import RetryBudget

__all__ = ["HealthService", "build_health"]


class HealthService(Service):
    """
    The prober, the outlier detector and the alert dispatcher of one pool,
    started and stopped together.  Sets the pool's panic mode.
    """

    name = "heimdall-health"

    def __init__(
        self,
        pool: BackendPool,
        health: HealthConfig,
        alerts: AlertsConfig,
        clock: Any,
        reactor: Any = None,
        *,
        random: Optional[_random.Random] = None,
        agent: Any = None,
        webhook_client: Any = None,
        check_factory: Any = None,
    ) -> None:
        reactor = reactor if reactor is not None else clock
        self.pool = pool
        self.health_config = health
        self.alerts_config = alerts
        pool.panic_mode = health.panic_mode
        self.prober = HealthProber(
            pool,
            health,
            clock,
            check_factory if check_factory is not None else default_check_factory(reactor, agent),
            random if random is not None else _random.Random(),
        )
        self.detector = OutlierDetector(pool, health.outlier, clock)
        self.alerts = AlertDispatcher.from_config(alerts, pool, clock, reactor, webhook_client)
        # Live requests are counted by the proxy (request_started/finished),
        # not summed from the pool's leases: right after a backend dies its
        # failed leases are gone while its requests still need a retry.
        budget = health.retry_budget
        self.retry_budget = RetryBudget(
            budget_ratio=budget.percent / 100.0,
            min_retry_concurrency=budget.min_retry_concurrency,
            clock=clock,
        )

    def startService(self) -> None:
        super().startService()
        self.alerts.start()
        self.detector.start()
        self.prober.start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.prober.stop()
        self.detector.stop()
        self.pool.stop()  # the slow-start timer
        return self.alerts.stop()


def build_health(
    health_mapping: Optional[Mapping[str, Any]],
    alerts_mapping: Optional[Mapping[str, Any]],
    pool: BackendPool,
    clock: Any,
    reactor: Any = None,
    **options: Any,
) -> HealthService:
    """
    Parse the C{health} and C{alerts} sections and build a L{HealthService}
    (not started).  C{options}: C{random}, C{agent} (the probes' IAgent),
    C{webhook_client} (treq-like), C{check_factory}.

    @raise heimdall.errors.ConfigError: for a bad section, with a path like
        C{health.interval}.
    """
    return HealthService(pool, parse_health(health_mapping), parse_alerts(alerts_mapping), clock, reactor, **options)
