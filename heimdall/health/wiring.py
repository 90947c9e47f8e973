"""
One call that builds health checks, outlier detection and alerts for a
pool: L{build_health}, returning a L{HealthService} to add to heimdall's
MultiService.

    health = build_health(config.health, config.alerts, pool, clock, reactor)
    health.setServiceParent(multi_service)       # or health.startService()
    health.prober, health.detector, health.alerts    # the three components

The sections come typed (L{heimdall.config.health.HealthConfig} and
L{heimdall.config.health.AlertsConfig}, parsed once with the rest of the
config).  What the section configures for others is built by them: the
pool's panic mode where the pool is built, the retry budget where the
proxy is built (L{heimdall.service}).

Start order: alerts, outlier detection, active checks (so that the first
transitions are already alerted); stop order the reverse.
"""

from __future__ import annotations

import random as _random
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import defer

from heimdall.observe.alerts import AlertDispatcher
from heimdall.health.active import HealthProber
from heimdall.health.probes import default_check_factory
from heimdall.config.health import AlertsConfig, HealthConfig
from heimdall.health.outlier import OutlierDetector
from heimdall.pool.pool import BackendPool

__all__ = ["HealthService", "build_health"]


class HealthService(Service):
    """
    The prober, the outlier detector and the alert dispatcher of one pool,
    started and stopped together.
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
        service: str = "default",
    ) -> None:
        """
        @param service: the name of the service C{pool} is (its alerts say it).
        """
        reactor = reactor if reactor is not None else clock
        self.pool = pool
        self.health_config = health
        self.alerts_config = alerts
        self.prober = HealthProber(
            pool,
            health,
            clock,
            check_factory if check_factory is not None else default_check_factory(reactor, agent),
            random if random is not None else _random.Random(),
        )
        self.detector = OutlierDetector(pool, health.outlier, clock)
        self.alerts = AlertDispatcher.from_config(alerts, pool, clock, reactor, webhook_client, service)

    def startService(self) -> None:
        super().startService()
        self.alerts.start()
        self.detector.start()
        self.prober.start()

    def reconfigure(self, health: HealthConfig) -> None:
        """
        The service's C{health} section changed (a reload): checks,
        outlier detection and the pool's panic mode follow; each member
        keeps its state.
        """
        self.health_config = health
        self.prober.reconfigure(health)
        self.detector.reconfigure(health.outlier, running=self.running)
        self.pool.panic_mode = health.pool.panic_mode

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.prober.stop()
        self.detector.stop()
        self.pool.stop()  # the slow-start timer
        return self.alerts.stop()


def build_health(
    health: HealthConfig,
    alerts: AlertsConfig,
    pool: BackendPool,
    clock: Any,
    reactor: Any = None,
    **options: Any,
) -> HealthService:
    """
    A L{HealthService} (not started) for C{pool}.  C{clock} is an
    IReactorTime; C{reactor} connects (the probes, the webhooks) and
    spawns (the alert commands), C{clock} when not given.  C{options}:
    C{random}, C{agent} (the probes' IAgent), C{webhook_client}
    (treq-like), C{check_factory}, C{service} (its name, for the alerts).
    """
    return HealthService(pool, health, alerts, clock, reactor, **options)
