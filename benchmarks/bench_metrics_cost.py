"""
What Prometheus metrics cost the proxy.  Run by hand:

    python benchmarks/bench_metrics_cost.py [--duration 10] [--conns 64] [--rounds 3]

Two measurements:

1. Per request, in-process: the time of the observers heimdall.observe.metrics
   attaches (one RequestRecord and one Outcome per request), next to the
   same updates done the obvious way with prometheus_client's own
   Counter/Histogram children (labels() + inc()/observe()).

2. Proxy throughput: a heimdall proxy (BalancerResource on HeimdallSite,
   round robin, no access log: the data path of twistd heimdall) in front
   of 4 nginx backends: without any observer, with no-op observers (the
   proxy builds a RequestRecord per request only when someone listens),
   and with Metrics attached and /metrics served on its own port, in
   alternating order for --rounds rounds.  The proxy
   is pinned to CPU 0 and the load tool (wrk if installed, else heimdall
   stress) to CPU 1, as ../shared/bench does.  Medians are reported.

nginx must be installed (../shared/bench/setup.sh installs it); the
backends answer 100-byte bodies with an X-Backend header.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. per-request cost, in-process --------------------------------------------


def micro(repeat: int = 200_000) -> dict:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from heimdall.observe.metrics import DURATION_BUCKETS, Metrics
    from heimdall.pool.pool import Backend, Member, Outcome
    from heimdall.proxy.resource import RequestRecord

    members = [Member(backend=Backend.from_url(f"http://127.0.0.1:{9000 + i}"), added_at=0.0) for i in range(4)]
    records = [
        RequestRecord("127.0.0.1", b"GET", b"/", 200, m.id, 0.0008, 0.0011, 0, 100, 1, 0.0007) for m in members
    ]
    outcomes = [Outcome(status=200, ttfb=0.0007, ttlb=0.0008)] * 4
    metrics = Metrics(process_metrics=False)

    turns = itertools.cycle(range(4))

    def ours():
        k = next(turns)
        metrics.observe_outcome(members[k], outcomes[k])
        metrics.observe_request(records[k])

    def ours_with_record():
        # With no access log, the proxy builds a RequestRecord only when an
        # observer is attached: that is part of what metrics cost.
        k = next(turns)
        metrics.observe_outcome(members[k], outcomes[k])
        member = members[k]
        metrics.observe_request(
            RequestRecord("127.0.0.1", b"GET", b"/", 200, member.id, 0.0008, 0.0011, 0, 100, 1, 0.0007)
        )

    registry = CollectorRegistry()
    requests = Counter("r", "", ["backend", "method", "code"], registry=registry)
    duration = Histogram("d", "", ["backend"], buckets=DURATION_BUCKETS, registry=registry)
    ttfb = Histogram("t", "", ["backend"], buckets=DURATION_BUCKETS, registry=registry)
    bytes_in = Counter("bi", "", ["backend"], registry=registry)
    bytes_out = Counter("bo", "", ["backend"], registry=registry)

    def native():
        k = next(turns)
        record = records[k]
        backend = record.backend
        ttfb.labels(backend).observe(outcomes[k].ttfb)
        requests.labels(backend, record.method.decode(), f"{record.status // 100}xx").inc()
        duration.labels(backend).observe(record.total_time)
        bytes_in.labels(backend).inc(record.bytes_in)
        bytes_out.labels(backend).inc(record.bytes_out)

    def best_ns(function) -> float:
        return min(timeit.repeat(function, number=repeat, repeat=5)) / repeat * 1e9

    return {
        "heimdall_metrics_ns_per_request": round(best_ns(ours)),
        "heimdall_metrics_with_record_ns_per_request": round(best_ns(ours_with_record)),
        "prometheus_client_children_ns_per_request": round(best_ns(native)),
    }


# -- 2. proxy throughput with and without --------------------------------------------


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off; server_tokens off; default_type text/plain;
  keepalive_requests 10000000; keepalive_timeout 120s;
  client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p; fastcgi_temp_path {tmp}/f;
  uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;
{servers}
}}
"""


def start_nginx(tmp: str, ports) -> subprocess.Popen:
    pad = "x" * 85
    servers = "\n".join(
        f'  server {{ listen 127.0.0.1:{p} backlog=4096; add_header X-Backend {p} always; '
        f'location / {{ return 200 "backend {p}\\n{pad}\\n"; }} }}'
        for p in ports
    )
    os.chmod(tmp, 0o755)
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, servers=servers))
    proc = subprocess.Popen(_pin(1) + ["nginx", "-c", path], start_new_session=True)
    _wait_http(f"http://127.0.0.1:{ports[0]}/")
    return proc


def _pin(cpu: int):
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


def _wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                response.read()
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def serve(port: int, backends, variant: str, metrics_port: int) -> None:
    """
    The proxy under test (a child process).
    """
    import random

    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from heimdall.observe.metrics import Metrics, MetricsResource
    from heimdall.pool.pool import Backend, BackendPool
    from heimdall.proxy.resource import BalancerResource
    from heimdall.strategies.registry import default_registry
    from heimdall.proxy.site import HeimdallSite
    from heimdall.proxy.upstream import UpstreamPool

    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(), reactor), clock=reactor)
    for backend in backends:
        pool.add(Backend.from_url(f"http://{backend}"))
    upstream = UpstreamPool(reactor=reactor)
    resource = BalancerResource(pool, upstream, clock=reactor)
    if variant == "noop":
        # What any observer costs the proxy (it builds a RequestRecord per
        # request only when someone listens), without the metrics code.
        resource.request_observers.append(lambda record: None)
        pool.subscribe_outcomes(lambda member, outcome: None)
    elif variant == "with":
        metrics = Metrics(strategy_name="round_robin")
        metrics.attach(pool, resource, upstream)
        root = Resource()
        root.putChild(b"metrics", MetricsResource(metrics.registry))
        site = Site(root)
        site.noisy = False
        reactor.listenTCP(metrics_port, site, interface="127.0.0.1")
    reactor.listenTCP(port, HeimdallSite(resource, reactor=reactor), interface="127.0.0.1", backlog=4096)
    reactor.run()


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_times():
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields), idle


def process_cpu_seconds(pid: int) -> float:
    """
    User + system CPU seconds of process C{pid} so far (Linux /proc).
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """
    CPU seconds all processes of the machine used so far (every core).
    """
    total, idle = _cpu_times()
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """
    CPU seconds of C{pid} and its children (nginx: master and worker).
    """
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False).stdout
    total = 0.0
    for each in [pid] + [int(p) for p in out.split()]:
        try:
            total += process_cpu_seconds(each)
        except OSError:
            pass
    return total


def quiet_wait(limit: float = 0.25, timeout: float = 30.0) -> float:
    """
    Wait until the whole machine was less than C{limit} busy for a second
    (other people's jobs skew a throughput figure); returns the last
    reading.  Gives up after C{timeout}.
    """
    if not os.path.exists("/proc/stat"):
        return 0.0
    deadline = time.monotonic() + timeout
    while True:
        total0, idle0 = _cpu_times()
        time.sleep(1.0)
        total1, idle1 = _cpu_times()
        busy = 1 - (idle1 - idle0) / max(total1 - total0, 1e-9)
        if busy < limit or time.monotonic() > deadline:
            return busy


def run_load(url: str, duration: float, conns: int) -> dict:
    if shutil.which("wrk"):
        out = subprocess.run(
            _pin(1) + ["wrk", "-t1", f"-c{conns}", f"-d{int(duration)}s", "--latency", url],
            capture_output=True, text=True, check=True,
        ).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return {"tool": "wrk", "rps": rps, "requests": requests, "p99_ms": float(p99.group(1)) * scale,
                "non_2xx": int(errors.group(1)) if errors else 0}
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run(
            _pin(1) + [sys.executable, "-m", "heimdall.stress", url, "-c", str(conns), "-d", str(duration), "-q",
                       "--json", f.name],
            check=True, capture_output=True,
        )
        result = json.load(open(f.name))
    return {"tool": "heimdall stress", "rps": result["requests_per_second"], "requests": result["requests"],
            "p99_ms": result["latency_ms"]["p99"],
            "non_2xx": sum(v for k, v in result["status_codes"].items() if not k.startswith("2"))}


def throughput(duration: float, conns: int, rounds: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-metrics-")
    ports = [free_port() for _ in range(4)]
    nginx = start_nginx(tmp, ports)
    backends = ",".join(f"127.0.0.1:{p}" for p in ports)
    runs = {"without": [], "noop": [], "with": []}
    scrape_ok = None
    try:
        for round_number in range(rounds):
            order = ("without", "noop", "with") if round_number % 2 == 0 else ("with", "noop", "without")
            for variant in order:
                port, metrics_port = free_port(), free_port()
                args = [sys.executable, __file__, "--serve", str(port), "--backends", backends,
                        "--metrics-port", str(metrics_port), "--variant", variant]
                proxy = subprocess.Popen(_pin(0) + args, start_new_session=True)
                try:
                    url = f"http://127.0.0.1:{port}/"
                    _wait_http(url)
                    busy_before = quiet_wait()
                    run_load(url, 2, conns)  # warm-up
                    cpu_before = process_cpu_seconds(proxy.pid)
                    ours_before = cpu_before + tree_cpu_seconds(nginx.pid) + _children_cpu()
                    machine_before = machine_busy_seconds()
                    result = run_load(url, duration, conns)
                    cpu = process_cpu_seconds(proxy.pid) - cpu_before
                    ours = process_cpu_seconds(proxy.pid) + tree_cpu_seconds(nginx.pid) + _children_cpu() - ours_before
                    # What other processes used meanwhile, in cores: a run
                    # that shared the machine is not comparable.
                    foreign = (machine_busy_seconds() - machine_before - ours) / duration
                    result["foreign_cores"] = round(max(foreign, 0.0), 2)
                    # CPU per request: less sensitive than req/s to other
                    # processes sharing the machine.
                    result["cpu_us_per_request"] = round(cpu / max(result["requests"], 1) * 1e6, 2)
                    result["machine_busy_before"] = round(busy_before, 2)
                    runs[variant].append(result)
                    label = {"without": "no observer", "noop": "no-op observers", "with": "Metrics"}[variant]
                    print(f"round {round_number + 1} {label:>15}: {result['rps']:>9,.0f} req/s  "
                          f"{result['cpu_us_per_request']:6.1f} µs CPU/request  p99 {result['p99_ms']:.2f} ms  "
                          f"(others used {result['foreign_cores']:.2f} cores meanwhile)", flush=True)
                    if variant == "with":
                        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                            text = r.read().decode()
                        total = sum(float(v) for v in re.findall(r'^heimdall_requests_total\{[^}]*code="2xx"[^}]*\} (\S+)$', text, re.M))
                        scrape_ok = total > 0
                finally:
                    proxy.send_signal(signal.SIGTERM)
                    proxy.wait(timeout=10)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    # Runs during which other processes used a tenth of a core or more are
    # left out of the medians (kept in the JSON), unless that leaves none.
    for variant, results in list(runs.items()):
        clean = [r for r in results if r["foreign_cores"] < 0.1]
        runs[variant + "_clean"] = clean or results
    without = statistics.median(r["rps"] for r in runs["without_clean"])
    with_ = statistics.median(r["rps"] for r in runs["with_clean"])
    cpu_without = statistics.median(r["cpu_us_per_request"] for r in runs["without_clean"])
    cpu_with = statistics.median(r["cpu_us_per_request"] for r in runs["with_clean"])
    noop = statistics.median(r["rps"] for r in runs["noop_clean"])
    cpu_noop = statistics.median(r["cpu_us_per_request"] for r in runs["noop_clean"])
    return {
        "load_tool": runs["with"][0]["tool"],
        "duration_s": duration,
        "connections": conns,
        "rounds": rounds,
        "without_metrics_rps": runs["without"],
        "noop_observers_rps": runs["noop"],
        "with_metrics_rps": runs["with"],
        "median_without": without,
        "median_noop": noop,
        "median_with": with_,
        "cost_percent": round(100 * (without - with_) / without, 2),
        "median_cpu_us_per_request_without": cpu_without,
        "median_cpu_us_per_request_noop": cpu_noop,
        "median_cpu_us_per_request_with": cpu_with,
        "cpu_cost_percent": round(100 * (cpu_with - cpu_without) / cpu_without, 2),
        "metrics_scraped": scrape_ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-only", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backends", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["without", "noop", "with"], help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.backends.split(","), args.variant, args.metrics_port)
        return
    results = {"micro": micro()}
    m = results["micro"]
    print(f"per request, in-process: heimdall.observe.metrics observers {m['heimdall_metrics_ns_per_request']} ns, "
          f"{m['heimdall_metrics_with_record_ns_per_request']} ns with the RequestRecord they need; "
          f"the same with prometheus_client children {m['prometheus_client_children_ns_per_request']} ns",
          flush=True)
    if not args.micro_only:
        results["throughput"] = throughput(args.duration, args.conns, args.rounds)
        t = results["throughput"]
        print(f"proxy throughput ({t['load_tool']}, c={t['connections']}, {t['duration_s']:g} s x {t['rounds']}): "
              f"no observer {t['median_without']:,.0f} req/s, no-op observers {t['median_noop']:,.0f}, "
              f"Metrics {t['median_with']:,.0f}: cost {t['cost_percent']:.1f}%; CPU per request "
              f"{t['median_cpu_us_per_request_without']:.1f} / {t['median_cpu_us_per_request_noop']:.1f} / "
              f"{t['median_cpu_us_per_request_with']:.1f} µs, cost {t['cpu_cost_percent']:.1f}% (medians); "
              f"/metrics scraped: {t['metrics_scraped']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
