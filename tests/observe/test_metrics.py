"""
heimdall.observe.metrics: the counters move as requests succeed, are retried, get a
5xx, a 502 or a 504 (a real proxy on 127.0.0.1 with Metrics attached); the
exposition parses with prometheus_client's OpenMetrics parser without
duplicate series and passes `promtool check metrics`; /metrics is served by
a native twisted.web resource.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_openmetrics,
)
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from heimdall.observe.metrics import DURATION_BUCKETS, Metrics, MetricsResource
from tests.netutil import require, free_port


def _value(metrics, name, **labels):
    # Series of one backend (and retries) are labelled with its service (here "default").
    if "backend" in labels or name.startswith(("heimdall_pool_backends", "heimdall_pool_panic", "heimdall_retries")):
        labels.setdefault("service", "default")
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _sum(metrics, name, **match):
    """
    The sum of the samples of C{name} whose labels include C{match}.
    """
    total = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
                total += sample.value
    return total


@pytest.fixture
def metered(start_proxy):
    """
    metered(backends, **options) -> (proxy, metrics), detached after the test.
    """
    detaches = []

    def start(backends, **options):
        proxy = start_proxy(backends, **options)
        metrics = Metrics(strategy_name=lambda: "round_robin")
        detaches.append(metrics.attach(proxy.pool, proxy.resource, proxy.upstream))
        return proxy, metrics

    yield start
    for detach in detaches:
        detach()


def _get(http, url):
    d = http.get(url)

    @d.addCallback
    def read(response):
        return response.content().addCallback(lambda body: (response.code, body))

    return d


@pytest_twisted.inlineCallbacks
def test_success_counts_requests_durations_bytes_and_connections(start_backends, metered, http):
    ports = start_backends(2)
    proxy, metrics = metered([f"http://127.0.0.1:{p}" for p in ports])
    sizes = []
    for _ in range(6):
        code, body = yield _get(http, proxy.url + "/")
        assert code == 200
        sizes.append(len(body))
    for port in ports:
        backend = f"127.0.0.1:{port}"
        assert _value(metrics, "heimdall_requests_total", backend=backend, method="GET", code="2xx") == 3
        assert _value(metrics, "heimdall_request_duration_seconds_count", backend=backend) == 3
        assert _value(metrics, "heimdall_upstream_ttfb_seconds_count", backend=backend) == 3
        assert _value(metrics, "heimdall_request_duration_seconds_bucket", backend=backend, le="+Inf") == 3
        assert 0 < _value(metrics, "heimdall_request_duration_seconds_sum", backend=backend) < 5
        assert _value(metrics, "heimdall_requests_in_flight", backend=backend) == 0
        assert _value(metrics, "heimdall_backend_health", backend=backend, state="unknown") == 1
        assert _value(metrics, "heimdall_backend_eligible", backend=backend) == 1
        assert _sum(metrics, "heimdall_upstream_failures_total", backend=backend) == 0
    assert _sum(metrics, "heimdall_response_bytes_total") == sum(sizes)
    assert _sum(metrics, "heimdall_retries_total") == 0
    # One keep-alive client connection, so requests reuse upstream connections.
    opened = _value(metrics, "heimdall_upstream_connections_opened_total")
    reused = _value(metrics, "heimdall_upstream_connections_reused_total")
    assert opened >= 2 and opened + reused == 6
    assert _value(metrics, "heimdall_strategy_info", strategy="round_robin") == 1
    assert _value(metrics, "heimdall_pool_backends") == 2


@pytest_twisted.inlineCallbacks
def test_retry_on_refused_connect_counts_the_retry_and_its_reason(start_backends, metered, http):
    [good] = start_backends(1)
    dead = free_port()
    proxy, metrics = metered([f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{good}"])
    for _ in range(6):
        code, _ = yield _get(http, proxy.url + "/")
        assert code == 200
    failed_connects = _value(metrics, "heimdall_upstream_failures_total", backend=f"127.0.0.1:{dead}", reason="connect")
    assert failed_connects >= 3
    # Every refused connect was retried, and said why.
    assert _value(metrics, "heimdall_retries_total", reason="connect") == failed_connects
    assert _value(metrics, "heimdall_requests_total", backend=f"127.0.0.1:{good}", method="GET", code="2xx") == 6
    assert _sum(metrics, "heimdall_requests_total", backend=f"127.0.0.1:{dead}") == 0
    assert _value(metrics, "heimdall_upstream_connect_failures_total") == failed_connects


@pytest_twisted.inlineCallbacks
def test_backend_5xx_is_counted_as_5xx_of_that_backend(start_backends, metered, http):
    [port] = start_backends(1)
    proxy, metrics = metered([f"http://127.0.0.1:{port}"])
    for path in ("/status/500", "/status/503", "/status/404", "/"):
        yield _get(http, proxy.url + path)
    backend = f"127.0.0.1:{port}"
    assert _value(metrics, "heimdall_requests_total", backend=backend, method="GET", code="5xx") == 2
    assert _value(metrics, "heimdall_requests_total", backend=backend, method="GET", code="4xx") == 1
    assert _value(metrics, "heimdall_requests_total", backend=backend, method="GET", code="2xx") == 1
    # A 5xx answer is not an upstream failure, nor retried by default.
    assert _sum(metrics, "heimdall_upstream_failures_total") == 0
    assert _sum(metrics, "heimdall_retries_total") == 0


@pytest_twisted.inlineCallbacks
def test_502_when_every_connect_fails(metered, http):
    dead = [free_port(), free_port()]
    proxy, metrics = metered([f"http://127.0.0.1:{p}" for p in dead], retries=1)
    code, _ = yield _get(http, proxy.url + "/")
    assert code == 502
    d = http.request("POST", proxy.url + "/", data=b"x")
    response = yield d
    yield response.content()
    assert response.code == 502
    # The last backend tried is the label; both requests are 5xx, one per method.
    assert _sum(metrics, "heimdall_requests_total", method="GET", code="5xx") == 1
    assert _sum(metrics, "heimdall_requests_total", method="POST", code="5xx") == 1
    assert _sum(metrics, "heimdall_upstream_failures_total", reason="connect") == 4
    assert _value(metrics, "heimdall_retries_total", reason="connect") == 2
    assert _sum(metrics, "heimdall_upstream_ttfb_seconds_count") == 0


@pytest_twisted.inlineCallbacks
def test_504_on_response_timeout(start_backends, metered, http):
    [port] = start_backends(1)
    proxy, metrics = metered([f"http://127.0.0.1:{port}"], response_timeout=0.2)
    code, _ = yield _get(http, proxy.url + "/hang")
    assert code == 504
    backend = f"127.0.0.1:{port}"
    assert _value(metrics, "heimdall_requests_total", backend=backend, method="GET", code="5xx") == 1
    assert _value(metrics, "heimdall_upstream_failures_total", backend=backend, reason="timeout") == 1
    assert _value(metrics, "heimdall_request_duration_seconds_bucket", backend=backend, le="0.1") == 0
    assert _value(metrics, "heimdall_request_duration_seconds_bucket", backend=backend, le="0.25") == 1


@pytest_twisted.inlineCallbacks
def test_503_without_backend_uses_the_none_label(metered, http):
    proxy, metrics = metered([])
    code, _ = yield _get(http, proxy.url + "/")
    assert code == 503
    assert _value(metrics, "heimdall_requests_total", backend="none", method="GET", code="5xx") == 1


def test_pool_events_health_ejections_and_removal_drop_series():
    import random

    from twisted.internet.task import Clock

    from heimdall.pool.pool import BackendPool

    from heimdall.pool.values import Backend, Health
    from heimdall.strategies.registry import default_registry

    clock = Clock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    a = pool.add(Backend.from_url("http://127.0.0.1:9001"))
    pool.add(Backend.from_url("http://127.0.0.1:9002"))
    metrics = Metrics(process_metrics=False)
    detach = metrics.attach(pool)
    pool.set_health(a.id, Health.UP)
    pool.set_health(a.id, Health.DOWN, "3 failed checks")
    assert _value(metrics, "heimdall_backend_transitions_total", backend=a.id, to="down") == 1
    assert _value(metrics, "heimdall_backend_health", backend=a.id, state="down") == 1
    assert _value(metrics, "heimdall_backend_eligible", backend=a.id) == 0
    assert _value(metrics, "heimdall_pool_backends_eligible") == 1
    if hasattr(pool, "eject"):
        pool.eject("127.0.0.1:9002", 30.0, "5 consecutive failures")
        assert _value(metrics, "heimdall_backend_ejections_total", backend="127.0.0.1:9002") == 1
        assert _value(metrics, "heimdall_backend_ejected", backend="127.0.0.1:9002") == 1
    metrics.record_health_check(a.id, True)
    metrics.record_health_check(a.id, False)
    assert _value(metrics, "heimdall_health_checks_total", backend=a.id, result="failure") == 1
    pool.remove(a.id)
    assert _value(metrics, "heimdall_pool_events_total", event="removed") == 1
    # Bounded cardinality: a removed backend's series are gone.
    assert not [s for f in metrics.registry.collect() for s in f.samples if s.labels.get("backend") == a.id]
    detach()
    before = _value(metrics, "heimdall_pool_events_total", event="down")
    pool.set_health("127.0.0.1:9002", Health.DOWN)
    assert _value(metrics, "heimdall_pool_events_total", event="down") == before


def test_spawner_supervisor_and_alert_counters_from_their_objects():
    import random

    from twisted.internet.task import Clock

    from heimdall.pool.pool import BackendPool
    from heimdall.strategies.registry import default_registry

    class FakeSpawner:
        def __init__(self):
            self.callbacks = []
            self.running = [object(), object()]

        def servers(self):
            return self.running

        def subscribe_exit(self, callback):
            self.callbacks.append(callback)

        def unsubscribe_exit(self, callback):
            self.callbacks.remove(callback)

    class FakeSupervisor:
        def __init__(self):
            self.callbacks = []

        def subscribe(self, callback):
            self.callbacks.append(callback)
            return lambda: self.callbacks.remove(callback)

    class Event:
        def __init__(self, kind):
            self.kind = kind

    class WebhookSink:
        name = "webhook http://secret-token@example.invalid/hook"
        delivered_total = 4
        failed_total = 1

    class Dispatcher:
        sinks = [WebhookSink()]
        sent_total = 5
        suppressed_total = 2

    clock = Clock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    spawner, supervisor = FakeSpawner(), FakeSupervisor()
    metrics = Metrics(process_metrics=False)
    detach = metrics.attach(pool, spawner=spawner, supervisor=supervisor, alerts=Dispatcher())
    spawner.callbacks[0](object(), None)
    for kind in ("exited", "restart_scheduled", "restarted"):
        supervisor.callbacks[0](Event(kind))
    metrics.record_alert_delivery("command", False)
    assert _value(metrics, "heimdall_spawned_processes") == 2
    assert _value(metrics, "heimdall_spawned_process_exits_total") == 1
    assert _value(metrics, "heimdall_spawned_process_restarts_total") == 1
    assert _value(metrics, "heimdall_supervision_events_total", event="restart_scheduled") == 1
    assert _value(metrics, "heimdall_alert_deliveries_total", channel="webhook", result="delivered") == 4
    assert _value(metrics, "heimdall_alert_deliveries_total", channel="webhook", result="failed") == 1
    assert _value(metrics, "heimdall_alert_deliveries_total", channel="command", result="failed") == 1
    assert _value(metrics, "heimdall_alerts_sent_total") == 5
    assert _value(metrics, "heimdall_alerts_suppressed_total") == 2
    # A sink's URL never becomes a label.
    assert b"secret-token" not in generate_latest(metrics.registry)
    detach()
    assert spawner.callbacks == [] and supervisor.callbacks == []


def test_methods_and_labels_are_bounded():
    from heimdall.proxy.exchange import RequestRecord

    metrics = Metrics(process_metrics=False)
    for i in range(50):
        metrics.observe_request(
            RequestRecord(
                f"10.0.0.{i}", b"X-%d" % i, b"/path/%d" % i, 200, "127.0.0.1:1", 0.001, 0.002, 0, 10, 1,
                service="default",
            )
        )
    text = generate_latest(metrics.registry).decode()
    assert "/path/" not in text and "10.0.0." not in text
    assert _value(metrics, "heimdall_requests_total", backend="127.0.0.1:1", method="OTHER", code="2xx") == 50
    assert len([line for line in text.splitlines() if line.startswith("heimdall_requests_total")]) == 1


def test_buckets_span_sub_millisecond_to_ten_seconds():
    assert DURATION_BUCKETS[0] <= 0.0001 and DURATION_BUCKETS[-1] == 10.0
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


def test_importing_metrics_installs_no_reactor():
    code = "import sys, heimdall.observe.metrics; assert 'twisted.internet.reactor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- the exposition, served -----------------------------------------------------------


@pytest.fixture
def served(tracked, start_backends, metered, http):
    """
    A proxy with Metrics, some traffic of every kind, and /metrics served by
    MetricsResource on its own port: returns (metrics, metrics_url).
    """
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    def start():
        ports = start_backends(2)
        proxy, metrics = metered([f"http://127.0.0.1:{p}" for p in ports] + [f"http://127.0.0.1:{free_port()}"])
        root = Resource()
        root.putChild(b"metrics", MetricsResource(metrics.registry))
        site = Site(root)
        site.noisy = False
        listening = tracked.listen(site)
        return proxy, metrics, f"http://127.0.0.1:{listening.getHost().port}/metrics"

    return start


@pytest_twisted.inlineCallbacks
def _traffic(http, proxy):
    for path in ("/", "/", "/status/500", "/status/404", "/", "/"):
        yield _get(http, proxy.url + path)


@pytest_twisted.inlineCallbacks
def test_served_openmetrics_parses_without_duplicate_series(served, http):
    proxy, metrics, url = served()
    yield _traffic(http, proxy)
    response = yield http.get(url, headers={b"Accept": [b"application/openmetrics-text; version=1.0.0"]})
    body = (yield response.content()).decode()
    assert response.code == 200
    assert response.headers.getRawHeaders(b"Content-Type")[0].startswith(b"application/openmetrics-text")
    assert body.endswith("# EOF\n")
    seen = set()
    names = set()
    for family in parse_openmetrics(body):
        assert family.name not in names, f"family {family.name} twice"
        names.add(family.name)
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in seen, f"duplicate series {key}"
            seen.add(key)
    for expected in (
        "heimdall_requests", "heimdall_requests_in_flight", "heimdall_request_duration_seconds",
        "heimdall_upstream_ttfb_seconds", "heimdall_request_bytes", "heimdall_response_bytes",
        "heimdall_retries", "heimdall_upstream_connections_opened", "heimdall_upstream_connections_reused",
        "heimdall_backend_health", "heimdall_health_checks", "heimdall_backend_ejections",
        "heimdall_spawned_processes", "heimdall_spawned_process_restarts", "heimdall_alert_deliveries",
        "heimdall_strategy", "heimdall_build",
    ):
        assert expected in names, expected


@pytest_twisted.inlineCallbacks
def test_served_text_format_and_name_filter(served, http):
    proxy, metrics, url = served()
    yield _traffic(http, proxy)
    response = yield http.get(url)
    body = (yield response.content()).decode()
    assert response.headers.getRawHeaders(b"Content-Type")[0].startswith(b"text/plain; version=0.0.4")
    families = {f.name: f for f in parse_text(body)}
    requests = families["heimdall_requests"]
    assert sum(s.value for s in requests.samples if s.labels["code"] == "2xx") == 4
    assert sum(s.value for s in requests.samples if s.labels["code"] == "5xx") == 1
    response = yield http.get(url + "?name[]=heimdall_build_info")
    body = (yield response.content()).decode()
    assert "heimdall_build_info" in body and "heimdall_requests_total" not in body


def _promtool():
    """
    promtool on the PATH, or where `make test` puts it: next to the venv's
    python (extracted from Debian's prometheus package).
    """
    beside = os.path.join(os.path.dirname(sys.executable), "promtool")
    return shutil.which("promtool") or (beside if os.access(beside, os.X_OK) else None)


@pytest_twisted.inlineCallbacks
def test_promtool_check_metrics_accepts_the_exposition(served, http):
    require(_promtool() is not None, "promtool (make test extracts it from Debian's prometheus)")
    proxy, metrics, url = served()
    yield _traffic(http, proxy)
    response = yield http.get(url)
    body = yield response.content()
    # promtool reads the Prometheus text format (2.42 has no OpenMetrics
    # "info" type); it fails on syntax errors and reports lint problems.
    result = subprocess.run([_promtool(), "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b"", result.stdout + result.stderr


def test_openmetrics_of_a_fresh_registry_is_valid():
    metrics = Metrics()
    body = generate_openmetrics(metrics.registry).decode()
    assert list(parse_openmetrics(body))


def test_active_checks_are_counted_through_the_probers_subscribe_checks():
    import random

    from twisted.internet import defer
    from twisted.internet.task import Clock

    from heimdall.config.health import parse_health
    from heimdall.health.active import HealthProber
    from heimdall.health.probes import ProbeOutcome
    from heimdall.pool.pool import BackendPool
    from heimdall.pool.values import Backend
    from heimdall.strategies.registry import default_registry

    class Passing:
        def check(self, backend):
            return defer.succeed(ProbeOutcome(True, "HTTP 200"))

    clock = Clock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    member = pool.add(Backend.from_url("http://127.0.0.1:9001"))
    prober = HealthProber(pool, parse_health({"jitter": 0}), clock, lambda settings: Passing())
    metrics = Metrics(process_metrics=False)
    detach = metrics.attach(pool, health=prober)
    prober.start()
    assert _value(metrics, "heimdall_health_checks_total", backend=member.id, result="success") == 1
    detach()
    clock.advance(60)
    assert _value(metrics, "heimdall_health_checks_total", backend=member.id, result="success") == 1
    prober.stop()


def test_retries_are_counted_per_service():
    import random

    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from heimdall.observe.metrics import Metrics
    from heimdall.pool.pool import BackendPool
    from heimdall.strategies.registry import default_registry

    clock = Clock()
    metrics = Metrics()
    pools = [BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
             for _ in range(2)]
    metrics.attach(pools[0])
    metrics.attach_service("api", pools[1])
    record = SimpleNamespace(
        service="api", backend="127.0.0.1:1", method=b"GET", status=200, total_time=0.01, bytes_in=0, bytes_out=2,
        attempts=3, retry_reasons=("connect", "reset"), protocol="HTTP/1.1", tls=None,
    )
    metrics.observe_request(record)
    value = metrics.registry.get_sample_value
    assert value("heimdall_retries_total", {"service": "api", "reason": "connect"}) == 1
    assert value("heimdall_retries_total", {"service": "api", "reason": "reset"}) == 1
    assert value("heimdall_retries_total", {"service": "default", "reason": "connect"}) == 0
