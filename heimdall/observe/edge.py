"""
Metrics of the edge: which protocol and TLS version requests came over,
TLS handshakes, and tunnels (WebSocket and other Upgrades).  A collector of
its own beside L{heimdall.observe.metrics.Metrics}, registered on the same
registry::

    heimdall_client_requests_total{protocol,tls}     client requests by HTTP version and TLS version ("none": plain)
    heimdall_tls_handshakes_total{version,alpn}      completed TLS handshakes on the TLS port
    heimdall_tls_certificate_expiry_seconds{names}   seconds until each served certificate expires
    heimdall_tunnels_open                            tunnels open now
    heimdall_tunnels_total                           tunnels opened
    heimdall_tunnel_bytes_total{direction}           bytes relayed, "upstream" (client to backend) or "downstream"

As there, the data path only adds to a dict; the rest is read at scrape
time from the objects that hold it (L{heimdall.tls.server.ServerTls},
L{heimdall.proxy.tunnel.TunnelStats}).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from heimdall.observe.collectors import RecordCollector

__all__ = ["EdgeMetrics"]


class EdgeMetrics(RecordCollector):
    """
    @param registry: the L{CollectorRegistry} to register on.
    @param tls: the L{heimdall.tls.server.ServerTls}, or None.
    @param tunnels: the L{heimdall.proxy.tunnel.TunnelStats} of each
        service (None entries are skipped).
    """

    def __init__(self, registry, tls=None, tunnels: Sequence = (), seconds: Callable[[], float] = time.time) -> None:
        self.tls = tls
        self.tunnels = [stats for stats in tunnels if stats is not None]
        self._seconds = seconds
        self._requests: Dict[Tuple[str, str], int] = {}
        super().__init__(registry)

    def observe_request(self, record) -> None:
        key = (record.protocol, record.tls or "none")
        self._requests[key] = self._requests.get(key, 0) + 1

    def collect(self) -> Iterable:
        requests = CounterMetricFamily(
            "heimdall_client_requests", "Client requests by HTTP version and TLS version.", labels=["protocol", "tls"]
        )
        for (protocol, tls), count in sorted(self._requests.items()):
            requests.add_metric([protocol, tls], count)
        yield requests
        yield from self._collect_tls(self.tls)
        yield from self._collect_tunnels(self.tunnels)

    def _collect_tls(self, tls: Optional[Any]) -> Iterable:
        handshakes = CounterMetricFamily(
            "heimdall_tls_handshakes", "Completed TLS handshakes on the TLS port.", labels=["version", "alpn"]
        )
        expiry = GaugeMetricFamily(
            "heimdall_tls_certificate_expiry_seconds",
            "Seconds until each served certificate expires (negative: expired).",
            labels=["names"],
        )
        if tls is not None:
            for (version, alpn), count in sorted(tls.handshakes.items()):
                handshakes.add_metric([version, alpn], count)
            now = self._seconds()
            for certificate in tls.certificates:
                names = ",".join(certificate.names) or certificate.cert_path
                expiry.add_metric([names], certificate.not_after.timestamp() - now)
        yield handshakes
        yield expiry

    def _collect_tunnels(self, tunnels: Sequence) -> Iterable:
        open_now = GaugeMetricFamily("heimdall_tunnels_open", "Tunnels (WebSocket, other Upgrades) open now.")
        opened = CounterMetricFamily("heimdall_tunnels", "Tunnels opened.")
        relayed = CounterMetricFamily("heimdall_tunnel_bytes", "Bytes relayed through tunnels.", labels=["direction"])
        open_now.add_metric([], sum(t.open for t in tunnels))
        opened.add_metric([], sum(t.opened for t in tunnels))
        relayed.add_metric(["upstream"], sum(t.bytes_upstream for t in tunnels))
        relayed.add_metric(["downstream"], sum(t.bytes_downstream for t in tunnels))
        yield open_now
        yield opened
        yield relayed
