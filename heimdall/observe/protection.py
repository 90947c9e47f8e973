"""
Metrics of heimdall's self-protection: the timeouts that fired and the
client connection limits.  A collector of its own beside
L{heimdall.observe.metrics.Metrics}, on the same registry::

    heimdall_timeouts_total{kind}               timeouts that ended a request or connection, by kind:
                                                client_header, client_body, response, upstream_read,
                                                client_write, request
    heimdall_client_connections                 client connections open now (every listener)
    heimdall_client_connections_limit           limits.max_connections (0: none)
    heimdall_accept_paused                      1 while heimdall does not accept (at max_connections)
    heimdall_accept_pauses_total                times accepting stopped at max_connections
    heimdall_connections_refused_total{reason}  connections refused: "per_client" (429, max_connections_per_client)

The data path adds to a dict (a request record's C{timeout}); the rest is
read at scrape time from the objects that hold it (the sites' header
timeout counts, L{heimdall.proxy.limits.ConnectionLimits}).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from heimdall.observe.collectors import RecordCollector
from heimdall.proxy.timeouts import CLIENT_HEADER, TIMEOUT_KINDS

__all__ = ["ProtectionMetrics"]


class ProtectionMetrics(RecordCollector):
    """
    @param registry: the L{CollectorRegistry} to register on.
    @param sites: the proxy's sites (their C{header_timeouts}).
    @param limits: the L{heimdall.proxy.limits.ConnectionLimits}, or None.
    """

    def __init__(self, registry, sites: Sequence = (), limits: Optional[Any] = None) -> None:
        self.sites = [site for site in sites if site is not None]
        self.limits = limits
        self._timeouts: Dict[str, int] = {}
        super().__init__(registry)

    def observe_request(self, record) -> None:
        kind = getattr(record, "timeout", None)
        if kind is not None:
            self._timeouts[kind] = self._timeouts.get(kind, 0) + 1

    def collect(self) -> Iterable:
        timeouts = CounterMetricFamily(
            "heimdall_timeouts", "Timeouts that ended a request or a connection, by kind.", labels=["kind"]
        )
        counts = dict(self._timeouts)
        counts[CLIENT_HEADER] = counts.get(CLIENT_HEADER, 0) + sum(site.header_timeouts for site in self.sites)
        for kind in TIMEOUT_KINDS:
            timeouts.add_metric([kind], counts.get(kind, 0))
        yield timeouts
        yield from self._collect_limits(self.limits)

    def _collect_limits(self, limits: Optional[Any]) -> Iterable:
        current = GaugeMetricFamily("heimdall_client_connections", "Client connections open now.")
        limit = GaugeMetricFamily("heimdall_client_connections_limit", "limits.max_connections (0: no limit).")
        paused = GaugeMetricFamily("heimdall_accept_paused", "1 while heimdall stops accepting at max_connections.")
        pauses = CounterMetricFamily("heimdall_accept_pauses", "Times heimdall stopped accepting at max_connections.")
        refused = CounterMetricFamily(
            "heimdall_connections_refused", "Client connections refused (429), by reason.", labels=["reason"]
        )
        if limits is not None:
            current.add_metric([], limits.current)
            limit.add_metric([], limits.max_connections)
            paused.add_metric([], 1 if limits.paused else 0)
            pauses.add_metric([], limits.accept_pauses)
            refused.add_metric(["per_client"], limits.refused_per_client)
        yield current
        yield limit
        yield paused
        yield pauses
        yield refused
