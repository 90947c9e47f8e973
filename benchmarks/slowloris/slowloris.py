#!/usr/bin/env python3
"""Slowloris and slow POST against heimdall and HAProxy (issue 10, item 3).

    benchmarks/slowloris/slowloris.sh [--rounds 3] [--lbs heimdall,haproxy]

Topology as in ../shared/bench (whose backends, CPU sampling and lock this
reuses): the LB on CPU 0 at 127.0.0.1:18080, the 4 nginx backends, wrk,
slowhttptest and the probe on CPU 1.  For each round and LB (order rotated):

  before    10 s of normal traffic: wrk paced (25 keep-alive connections,
            ~500 req/s offered, --latency) plus a probe that opens a new
            connection for every request (10/s)
  slowloris slowhttptest -H -c 500 -r 500 -i 2 -x 10: 500 connections that
            send a header line every 2 s and never end their head; 1.5 s
            after the start, 8 s of the same normal traffic
  slowpost  slowhttptest -B -c 200 -r 200 -i 2 -s 65536 -x 10: 200 POSTs to
            /upload (a backend location that reads the whole body before it
            answers) announcing 64 KiB and sending ~10 bytes every 2 s; 2 s
            after the start, 10 s of normal traffic

During each attack the LB's established connections on its port (ss) and
RSS (/proc, the LB's process tree) are sampled every 0.5 s.  HAProxy is the
harness's config plus `timeout http-request 10s` (heimdall's
timeouts.client_header default); heimdall runs with its defaults
(benchmarks/heimdall-lb.sh).  Results: benchmarks/results/<stamp>-slowloris/.
"""
from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "benchmarks", "edge"))
import edge  # noqa: E402  (processes, readiness, the harness's measure.py and lock)

measure = edge.measure
LB_CPU, LOAD_CPU = edge.LB_CPU, edge.LOAD_CPU
BENCH_DIR = edge.BENCH_DIR


def haproxy_conf(port, backends):
    servers = "\n".join(f"  server b{i} {b}" for i, b in enumerate(backends, 1))
    return f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  timeout http-request 10s
frontend fe
  bind 127.0.0.1:{port}
  maxconn 8000
  default_backend be
backend be
  balance roundrobin
{servers}
"""


def established(port) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


class Sampler(threading.Thread):
    def __init__(self, port, lb_pid) -> None:
        super().__init__(daemon=True)
        self.port, self.lb_pid, self.samples, self.stop = port, lb_pid, [], threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            procs = measure.read_procs()
            rss = sum(procs[p][3] for p in measure.tree(procs, self.lb_pid))
            self.samples.append((round(time.monotonic() - self.t0, 1), established(self.port), rss))
            self.stop.wait(0.5)


class Probe(threading.Thread):
    """A new connection per request, 10 per second: a fresh visitor."""

    def __init__(self, port, duration) -> None:
        super().__init__(daemon=True)
        self.port, self.duration, self.lat, self.failed = port, duration, [], []

    def run(self) -> None:
        end = time.monotonic() + self.duration
        while time.monotonic() < end:
            t0 = time.monotonic()
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                c.request("GET", "/", headers={"Connection": "close"})
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    self.lat.append(time.monotonic() - t0)
                else:
                    self.failed.append(f"status {r.status}")
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(type(exc).__name__)
            finally:
                c.close()
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))


def p(values, q):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q / 100 * len(v)))] * 1000, 3)


class Run:
    def __init__(self, a) -> None:
        self.a = a
        b = a.port_base
        self.port, self.status_port = b, b + 9
        self.backends = [f"127.0.0.1:{b + i}" for i in range(1, 5)]
        self.procs = edge.Procs()
        self.tmp = tempfile.mkdtemp(prefix="slowloris.")
        os.chmod(self.tmp, 0o755)
        self.out = a.out
        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)

    def log(self, name):
        return os.path.join(self.out, "logs", name + ".log")

    def start_backends(self) -> None:
        conf = edge.write_backends_conf(self.tmp, self.backends, self.status_port)
        # The harness's backends answer without reading a request body, so a
        # slow POST to / ends at once (the LB relays the early answer and
        # drops the rest).  /upload reads the whole body first (echo
        # module), as an upload endpoint does: that is what slow POST targets.
        text = open(conf).read()
        if "ngx_http_echo_module" not in text:
            sys.exit("the nginx echo module (libnginx-mod-http-echo) is needed for /upload")
        text = re.sub(r"(    location = /64k [^\n]*\n)",
                      r'\1    location = /upload { echo_read_request_body; echo "upload read"; }\n', text)
        open(conf, "w").write(text)
        self.be = edge.start_nginx_backends(self.procs, self.tmp, self.log("backends"))
        edge.wait_backends(self.be, self.backends)

    def start_lb(self, lb, r):
        if not edge.wait_port_free(self.port):
            return None
        if lb == "haproxy":
            path = os.path.join(self.tmp, "haproxy.cfg")
            open(path, "w").write(haproxy_conf(self.port, self.backends))
            argv, env = ["haproxy", "-db", "-f", path], None
        else:
            env = dict(os.environ, BENCH_LB_PORT=str(self.port), BENCH_LB_HOST="127.0.0.1",
                       BENCH_BACKENDS=",".join(self.backends), BENCH_TMP=self.tmp)
            argv = ["bash", os.path.join(REPO, "benchmarks", "heimdall-lb.sh")]
        proc = self.procs.start(lb, LB_CPU, self.log(f"{lb}-r{r}"), argv, env)
        if not edge.wait_ready(proc, [(self.port, False)]):
            self.procs.stop(proc)
            return None
        return proc

    def traffic(self, lb, r, phase, duration):
        """Normal traffic for DURATION s: paced wrk and the fresh-connection probe."""
        probe = Probe(self.port, duration)
        probe.start()
        argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c25", f"-d{duration}s", "--timeout", "5s",
                "--latency", "-s", os.path.join(BENCH_DIR, "lib", "wrk_json.lua"),
                f"http://127.0.0.1:{self.port}/", "--", "50"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        probe.join(10)
        with open(self.log(f"wrk-{lb}-{phase}-r{r}"), "a") as f:
            f.write(proc.stdout + proc.stderr)
        w = json.loads(re.search(r"^WRK_JSON (\{.*\})$", proc.stdout, re.M).group(1))
        e = w["errors"]
        return {"wrk_rps": round(w["requests"] / (w["duration_us"] / 1e6), 1),
                "wrk_p50_ms": w["latency_us"]["p50"] / 1000, "wrk_p99_ms": w["latency_us"]["p99"] / 1000,
                "wrk_errors": sum(e.values()), "wrk_errors_detail": e,
                "probe_ok": len(probe.lat), "probe_failed": len(probe.failed),
                "probe_failures": sorted(set(probe.failed)),
                "probe_p50_ms": p(probe.lat, 50), "probe_p99_ms": p(probe.lat, 99)}

    def attack(self, lb, lb_pid, r, kind):
        a = self.a
        url = f"http://127.0.0.1:{self.port}/"
        if kind == "slowloris":
            argv = ["slowhttptest", "-H", "-c", "500", "-r", "500", "-i", "2", "-x", "10", "-l", "30",
                    "-p", "3", "-u", url]
            settle, window = 1.5, 8
        else:
            argv = ["slowhttptest", "-B", "-c", "200", "-r", "200", "-i", "2", "-x", "10", "-s", "65536",
                    "-l", "30", "-p", "3", "-u", url + "upload"]
            settle, window = 2, 10
        sampler = Sampler(self.port, lb_pid)
        sampler.start()
        slow = self.procs.start("slowhttptest", LOAD_CPU, self.log(f"slowhttptest-{lb}-{kind}-r{r}"), argv)
        time.sleep(settle)
        rec = self.traffic(lb, r, kind, window)
        time.sleep(max(0.0, a.attack_tail - settle - window))
        self.procs.stop(slow)
        deadline = time.monotonic() + 20
        while established(self.port) > 5 and time.monotonic() < deadline:
            time.sleep(0.5)
        sampler.stop.set()
        sampler.join()
        s = sampler.samples
        in_window = [x for x in s if settle <= x[0] <= settle + window]
        rec.update(
            samples=s,
            conns_max=max(x[1] for x in s), conns_window_median=statistics.median(x[1] for x in in_window),
            rss_max_kb=max(x[2] for x in s), rss_start_kb=s[0][2])
        return rec

    def run(self) -> None:
        a = self.a
        self.start_backends()
        order = list(a.lbs)
        for r in range(1, a.rounds + 1):
            for lb in order:
                proc = self.start_lb(lb, r)
                if proc is None:
                    print(f"{lb} did not start", file=sys.stderr)
                    continue
                self.traffic(lb, r, "warmup", 3)
                results = {"before": self.traffic(lb, r, "before", 10)}
                for kind in ("slowloris", "slowpost"):
                    results[kind] = self.attack(lb, proc.pid, r, kind)
                alive = proc.poll() is None
                self.procs.stop(proc)
                rec = {"lb": lb, "round": r, "ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "lb_alive": alive,
                       **results}
                with open(os.path.join(self.out, "runs.jsonl"), "a") as f:
                    f.write(json.dumps(rec) + "\n")
                b = results["before"]
                print(f"{lb:>9} r{r} before p99 {b['wrk_p99_ms']:.2f} ms probe p99 {b['probe_p99_ms']} ms", flush=True)
                for kind in ("slowloris", "slowpost"):
                    x = results[kind]
                    print(f"{'':>9}    {kind:<9} p99 {x['wrk_p99_ms']:.2f} ms (x{x['wrk_p99_ms'] / b['wrk_p99_ms']:.2f})"
                          f"  wrk err {x['wrk_errors']}  probe ok {x['probe_ok']} failed {x['probe_failed']}"
                          f" p99 {x['probe_p99_ms']} ms  conns max {x['conns_max']} (window median "
                          f"{x['conns_window_median']})  rss {x['rss_start_kb'] // 1024}->{x['rss_max_kb'] // 1024} MiB",
                          flush=True)
            order = order[1:] + order[:1]

    def cleanup(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)


def summarize(out) -> str:
    recs = [json.loads(l) for l in open(os.path.join(out, "runs.jsonl"))]
    lines = ["| LB | attack | wrk p99 before ms | wrk p99 during ms | during/before | wrk errors | "
             "probe ok/failed | probe p99 before→during ms | LB conns (max) | LB RSS max MiB |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for lb in sorted({r["lb"] for r in recs}):
        rs = [r for r in recs if r["lb"] == lb]
        for kind in ("slowloris", "slowpost"):
            med = lambda f: statistics.median(f(r) for r in rs)  # noqa: E731
            ratio = med(lambda r: r[kind]["wrk_p99_ms"] / r["before"]["wrk_p99_ms"])
            lines.append(
                f"| {lb} | {kind} | {med(lambda r: r['before']['wrk_p99_ms']):.2f} | "
                f"{med(lambda r: r[kind]['wrk_p99_ms']):.2f} | {ratio:.2f} | "
                f"{sum(r[kind]['wrk_errors'] for r in rs)} | "
                f"{sum(r[kind]['probe_ok'] for r in rs)}/{sum(r[kind]['probe_failed'] for r in rs)} | "
                f"{med(lambda r: r['before']['probe_p99_ms'] or 0):.2f}→{med(lambda r: r[kind]['probe_p99_ms'] or 0):.2f} | "
                f"{med(lambda r: r[kind]['conns_max']):.0f} | {med(lambda r: r[kind]['rss_max_kb']) / 1024:.0f} |")
    lines.append("")
    lines.append(f"Medians over {len({r['round'] for r in recs})} rounds; during/before is the median of the "
                 "per-round ratios; errors and probe counts are summed over the rounds.")
    text = "\n".join(lines) + "\n"
    open(os.path.join(out, "summary.md"), "w").write(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lbs", default="heimdall,haproxy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port-base", type=int, default=18080)
    ap.add_argument("--attack-tail", type=float, default=13,
                    help="seconds from an attack's start to its stop")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out")
    ap.add_argument("--summarize", metavar="DIR")
    a = ap.parse_args()
    if a.summarize:
        print(summarize(a.summarize))
        return
    a.lbs = a.lbs.split(",")
    a.out = a.out or os.path.join(REPO, "benchmarks", "results",
                                  time.strftime("%Y%m%d-%H%M%S") + "-slowloris" + (f"-{a.tag}" if a.tag else ""))
    lock = edge.take_lock()
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run = Run(a)
    atexit.register(run.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv,
               "heimdall_commit": subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                                                 text=True).stdout.strip(),
               "slowhttptest": "1.8.2", "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True,
                                                                   text=True).stdout.splitlines()[0]},
              open(os.path.join(a.out, "meta.json"), "w"), indent=1)
    run.run()
    del lock
    print(summarize(a.out))


if __name__ == "__main__":
    main()
