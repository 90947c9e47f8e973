#!/usr/bin/env python3
"""The edge benchmark: heimdall against nginx, HAProxy and Caddy over TLS 1.3.

    benchmarks/edge/edge.sh [--rounds 3] [--lbs nginx,haproxy,caddy,heimdall,heimdall-pypy]
                            [--modes https,handshake,h2,ws,wss] [--duration 10] [--warmup 5]

Every LB runs with the same certificate (made here with openssl), TLS 1.3
only, HTTP/2 offered by ALPN, keep-alive to the clients and to the backends,
pinned to CPU 0 (one worker / one thread / GOMAXPROCS=1); the load tools and
the backends run on CPU 1, as in ../shared/bench (whose backends, CPU
sampling and lock this reuses).  Modes:

  https      wrk -t1 -c64, keep-alive, HTTP/1.1 over TLS
  handshake  wrk -t1 -c64 -H 'Connection: close': one full TLS handshake
             per request (wrk does not resume sessions)
  h2         h2load -t1 -c4 -m16: 64 concurrent streams over 4 connections
  ws         ws_bench.py -c64: WebSocket echo messages relayed per second
             over 64 tunnels on the plain port (ws://)
  wss        the same through the TLS port (wss://)

Each round starts each LB (order rotated per round) twice: with the
harness's 4 nginx backends for https/handshake/h2, and with 3 WebSocket echo
backends (ws_echo.py) for ws/wss.  `direct` (ws modes only) is the load
client straight to one echo backend: the load core's ceiling.
Results: benchmarks/results/<stamp>-edge/ (runs.jsonl, summary.md).
"""
from __future__ import annotations

import argparse
import atexit
import fcntl
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BENCH_DIR = os.environ.get("EDGE_BENCH_DIR") or os.path.join(os.path.dirname(REPO), "shared", "bench")
LB_CPU, LOAD_CPU = "0", "1"
ALL_LBS = ["nginx", "haproxy", "caddy", "heimdall", "heimdall-pypy"]
HTTP_MODES = ["https", "handshake", "h2"]
WS_MODES = ["ws", "wss"]
UNITS = {"https": "req/s", "handshake": "handshakes/s", "h2": "req/s", "ws": "msgs/s", "wss": "msgs/s"}


def load_measure():
    spec = importlib.util.spec_from_file_location("bench_measure", os.path.join(BENCH_DIR, "lib", "measure.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


measure = load_measure()


# ------------------------------------------------------------ processes ---

class Procs:
    def __init__(self) -> None:
        self.live: dict = {}

    def start(self, name, cpu, log, argv, env=None):
        full = ["taskset", "-c", cpu] + argv if cpu else argv
        out = open(log, "ab")
        p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env)
        out.close()
        self.live[p.pid] = (name, p)
        return p

    def stop(self, p) -> None:
        if p is None or p.pid not in self.live:
            return
        pids = measure.tree(measure.read_procs(), p.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if p.poll() is not None and not any(alive(x) for x in pids if x != p.pid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        p.wait()
        del self.live[p.pid]

    def stop_all(self) -> None:
        for _, p in list(self.live.values()):
            self.stop(p)


def alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_pids(port):
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {int(x) for x in re.findall(r"pid=(\d+)", out)}, bool(out.strip())


def wait_port_free(port, timeout=15) -> bool:
    deadline = time.monotonic() + timeout
    while port_pids(port)[1]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def get(port, tls, path="/", timeout=2):
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_ready(p, ports, timeout=40) -> bool:
    """Every (port, tls) answers 200 and every listener there is p's."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if p.poll() is not None or time.monotonic() > deadline:
            return False
        port, tls = pending[0]
        try:
            ok = get(port, tls) == 200
        except (OSError, http.client.HTTPException, ssl.SSLError):
            ok = False
        if ok:
            mine = measure.tree(measure.read_procs(), p.pid)
            holders, _ = port_pids(port)
            if not holders or not holders <= mine:
                print(f"   port {port} is held by {holders - mine}", file=sys.stderr)
                return False
            pending.pop(0)
        else:
            time.sleep(0.2)
    return True


# --------------------------------------------------------------- setup ---

def write_backends_conf(tmp, backends, status_port) -> str:
    """The harness's nginx config for BACKENDS (host:port), written in TMP: its path."""
    ports = " ".join(b.split(":")[1] for b in backends)
    subprocess.run(["bash", "-c", f'source "$1/lib/servers.sh"; BACKEND_PORTS=({ports}); '
                    f'BACKEND_STATUS_PORT={status_port}; write_backends_conf "$2"',
                    "_", BENCH_DIR, tmp], check=True)
    return os.path.join(tmp, "backends.conf")


def start_nginx_backends(procs, tmp, log):
    return procs.start("backends", LOAD_CPU, log, [
        "nginx", "-e", f"{tmp}/backends.error.log", "-p", tmp, "-c", f"{tmp}/backends.conf"])


def wait_backends(p, backends, what="backend") -> None:
    """Exits unless every one of BACKENDS (host:port) answers, served by P."""
    for b in backends:
        if not wait_ready(p, [(int(b.split(":")[1]), False)], 15):
            sys.exit(f"{what} {b} did not start")


def make_certs(tmp, key_type):
    d = os.path.join(tmp, "certs")
    os.makedirs(d)
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if key_type == "ec"
              else ["-newkey", "rsa:2048"])
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)  # noqa: E731
    run("req", "-x509", *newkey, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
        "-subj", "/CN=heimdall edge bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")
    run("req", *newkey, "-nodes", "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "30", "-out", "cert.pem", "-extfile", "leaf.ext")
    with open(os.path.join(d, "combined.pem"), "wb") as f:  # HAProxy's crt: certificate + key
        for name in ("cert.pem", "key.pem"):
            f.write(open(os.path.join(d, name), "rb").read())
    os.chmod(tmp, 0o755)
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)  # nginx reads them as root anyway; caddy too
    os.chmod(d, 0o755)
    return {k: os.path.join(d, v) for k, v in
            (("cert", "cert.pem"), ("key", "key.pem"), ("combined", "combined.pem"), ("ca", "ca.pem"))}


def nginx_conf(t, name, tls_port, plain_port, backends, certs):
    temp = os.path.join(t, f"{name}-temp")
    os.makedirs(temp, exist_ok=True)
    servers = "\n".join(f"    server {b};" for b in backends)
    return f"""worker_processes 1;
daemon off;
pid {t}/{name}.pid;
error_log {t}/{name}.error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  server_tokens off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
  upstream backends {{
{servers}
    keepalive 512;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
  }}
  server {{
    listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;
    listen 127.0.0.1:{plain_port} backlog=4096;
    ssl_certificate {certs['cert']};
    ssl_certificate_key {certs['key']};
    ssl_protocols TLSv1.3;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"""


def haproxy_conf(tls_port, plain_port, backends, certs):
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
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:{tls_port} ssl crt {certs['combined']} alpn h2,http/1.1 ssl-min-ver TLSv1.3
  bind 127.0.0.1:{plain_port}
  maxconn 8000
  default_backend be
backend be
  balance roundrobin
{servers}
"""


def caddy_conf(tls_port, plain_port, backends, certs):
    ups = " ".join(backends)
    return f"""{{
	admin off
	auto_https off
	default_sni 127.0.0.1
}}
(proxy) {{
	reverse_proxy {ups} {{
		lb_policy round_robin
		transport http {{
			keepalive 120s
			keepalive_idle_conns 128
			keepalive_idle_conns_per_host 32
		}}
	}}
}}
https://127.0.0.1:{tls_port} {{
	bind 127.0.0.1
	tls {certs['cert']} {certs['key']} {{
		protocols tls1.3
	}}
	import proxy
}}
http://127.0.0.1:{plain_port} {{
	bind 127.0.0.1
	import proxy
}}
"""


class Edge:
    def __init__(self, a) -> None:
        self.a = a
        b = a.port_base
        self.tls_port, self.plain_port, self.status_port = b, b + 5, b + 9
        self.http_backends = [f"127.0.0.1:{b + i}" for i in range(1, 5)]
        self.ws_backends = [f"127.0.0.1:{b + i}" for i in range(6, 9)]
        self.procs = Procs()
        self.tmp = tempfile.mkdtemp(prefix="edgebench.")
        self.out = a.out
        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)
        self.certs = make_certs(self.tmp, a.key_type)
        self.nginx_be = self.ws_be = None

    def log(self, name):
        return os.path.join(self.out, "logs", name + ".log")

    # ------------------------------------------------------- backends ---
    def start_backends(self) -> None:
        write_backends_conf(self.tmp, self.http_backends, self.status_port)
        self.nginx_be = start_nginx_backends(self.procs, self.tmp, self.log("backends"))
        self.ws_be = self.procs.start("ws-echo", LOAD_CPU, self.log("ws-echo"), [
            sys.executable, os.path.join(HERE, "ws_echo.py"), "--ports",
            ",".join(b.split(":")[1] for b in self.ws_backends)])
        wait_backends(self.nginx_be, self.http_backends)
        wait_backends(self.ws_be, self.ws_backends, "ws backend")

    # ------------------------------------------------------------ LBs ---
    def start_lb(self, lb, kind, round_no):
        backends = self.http_backends if kind == "http" else self.ws_backends
        log = self.log(f"{lb}-{kind}-r{round_no}")
        t, tp, pp = self.tmp, self.tls_port, self.plain_port
        if lb == "nginx":
            path = os.path.join(t, f"nginx-{kind}.conf")
            open(path, "w").write(nginx_conf(t, f"nginx-{kind}", tp, pp, backends, self.certs))
            argv, env = ["nginx", "-e", f"{t}/nginx-{kind}.error.log", "-p", t, "-c", path], None
        elif lb == "haproxy":
            path = os.path.join(t, f"haproxy-{kind}.cfg")
            open(path, "w").write(haproxy_conf(tp, pp, backends, self.certs))
            argv, env = ["haproxy", "-db", "-f", path], None
        elif lb == "caddy":
            path = os.path.join(t, f"Caddyfile-{kind}")
            open(path, "w").write(caddy_conf(tp, pp, backends, self.certs))
            home = os.path.join(t, "caddy-home")
            os.makedirs(home, exist_ok=True)
            env = dict(os.environ, HOME=home, XDG_DATA_HOME=home, XDG_CONFIG_HOME=home, GOMAXPROCS="1")
            argv = ["caddy", "run", "--config", path, "--adapter", "caddyfile"]
        else:
            env = dict(os.environ, EDGE_TLS_PORT=str(tp), EDGE_PLAIN_PORT=str(pp),
                       EDGE_BACKENDS=",".join(backends), EDGE_CERT=self.certs["cert"],
                       EDGE_KEY=self.certs["key"], EDGE_TMP=t)
            if lb == "heimdall-pypy":
                env["HEIMDALL_PYTHON"] = os.path.join(REPO, ".venv-pypy", "bin", "python")
            argv = ["bash", os.path.join(HERE, "heimdall-edge.sh")]
        for port in (tp, pp):
            if not wait_port_free(port):
                print(f"   port {port} busy: {port_pids(port)}", file=sys.stderr)
                return None
        p = self.procs.start(lb, LB_CPU, log, argv, env)
        if not wait_ready(p, [(tp, True), (pp, False)]):
            print(f"   {lb} did not start; see {log}", file=sys.stderr)
            self.procs.stop(p)
            return None
        return p

    # --------------------------------------------------------- modes ---
    def load_argv(self, mode, duration, warmup_only=False):
        url_tls = f"https://127.0.0.1:{self.tls_port}/"
        if mode in ("https", "handshake"):
            argv = ["wrk", "-t1", "-c64", f"-d{duration}s", "--timeout", "5s", "--latency",
                    "-s", os.path.join(BENCH_DIR, "lib", "wrk_json.lua")]
            if mode == "handshake":
                argv += ["-H", "Connection: close"]
            return argv + [url_tls]
        if mode == "h2":
            return ["h2load", "-t1", "-c4", "-m16", "-D", str(duration), url_tls]
        url = (f"ws://127.0.0.1:{self.plain_port}/" if mode == "ws"
               else f"wss://127.0.0.1:{self.tls_port}/")
        return [sys.executable, os.path.join(HERE, "ws_bench.py"), "--url", url, "-c", "64",
                "-d", str(duration), "--warmup", str(0 if warmup_only else self.a.warmup)]

    def measure(self, lb, lb_pid, mode, round_no):
        a = self.a
        if mode in HTTP_MODES and a.warmup:
            subprocess.run(["taskset", "-c", LOAD_CPU] + self.load_argv(mode, a.warmup),
                           capture_output=True, timeout=a.warmup + 60)
        quiet = measure.wait_quiet(a.quiet_cpu, a.quiet_timeout)
        be = self.nginx_be if mode in HTTP_MODES else self.ws_be
        argv = ["taskset", "-c", LOAD_CPU] + self.load_argv(mode, a.duration)
        p0, c0 = measure.read_procs(), measure.read_cpus()
        t0 = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=a.duration + a.warmup + 90)
        wall = time.monotonic() - t0
        p1, c1 = measure.read_procs(), measure.read_cpus()
        with open(self.log(f"load-{lb}-{mode}-r{round_no}"), "a") as f:
            f.write("$ " + " ".join(argv) + "\n" + proc.stdout + proc.stderr + "\n")
        rec = {"lb": lb, "mode": mode, "round": round_no, "unit": UNITS[mode],
               "ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "quiet_wait": quiet, "rc": proc.returncode}
        try:
            rec.update(parse(mode, proc.stdout))
        except (ValueError, KeyError, AttributeError) as exc:
            rec["error"] = f"{exc}: {(proc.stderr or proc.stdout)[-300:]}"
        cpu = measure.cpu_report(c0, c1, p0, p1, wall, lb_pid or 0, be.pid, [os.getpid()])
        rec["cpu"] = {k: cpu[k] for k in ("lb_cpu_pct", "lb_rss_kb", "foreign_cpu_pct")}
        rec["cpu"].update(cpu0=cpu["cpu0"]["busy_pct"], cpu1=cpu["cpu1"]["busy_pct"])
        with open(os.path.join(self.out, "runs.jsonl"), "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        c = rec["cpu"]
        print(f"{lb:>14} {mode:<10} r{round_no} {rec.get('value', 0):>10.0f} {UNITS[mode]:<13}"
              f"p99 {rec.get('p99_ms')} ms  err {rec.get('errors')}  cpu0 {c['cpu0']}% cpu1 {c['cpu1']}%"
              f"  lb {c['lb_cpu_pct']}% foreign {c['foreign_cpu_pct']}%"
              + (f"  ERROR {rec['error'][:200]}" if "error" in rec else ""), flush=True)

    def run(self) -> None:
        a = self.a
        self.start_backends()
        order = list(a.lbs)
        for r in range(1, a.rounds + 1):
            for lb in order:
                for kind, modes in (("http", HTTP_MODES), ("ws", WS_MODES)):
                    modes = [m for m in modes if m in a.modes]
                    if not modes or (lb == "direct" and kind == "http"):
                        continue
                    if lb == "direct":
                        for m in modes:
                            if m == "ws":
                                self.measure_direct(r)
                        continue
                    p = self.start_lb(lb, kind, r)
                    if p is None:
                        continue
                    for m in modes:
                        self.measure(lb, p.pid, m, r)
                        if p.poll() is not None:
                            print(f"   {lb} exited during {m}", file=sys.stderr)
                            break
                    self.procs.stop(p)
            order = order[1:] + order[:1]

    def measure_direct(self, r):
        port = self.ws_backends[0].split(":")[1]
        saved = self.plain_port
        self.plain_port = int(port)
        try:
            self.measure("direct", 0, "ws", r)
        finally:
            self.plain_port = saved

    def cleanup(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)


def parse(mode, out):
    if mode in ("https", "handshake"):
        w = json.loads(re.search(r"^WRK_JSON (\{.*\})$", out, re.M).group(1))
        e = w["errors"]
        return {"value": round(w["requests"] / (w["duration_us"] / 1e6), 1),
                "p50_ms": round(w["latency_us"]["p50"] / 1000, 3),
                "p99_ms": round(w["latency_us"]["p99"] / 1000, 3),
                "errors": e["connect"] + e["read"] + e["write"] + e["timeout"] + e["status"],
                "errors_detail": e}
    if mode == "h2":
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
        s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
        to_ms = float(mean[:-2]) if mean.endswith("ms") else (
            float(mean[:-2]) / 1000 if mean.endswith("us") else float(mean[:-1]) * 1000)
        return {"value": rps, "mean_ms": round(to_ms, 3), "p99_ms": None,
                "errors": int(m.group(5)) + int(m.group(6)) + int(m.group(7)) + int(s.group(3)) + int(s.group(4)),
                "succeeded": int(m.group(4))}
    w = json.loads(re.search(r"^WS_JSON (\{.*\})$", out, re.M).group(1))
    return {"value": w["msgs_per_s"], "p50_ms": w["latency_ms"]["p50"], "p99_ms": w["latency_ms"]["p99"],
            "errors": sum(w["errors"].values()) + (64 - w["tunnels"]), "errors_detail": w["errors"]}


def summarize(out, lbs, modes) -> str:
    recs = [json.loads(l) for l in open(os.path.join(out, "runs.jsonl"))]
    ok = [r for r in recs if "error" not in r and r.get("value")]
    val = {}
    for r in ok:
        val.setdefault((r["lb"], r["mode"]), {})[r["round"]] = r
    lines = ["| mode | LB | median | unit | runs | p99 ms (median) | errors | LB core % | foreign % |",
             "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for m in modes:
        for lb in lbs:
            rs = val.get((lb, m))
            if not rs:
                continue
            vs = [rs[k]["value"] for k in sorted(rs)]
            p99 = [rs[k]["p99_ms"] for k in sorted(rs) if rs[k].get("p99_ms") is not None]
            lines.append(
                f"| {m} | {lb} | {statistics.median(vs):.0f} | {UNITS[m]} | "
                f"{', '.join(f'{v:.0f}' for v in vs)} | "
                f"{statistics.median(p99) if p99 else '-'} | {sum(rs[k]['errors'] for k in rs)} | "
                f"{statistics.median(rs[k]['cpu']['lb_cpu_pct'] or 0 for k in rs):.0f} | "
                f"{statistics.median(rs[k]['cpu']['foreign_cpu_pct'] for k in rs):.0f} |")
    lines += ["", "Ratios heimdall / peer (per round, both from the same round; median over rounds):", "",
              "| mode | heimdall build | / nginx | / haproxy | / caddy |", "|---|---|---:|---:|---:|"]
    for m in modes:
        for h in ("heimdall", "heimdall-pypy"):
            if (h, m) not in val:
                continue
            cells = []
            for peer in ("nginx", "haproxy", "caddy"):
                hs, ps = val[(h, m)], val.get((peer, m), {})
                ratios = [hs[k]["value"] / ps[k]["value"] for k in hs if k in ps]
                cells.append(f"{statistics.median(ratios):.2f}" if ratios else "-")
            lines.append(f"| {m} | {h} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    open(os.path.join(out, "summary.md"), "w").write(text)
    return text


def take_lock(wait=600):
    """The harness's lock: one benchmark at a time on the machine's bench ports."""
    os.makedirs(os.path.join(BENCH_DIR, "results"), exist_ok=True)
    lock = open(os.path.join(BENCH_DIR, "results", ".lock"), "w")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                sys.exit("another benchmark holds the lock " + lock.name)
            time.sleep(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lbs", default=",".join(ALL_LBS + ["direct"]))
    ap.add_argument("--modes", default=",".join(HTTP_MODES + WS_MODES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--key-type", choices=("ec", "rsa"), default="ec")
    ap.add_argument("--port-base", type=int, default=18080)
    ap.add_argument("--quiet-cpu", type=float, default=25)
    ap.add_argument("--quiet-timeout", type=float, default=5)
    ap.add_argument("--lock-wait", type=float, default=600, help="wait this long for the bench lock")
    ap.add_argument("--out")
    ap.add_argument("--summarize", metavar="DIR", help="only print the summary of an earlier run")
    a = ap.parse_args()
    a.lbs, a.modes = a.lbs.split(","), a.modes.split(",")
    if a.summarize:
        print(summarize(a.summarize, a.lbs, a.modes))
        return
    a.out = a.out or os.path.join(REPO, "benchmarks", "results", time.strftime("%Y%m%d-%H%M%S") + "-edge")
    lock = take_lock(a.lock_wait)  # noqa: F841 - held until exit
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    edge = Edge(a)
    atexit.register(edge.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "key_type": a.key_type,
            "versions": {t: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
                         .splitlines()[0] if subprocess.run(c, shell=True, capture_output=True, text=True)
                         .stdout.strip() else "?" for t, c in (
                             ("nginx", "nginx -v 2>&1"), ("haproxy", "haproxy -v"), ("caddy", "caddy version"),
                             ("wrk", "wrk --version 2>&1"), ("h2load", "h2load --version"),
                             ("openssl", "openssl version"),
                             ("cpython", f"{REPO}/.venv/bin/python -VV"),
                             ("pypy", f"{REPO}/.venv-pypy/bin/python -VV 2>&1 | tail -1"))}}
    json.dump(meta, open(os.path.join(a.out, "meta.json"), "w"), indent=1)
    edge.run()
    print(summarize(a.out, a.lbs, a.modes))


if __name__ == "__main__":
    main()
