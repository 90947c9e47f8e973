"""
RSS of heimdall while one slow client downloads a large body through it.

    .venv/bin/python benchmarks/slow_download_rss.py [--size 1GiB] [--rate 1MB] [--python PY]

Starts a demo backend and heimdall (twistd, as users run it) on free
loopback ports, then downloads /bytes?n=SIZE through heimdall reading at
RATE bytes per second (socket receive buffer kept small so the pace is
real), sampling heimdall's RSS every second.  Prints the RSS at start, the
maximum, and the growth; with --json, one JSON object.  Everything it
starts is stopped at the end.  Without backpressure the proxy would buffer
what the backend sends faster than the client reads: hundreds of MB here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def parse_size(text: str) -> int:
    units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
    lower = text.lower()
    for unit, factor in units.items():
        if lower.endswith(unit):
            return int(float(lower[: -len(unit)]) * factor)
    return int(lower)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rate", default="1MB", help="client read rate per second")
    parser.add_argument("--python", default=sys.executable, help="interpreter whose twistd runs heimdall")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size, rate = parse_size(args.size), parse_size(args.rate)

    backend_port, proxy_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="heimdall-rss-"))
    config = tmp / "config.json"
    config.write_text(
        json.dumps(
            {
                "listen": f"tcp:{proxy_port}:interface=127.0.0.1",
                "backends": [f"http://127.0.0.1:{backend_port}"],
                "access_log": {"enabled": False},
                "timeouts": {"response": "60s"},
            }
        )
    )
    twistd = str(Path(args.python).with_name("twistd"))
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "heimdall.backend", "--port", str(backend_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        heimdall = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "heimdall", "--config", str(config)],
            stdout=open(tmp / "heimdall.log", "wb"),
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
        procs.append(heimdall)
        wait_port(backend_port)
        wait_port(proxy_port)
        time.sleep(0.5)
        start_rss = rss_bytes(heimdall.pid)

        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.connect(("127.0.0.1", proxy_port))
        client.sendall(f"GET /bytes?n={size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = 0
        max_rss = start_rss
        started = time.monotonic()
        next_sample = started
        chunk = max(1, rate // 20)
        while True:
            data = client.recv(chunk)
            if not data:
                break
            received += len(data)
            now = time.monotonic()
            ahead = received / rate - (now - started)
            if ahead > 0:
                time.sleep(ahead)
            if now >= next_sample:
                max_rss = max(max_rss, rss_bytes(heimdall.pid))
                next_sample = now + 1.0
                if not args.json and int(now - started) % 60 == 0:
                    print(f"  {received / 2**20:8.1f} MiB received, RSS {max_rss / 2**20:.1f} MiB", flush=True)
        client.close()
        elapsed = time.monotonic() - started
        result = {
            "size_bytes": size,
            "received_bytes": received,
            "seconds": round(elapsed, 1),
            "rate_bytes_per_s": round(received / elapsed),
            "rss_start_mib": round(start_rss / 2**20, 1),
            "rss_max_mib": round(max_rss / 2**20, 1),
            "rss_growth_mib": round((max_rss - start_rss) / 2**20, 1),
            "python": args.python,
        }
        print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
        return 0 if received >= size else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
