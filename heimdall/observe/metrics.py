"""
Prometheus metrics for heimdall, and a native twisted.web resource that
serves them.

Wiring: C{detach = metrics.attach(pool, resource, upstream, spawner=...,
supervisor=..., alerts=..., health=..., router=...)} for the C{default}
service, C{metrics.attach_service(name, pool, resource, upstream, health)}
for each other; the manager serves L{exposition} at C{/metrics}.

Design: the data path only does plain Python arithmetic on small dicts and
lists (one observer call per client request, one per upstream attempt);
everything that can be read from live objects (in-flight counts, health,
weights, pooled connections, spawned processes) is read when Prometheus
scrapes, so it costs nothing between scrapes.  At scrape time a custom
collector turns the numbers into C{prometheus_client} metric families, so
types, names and the text/OpenMetrics exposition are C{prometheus_client}'s.
Everything runs in the reactor thread, so nothing needs a lock.

Label cardinality is bounded: labels are the service and the backend id
(pool members only; a removed backend's series are dropped; a request
heimdall answered itself has C{service="none", backend="none"}), the method (the nine
standard methods, anything else is C{OTHER}), the status class (C{2xx}),
and small fixed sets of reasons and states.  Never the path or the client.

The metrics (every counter ends in C{_total} in the exposition)::

    heimdall_requests_total{service,backend,method,code}         client requests by status class
    heimdall_requests_in_flight{service,backend}                  upstream requests in progress
    heimdall_request_duration_seconds{service,backend}           histogram: client-side total time
    heimdall_upstream_ttfb_seconds{service,backend}              histogram: upstream time to first byte
    heimdall_request_bytes_total{service,backend}                request body bytes received
    heimdall_response_bytes_total{service,backend}               response body bytes sent
    heimdall_retries_total{service,reason}               requests re-sent to another backend
    heimdall_upstream_failures_total{service,backend,reason}     failed upstream attempts by kind
    heimdall_upstream_connections_opened_total / _reused_total, heimdall_upstream_connect_failures_total
    heimdall_upstream_idle_connections{service,backend}          pooled idle connections
    heimdall_backend_health{service,backend,state}               1 for the current state (unknown/up/down)
    heimdall_backend_admin_state{service,backend,state}          1 for the current state (ready/draining/maintenance)
    heimdall_backend_eligible{service,backend}                   1 if it may get new requests
    heimdall_backend_ejected{service,backend}                    1 while outlier detection has it ejected
    heimdall_backend_weight{service,backend}                     configured weight
    heimdall_backend_effective_weight{service,backend}           weight now (less during slow start)
    heimdall_backend_transitions_total{service,backend,to}       health transitions to up / down
    heimdall_backend_ejections_total{service,backend}            passive (outlier detection) ejections
    heimdall_backend_last_check_success{service,backend}         1/0: the last active check passed
    heimdall_backend_last_check_latency_seconds{service,backend} the last active check's duration
    heimdall_health_checks_total{service,backend,result}         active checks, success/failure (needs a feed)
    heimdall_pool_backends{service}                      backends in the pool
    heimdall_pool_backends_eligible{service}             of which eligible
    heimdall_pool_panic{service}                         1 while routing in panic mode
    heimdall_pool_events_total{event}                    added/removed/up/down/ejected/returned/...
    heimdall_spawned_processes                           spawned backend processes running
    heimdall_spawned_process_exits_total                 spawned processes that exited on their own
    heimdall_spawned_process_restarts_total              restarts by supervision
    heimdall_supervision_events_total{event}             exited/restart_scheduled/restarted/restart_failed/...
    heimdall_alerts_sent_total                           alerts handed to the sinks
    heimdall_alerts_suppressed_total                     events held back by flap damping
    heimdall_alert_deliveries_total{channel,result}      deliveries by sink kind, delivered/failed
    heimdall_strategy_info{strategy}                     the configured strategy
    heimdall_build_info{version,python,implementation,twisted}; heimdall_queue_* (observe/queues.py)
    process_*                                            CPU, memory, open fds (prometheus_client)
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from heimdall.observe.exposition import MetricsResource, exposition
from heimdall.observe.queues import queue_families
from heimdall.pool.values import EventKind, FailureKind
from heimdall.proxy.exchange import STALE

__all__ = ["DURATION_BUCKETS", "Metrics", "MetricsResource", "exposition", "observe_requests", "undo_all"]

#: Histogram buckets (seconds): 100 µs to 10 s, about 2.5 per decade, so
#: that a sub-millisecond proxy hop and a 10 s timeout both land in a
#: bucket of their own.
DURATION_BUCKETS: Tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
# method bytes -> a multiple of 10; the status class (status // 100) is
# added to it, so one small int keys the request counter: no tuple, no
# string formatting on the data path.  Code 0 is OTHER.
_METHOD_CODE = {name.encode("ascii"): 10 * (i + 1) for i, name in enumerate(_METHODS)}
_CODE_METHOD = {0: "OTHER", **{10 * (i + 1): name for i, name in enumerate(_METHODS)}}

#: Why the proxy retries (RequestRecord.retry_reasons); listed at 0 from the start.
_RETRY_REASONS = ("connect", "reset", "stale", "bad_response", "5xx", "timeout")
_FAILURE_REASONS = tuple(kind.value for kind in FailureKind)
# STALE: a pooled connection the backend had closed while idle: not held
# against the backend, but worth seeing (it causes retries).

_NONE = "none"  # the backend label of a request no backend was picked for

_POOL_EVENTS = tuple(kind.value for kind in EventKind)
_HEALTH_TRANSITIONS = (EventKind.UP, EventKind.DOWN)


def _sink_channel(sink) -> str:
    name = getattr(sink, "name", None)
    if isinstance(name, str) and name:
        return name.split()[0]
    return type(sink).__name__.lower().replace("sink", "") or "sink"


class _Stats:
    """
    The data-path numbers of one backend label value.  Histograms are
    per-bucket (not cumulative) counts; the last slot is +Inf.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "checks",
        "duration_counts",
        "duration_sum",
        "ejections",
        "failures",
        "requests",
        "transitions",
        "ttfb_counts",
        "ttfb_sum",
    )

    def __init__(self, buckets: int) -> None:
        self.requests: Dict[int, int] = {}
        self.duration_counts = [0] * (buckets + 1)
        self.duration_sum = 0.0
        self.ttfb_counts = [0] * (buckets + 1)
        self.ttfb_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.failures: Dict[str, int] = {}
        self.transitions: Dict[str, int] = {}
        self.checks: Dict[str, int] = {}
        self.ejections = 0


def _cumulative(counts: List[int], bounds: Sequence[float]) -> List[Tuple[str, float]]:
    total = 0
    out = []
    for bound, count in zip(bounds, counts):
        total += count
        out.append((_float_label(bound), total))
    total += counts[-1]
    out.append(("+Inf", total))
    return out


def _float_label(value: float) -> str:
    # prometheus_client's own formatting of bucket bounds ("0.001", "1.0").
    return repr(float(value))


def _build_info() -> Dict[str, str]:
    from heimdall import __version__

    try:
        import twisted

        twisted_version = twisted.__version__
    except Exception:  # pragma: no cover - Twisted is a dependency
        twisted_version = "unknown"
    return {
        "version": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "twisted": twisted_version,
    }


class Metrics:
    """
    heimdall's metrics: the numbers, the observers that update them, and
    the collector that exposes them in C{registry}.

    @param registry: where to register; a new L{CollectorRegistry} if None.
    @param strategy_name: returns the default service's strategy name now,
        for C{heimdall_strategy_info} (read at scrape time, so a runtime
        change through the manager shows without being told).
    @param buckets: histogram bucket upper bounds, in seconds.
    @param process_metrics: also register C{prometheus_client}'s
        L{ProcessCollector} (CPU, memory, file descriptors).
    """

    def __init__(
        self,
        registry: Optional[CollectorRegistry] = None,
        *,
        strategy_name: Optional[Callable[[], str]] = None,
        buckets: Sequence[float] = DURATION_BUCKETS,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.strategy_name = strategy_name
        self.buckets = tuple(sorted(float(b) for b in buckets))
        # (service, backend id) -> numbers.
        self._stats: Dict[Tuple[str, str], _Stats] = {}
        # Member -> _Stats: outcomes arrive with the Member, whose .id
        # builds a string on every call.
        self._member_stats: Dict[Any, _Stats] = {}
        self._retries: Dict[Tuple[str, str], int] = {}  # (service, reason)
        self._pool_events: Dict[str, int] = {}
        self._alerts: Dict[Tuple[str, str], int] = {}
        self._supervision: Dict[str, int] = {}
        self._spawned_exits = 0
        self._pool = None
        # service name -> (pool, upstream), default first.
        self._services: Dict[str, Tuple[Any, Any]] = {}
        self._queues: Dict[str, Any] = {}  # service name -> its resource
        self._spawner = None
        self._alert_dispatcher = None
        self._build_info = _build_info()
        self.registry.register(self)
        if process_metrics:
            try:
                ProcessCollector(registry=self.registry)
            except ValueError:
                pass  # the registry has process metrics already

    # -- wiring ---------------------------------------------------------------

    def attach(
        self,
        pool,
        resource=None,
        upstream=None,
        spawner=None,
        alerts=None,
        supervisor=None,
        health=None,
        service: str = "default",
        router=None,
    ) -> Callable[[], None]:
        """
        Subscribe to everything heimdall reports, and remember what to read
        at scrape time.

        @param pool: the L{heimdall.pool.pool.BackendPool}: its events and
            per-attempt outcomes; members' state is read at scrape time.
        @param resource: the L{heimdall.proxy.resource.BalancerResource}: a request
            observer; its C{upstream} is used if C{upstream} is None.
        @param upstream: the L{heimdall.proxy.upstream.UpstreamPool}: its
            counters, read at scrape time.
        @param spawner: a L{heimdall.manager.spawner.ServerSpawner}: running
            processes (scrape time) and exits (C{subscribe_exit}).
        @param alerts: the L{heimdall.observe.alerts.AlertDispatcher}: C{sent_total},
            C{suppressed_total} and each sink's C{delivered_total} /
            C{failed_total}, read at scrape time.
        @param supervisor: the manager's L{heimdall.manager.spawner.Supervisor}:
            its events (restarts).
        @param health: the L{heimdall.health.active.HealthProber}: its
            C{subscribe_checks}, one call per active check.
        @param service: the name of the service C{pool} is (the C{service}
            label); more services join with L{attach_service}.
        @param router: a L{heimdall.routing.router.Router}: the requests it
            answers itself.
        @return: a function that undoes all of it (services included).
        """
        if self._pool is not None:
            raise RuntimeError("these Metrics are attached already; detach first")
        undo: List[Callable[[], None]] = []
        self._pool = pool
        undo.append(self.attach_service(service, pool, resource, upstream, health))
        if router is not None:
            observe_requests(router, self.observe_request, undo)
        if spawner is not None:
            self._spawner = spawner
            spawner.subscribe_exit(self.observe_spawned_exit)
            undo.append(lambda: spawner.unsubscribe_exit(self.observe_spawned_exit))
        if supervisor is not None:
            undo.append(supervisor.subscribe(self.observe_supervision))
        if alerts is not None:
            self._alert_dispatcher = alerts

        def detach() -> None:
            undo_all(undo)
            self._pool = self._spawner = self._alert_dispatcher = None
            self._services.clear()
            self._member_stats.clear()

        return detach

    def attach_service(self, name: str, pool, resource=None, upstream=None, health=None) -> Callable[[], None]:
        """
        Count service C{name} too: its C{pool}'s events and outcomes, its
        C{resource}'s requests, its C{upstream} connections and its
        C{health} prober's checks, labelled C{service=name}.  Returns a
        function that undoes it (the counters seen so far stay).
        """
        if name in self._services:
            raise RuntimeError(f"service {name!r} is attached already")
        undo: List[Callable[[], None]] = []
        undo.append(pool.subscribe(lambda event: self.observe_pool_event(event, name)))
        undo.append(pool.subscribe_outcomes(lambda member, outcome: self.observe_outcome(member, outcome, name)))
        if resource is not None:
            observe_requests(resource, self.observe_request, undo)
            if upstream is None:
                upstream = getattr(resource, "upstream", None)
        if health is not None:
            undo.append(health.subscribe_checks(lambda backend_id, result: self.observe_check(backend_id, result, name)))
        self._services[name] = (pool, upstream)
        if resource is not None:
            self._queues[name] = resource  # its queue is read at scrape time: a reload may add one

        def detach() -> None:
            undo_all(undo)
            self._services.pop(name, None)
            self._queues.pop(name, None)

        return detach

    # -- the data path ----------------------------------------------------------

    def _new_stats(self, key: Tuple[str, str]) -> _Stats:
        stats = self._stats[key] = _Stats(len(self.buckets))
        return stats

    def observe_request(self, record) -> None:
        """
        A L{heimdall.proxy.exchange.RequestRecord}: one client request ended.
        """
        backend = record.backend
        key = (getattr(record, "service", None) or _NONE, backend if backend is not None else _NONE)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._new_stats(key)
        key = _METHOD_CODE.get(record.method, 0) + record.status // 100
        requests = stats.requests
        requests[key] = requests.get(key, 0) + 1
        total = record.total_time
        stats.duration_counts[bisect_left(self.buckets, total)] += 1
        stats.duration_sum += total
        stats.bytes_in += record.bytes_in
        stats.bytes_out += record.bytes_out
        if record.attempts > 1:
            self._count_retries(record)

    def _count_retries(self, record) -> None:
        # The proxy says why each retry happened (RequestRecord.retry_reasons:
        # connect, reset, stale, bad_response, 5xx, timeout); a record
        # without them still counts, as "unknown".
        reasons = getattr(record, "retry_reasons", None) or ("unknown",) * (record.attempts - 1)
        retries, service = self._retries, getattr(record, "service", None) or "default"
        for reason in reasons:
            retries[service, reason] = retries.get((service, reason), 0) + 1

    def observe_outcome(self, member, outcome, service: str = "default") -> None:
        """
        One upstream attempt ended (a released lease).
        """
        stats = self._member_stats.get(member)
        if stats is None:
            key = (service, member.id)
            stats = self._stats.get(key) or self._new_stats(key)
            self._member_stats[member] = stats
        ttfb = outcome.ttfb
        if ttfb is not None:
            stats.ttfb_counts[bisect_left(self.buckets, ttfb)] += 1
            stats.ttfb_sum += ttfb
        failure = outcome.failure
        if failure is None:
            if outcome.status is not None:
                return
            failure = STALE
        failures = stats.failures
        failures[failure] = failures.get(failure, 0) + 1

    # -- events -----------------------------------------------------------------

    def observe_pool_event(self, event, service: str = "default") -> None:
        kind = event.kind
        self._pool_events[kind] = self._pool_events.get(kind, 0) + 1
        backend_id = event.backend_id
        key = (service, backend_id)
        if (kind is EventKind.UP or kind is EventKind.DOWN) and backend_id:
            stats = self._stats.get(key) or self._new_stats(key)
            stats.transitions[kind] = stats.transitions.get(kind, 0) + 1
        elif kind is EventKind.EJECTED and backend_id:
            self.record_ejection(backend_id, service)
        elif kind is EventKind.REMOVED and backend_id:
            # Bounded cardinality: a removed backend's series go with it.
            stats = self._stats.pop(key, None)
            for member in [m for m, s in self._member_stats.items() if s is stats]:
                del self._member_stats[member]

    def observe_check(self, backend_id: str, result, service: str = "default") -> None:
        """
        An active health check's L{CheckResult} (the prober's
        C{subscribe_checks}).
        """
        self.record_health_check(backend_id, result.ok, service)

    def record_health_check(self, backend_id: str, ok: bool, service: str = "default") -> None:
        """
        An active health check of C{backend_id} succeeded or failed (for
        the health checker to call, once per probe).
        """
        key = (service, backend_id)
        stats = self._stats.get(key) or self._new_stats(key)
        result = "success" if ok else "failure"
        stats.checks[result] = stats.checks.get(result, 0) + 1

    def record_ejection(self, backend_id: str, service: str = "default") -> None:
        """
        Outlier detection ejected C{backend_id} (passive health).
        """
        key = (service, backend_id)
        stats = self._stats.get(key) or self._new_stats(key)
        stats.ejections += 1

    def record_alert_delivery(self, channel: str, ok: bool) -> None:
        """
        One alert delivery to C{channel} (e.g. C{"webhook"}, C{"log"})
        succeeded or failed.
        """
        key = (str(channel), "delivered" if ok else "failed")
        self._alerts[key] = self._alerts.get(key, 0) + 1

    def observe_spawned_exit(self, server, reason=None) -> None:
        """
        A spawned process exited without being asked to (the spawner's
        C{subscribe_exit}).
        """
        self._spawned_exits += 1

    def observe_supervision(self, event) -> None:
        """
        A L{heimdall.manager.spawner.SupervisionEvent} (exited, restart_scheduled,
        restarted, restart_failed, not_restarted, gave_up).
        """
        kind = event.kind
        self._supervision[kind] = self._supervision.get(kind, 0) + 1

    # -- the collector ------------------------------------------------------------

    def describe(self) -> Iterable:
        # The registry learns the names (for duplicate checks and ?name[]
        # filters) from these; an unattached Metrics collects zeros.
        return list(self.collect())

    def collect(self) -> Iterable:
        # (service, member) pairs, by service then backend id.
        members = [
            (name, member)
            for name, (pool, _) in self._services.items()
            for member in sorted(pool.members(), key=lambda m: m.id)
        ]
        live_ids = {(name, m.id) for name, m in members}
        yield from self._collect_requests(live_ids)
        yield from self._collect_backends(members)
        yield from self._collect_upstream(members)
        yield from self._collect_spawner()
        yield from self._collect_misc(members)
        queues = {name: getattr(resource, "queue", None) for name, resource in self._queues.items()}
        yield from queue_families({name: queue for name, queue in queues.items() if queue is not None})

    def _labelled(self) -> List[Tuple[Tuple[str, str], _Stats]]:
        return sorted(self._stats.items())

    def _collect_requests(self, live_ids) -> Iterable:
        requests = CounterMetricFamily(
            "heimdall_requests", "Client requests, by backend, method and status class.",
            labels=["service", "backend", "method", "code"],
        )
        duration = HistogramMetricFamily(
            "heimdall_request_duration_seconds",
            "Client request duration, from the request reaching heimdall to its end.",
            labels=["service", "backend"],
        )
        ttfb = HistogramMetricFamily(
            "heimdall_upstream_ttfb_seconds",
            "Upstream time to first byte: request sent to response head received.",
            labels=["service", "backend"],
        )
        bytes_in = CounterMetricFamily(
            "heimdall_request_bytes", "Request body bytes received from clients.", labels=["service", "backend"]
        )
        bytes_out = CounterMetricFamily(
            "heimdall_response_bytes", "Response body bytes sent to clients.", labels=["service", "backend"]
        )
        failures = CounterMetricFamily(
            "heimdall_upstream_failures",
            "Upstream attempts that failed, by kind (stale: a pooled "
            "connection the backend had closed; retried, not held against it).",
            labels=["service", "backend", "reason"],
        )
        checks = CounterMetricFamily(
            "heimdall_health_checks", "Active health check results.", labels=["service", "backend", "result"]
        )
        ejections = CounterMetricFamily(
            "heimdall_backend_ejections", "Passive (outlier detection) ejections.", labels=["service", "backend"]
        )
        transitions = CounterMetricFamily(
            "heimdall_backend_transitions", "Health transitions, by new state.", labels=["service", "backend", "to"]
        )
        bounds = self.buckets
        for key, stats in self._labelled():
            service, backend = key
            for code, count in sorted(stats.requests.items()):
                method = _CODE_METHOD.get(code - code % 10, "OTHER")
                requests.add_metric([service, backend, method, f"{code % 10}xx"], count)
            if key in live_ids or stats.requests:
                duration.add_metric([service, backend], _cumulative(stats.duration_counts, bounds), stats.duration_sum)
                bytes_in.add_metric([service, backend], stats.bytes_in)
                bytes_out.add_metric([service, backend], stats.bytes_out)
            if backend != _NONE:
                ttfb.add_metric([service, backend], _cumulative(stats.ttfb_counts, bounds), stats.ttfb_sum)
                for reason in _FAILURE_REASONS + (STALE,):
                    failures.add_metric([service, backend, reason], stats.failures.get(reason, 0))
                for reason in sorted(set(stats.failures) - set(_FAILURE_REASONS) - {STALE}):
                    failures.add_metric([service, backend, reason], stats.failures[reason])
                for result in ("success", "failure"):
                    checks.add_metric([service, backend, result], stats.checks.get(result, 0))
                ejections.add_metric([service, backend], stats.ejections)
                for to in _HEALTH_TRANSITIONS:
                    transitions.add_metric([service, backend, to], stats.transitions.get(to, 0))
        retries = CounterMetricFamily(
            "heimdall_retries", "Requests re-sent to another backend, by service and the reason for the retry.",
            labels=["service", "reason"],
        )
        counted = {service for service, _ in self._retries}
        for service in list(self._services) + sorted(counted - set(self._services)):
            others = sorted({reason for key, reason in self._retries if key == service} - set(_RETRY_REASONS))
            for reason in _RETRY_REASONS + tuple(others):
                retries.add_metric([service, reason], self._retries.get((service, reason), 0))
        return [requests, duration, ttfb, bytes_in, bytes_out, retries, failures, checks, ejections, transitions]

    def _collect_backends(self, members) -> Iterable:
        in_flight = GaugeMetricFamily(
            "heimdall_requests_in_flight", "Upstream requests in progress.", labels=["service", "backend"]
        )
        health = GaugeMetricFamily(
            "heimdall_backend_health", "1 for the backend's current health state.", labels=["service", "backend", "state"]
        )
        admin = GaugeMetricFamily(
            "heimdall_backend_admin_state", "1 for the backend's current admin state.", labels=["service", "backend", "state"]
        )
        eligible = GaugeMetricFamily(
            "heimdall_backend_eligible", "1 if the backend may get new requests.", labels=["service", "backend"]
        )
        weight = GaugeMetricFamily("heimdall_backend_weight", "Configured weight.", labels=["service", "backend"])
        effective = GaugeMetricFamily(
            "heimdall_backend_effective_weight", "Weight in use now (below the configured one during slow start).",
            labels=["service", "backend"],
        )
        ejected = GaugeMetricFamily(
            "heimdall_backend_ejected", "1 while outlier detection has the backend ejected.", labels=["service", "backend"]
        )
        check_ok = GaugeMetricFamily(
            "heimdall_backend_last_check_success", "1 if the last active health check passed, 0 if it failed.",
            labels=["service", "backend"],
        )
        check_latency = GaugeMetricFamily(
            "heimdall_backend_last_check_latency_seconds", "How long the last active health check took.",
            labels=["service", "backend"],
        )
        from heimdall.pool.pool import is_eligible
        from heimdall.pool.values import AdminState, Health

        for service, member in members:
            labels = [service, member.id]
            in_flight.add_metric(labels, member.in_flight)
            for state in Health:
                health.add_metric(labels + [state.value], 1 if member.health is state else 0)
            for state in AdminState:
                admin.add_metric(labels + [state.value], 1 if member.admin is state else 0)
            eligible.add_metric(labels, 1 if is_eligible(member) else 0)
            weight.add_metric(labels, member.backend.weight)
            effective.add_metric(labels, member.weight)
            ejected.add_metric(labels, 1 if getattr(member, "ejected_at", None) is not None else 0)
            last_check = getattr(member, "last_check", None)
            if last_check is not None:
                check_ok.add_metric(labels, 1 if last_check.ok else 0)
                check_latency.add_metric(labels, last_check.latency)
        return [in_flight, health, admin, eligible, ejected, weight, effective, check_ok, check_latency]

    def _collect_upstream(self, members) -> Iterable:
        upstreams = [upstream for _, upstream in self._services.values() if upstream is not None]
        opened = CounterMetricFamily("heimdall_upstream_connections_opened", "New upstream connections established.")
        reused = CounterMetricFamily(
            "heimdall_upstream_connections_reused", "Upstream requests sent on a pooled keep-alive connection."
        )
        connect_failures = CounterMetricFamily(
            "heimdall_upstream_connect_failures", "Upstream connection attempts that failed."
        )
        idle = GaugeMetricFamily(
            "heimdall_upstream_idle_connections", "Pooled idle upstream connections.", labels=["service", "backend"]
        )
        opened.add_metric([], sum(getattr(upstream, "opened", 0) for upstream in upstreams))
        reused.add_metric([], sum(getattr(upstream, "reused", 0) for upstream in upstreams))
        connect_failures.add_metric([], sum(getattr(upstream, "connect_failures", 0) for upstream in upstreams))
        for service, member in members:
            upstream = self._services[service][1]
            if upstream is not None:
                idle.add_metric([service, member.id], upstream.idle_count(member.id))
        return [opened, reused, connect_failures, idle]

    def _collect_spawner(self) -> Iterable:
        spawner = self._spawner
        processes = GaugeMetricFamily("heimdall_spawned_processes", "Spawned backend processes running.")
        processes.add_metric([], len(spawner.servers()) if spawner is not None else 0)
        exits = CounterMetricFamily(
            "heimdall_spawned_process_exits", "Spawned processes that exited without being stopped."
        )
        exits.add_metric([], self._spawned_exits)
        restarts = CounterMetricFamily(
            "heimdall_spawned_process_restarts", "Spawned processes restarted by supervision."
        )
        restarts.add_metric([], self._supervision.get("restarted", 0))
        supervision = CounterMetricFamily(
            "heimdall_supervision_events", "Supervision of spawned processes, by event.", labels=["event"]
        )
        kinds = ("exited", "restart_scheduled", "restarted", "restart_failed", "not_restarted", "gave_up")
        for kind in kinds + tuple(sorted(set(self._supervision) - set(kinds))):
            supervision.add_metric([kind], self._supervision.get(kind, 0))
        return [processes, exits, restarts, supervision]

    def _collect_misc(self, members) -> Iterable:
        from heimdall.pool.pool import is_eligible

        pool = self._pool
        labels = ["service"]
        backends = GaugeMetricFamily("heimdall_pool_backends", "Backends in the pool.", labels=labels)
        eligible = GaugeMetricFamily(
            "heimdall_pool_backends_eligible", "Backends that may get new requests.", labels=labels
        )
        panic = GaugeMetricFamily(
            "heimdall_pool_panic", "1 while no backend is eligible and panic mode routes anyway.", labels=labels
        )
        for service, (service_pool, _) in self._services.items():
            in_service = [m for name, m in members if name == service]
            backends.add_metric([service], len(in_service))
            eligible.add_metric([service], sum(1 for m in in_service if is_eligible(m)))
            panic.add_metric([service], 1 if getattr(service_pool, "in_panic", False) else 0)
        events = CounterMetricFamily("heimdall_pool_events", "Pool events by kind.", labels=["event"])
        for kind in _POOL_EVENTS + tuple(sorted(set(self._pool_events) - set(_POOL_EVENTS))):
            events.add_metric([kind], self._pool_events.get(kind, 0))
        sent = CounterMetricFamily("heimdall_alerts_sent", "Alerts handed to the alert sinks.")
        suppressed = CounterMetricFamily("heimdall_alerts_suppressed", "Pool events held back by flap damping.")
        dispatcher = self._alert_dispatcher
        sent.add_metric([], getattr(dispatcher, "sent_total", 0))
        suppressed.add_metric([], getattr(dispatcher, "suppressed_total", 0))
        deliveries = dict(self._alerts)
        for sink in getattr(dispatcher, "sinks", ()):
            # The sink's kind, never its URL: webhook URLs often carry secrets.
            channel = _sink_channel(sink)
            for attribute, result in (("delivered_total", "delivered"), ("failed_total", "failed")):
                count = getattr(sink, attribute, None)
                if isinstance(count, int):
                    deliveries[(channel, result)] = deliveries.get((channel, result), 0) + count
        alerts = CounterMetricFamily(
            "heimdall_alert_deliveries", "Alert deliveries by sink kind and result.", labels=["channel", "result"]
        )
        for (channel, result), count in sorted(deliveries.items()):
            alerts.add_metric([channel, result], count)
        strategy = self.strategy_name() if self.strategy_name is not None else None
        if strategy is None and pool is not None:
            strategy = type(pool.strategy).__name__
        strategy_info = InfoMetricFamily("heimdall_strategy", "The configured load-balancing strategy.")
        strategy_info.add_metric([], {"strategy": strategy or "unknown"})
        build = InfoMetricFamily("heimdall_build", "heimdall's version and runtime.")
        build.add_metric([], self._build_info)
        return [backends, eligible, panic, events, sent, suppressed, alerts, strategy_info, build]


def observe_requests(resource, observer: Callable, undo: List[Callable[[], None]]) -> None:
    """The one way to observe C{resource}'s requests; C{undo} gets the removal."""
    observers = resource.request_observers
    observers.append(observer)
    undo.append(lambda: observers.remove(observer))


def undo_all(undo: List[Callable[[], None]]) -> None:
    """Run C{undo}'s functions, last first; one whose work is undone already is skipped."""
    while undo:
        try:
            undo.pop()()
        except (ValueError, KeyError):
            pass  # already removed (an observer) or unregistered (a collector)
