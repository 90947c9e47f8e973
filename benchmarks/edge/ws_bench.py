#!/usr/bin/env python3
"""WebSocket relay load client for the edge benchmark (standard library only).

    ws_bench.py --url ws://127.0.0.1:18085/ -c 64 -d 10 --warmup 5 --size 100
    ws_bench.py --url wss://127.0.0.1:18080/ ...        (TLS 1.3, no verification)

Opens C WebSocket tunnels (RFC 6455 handshake, 101 checked), then each tunnel
sends one masked binary message of SIZE bytes, waits for its whole echo,
and sends the next (closed loop: one message in flight per tunnel, as wrk
keeps one request in flight per connection).  After the warm-up it counts
the echoes for DURATION seconds and prints one line
`WS_JSON {"messages": N, "msgs_per_s": R, "latency_ms": {...}, ...}`.
The first echo of every tunnel is compared with what was sent; a tunnel
that closes or fails counts as an error and is not reopened.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import time
import urllib.parse


class Tunnel(asyncio.Protocol):
    def __init__(self, bench: "Bench") -> None:
        self.bench = bench
        self.transport = None
        self.buf = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = False
        self.checked = False
        self.pending = 0
        self.sent_at = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        b = self.bench
        transport.write(
            b"GET " + b.path + b" HTTP/1.1\r\nHost: " + b.host + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buf.split(b"\r\n", 1)[0]
            data, self.buf = self.buf[end + 4:], b""
            if b" 101 " not in status + b" ":
                self.upgraded.set_exception(RuntimeError(status.decode(errors="replace")))
                self.transport.close()
                return
            self.upgraded.set_result(None)
            if not data:
                return
        b = self.bench
        self.pending += len(data)
        if not self.checked:
            self.buf += data
            if len(self.buf) >= b.echo_len:
                if self.buf[:b.echo_len] != b.expect:
                    b.errors["mismatch"] += 1
                    self.transport.close()
                    return
                self.checked = True
                self.buf = b""
        while self.pending >= b.echo_len:
            self.pending -= b.echo_len
            now = time.perf_counter()
            if b.recording:
                b.count += 1
                b.latencies.append(now - self.sent_at)
            self.send()

    def send(self) -> None:
        if self.closed or self.bench.stopping:
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.bench.message)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed before 101"))
        elif not self.bench.stopping:
            self.bench.errors["closed"] += 1


class Bench:
    def __init__(self, a) -> None:
        u = urllib.parse.urlsplit(a.url)
        self.tls = u.scheme == "wss"
        self.hostname = u.hostname
        self.port = u.port or (443 if self.tls else 80)
        self.host = (u.netloc or self.hostname).encode()
        self.path = (u.path or "/").encode() + (b"?" + u.query.encode() if u.query else b"")
        payload = bytes(i % 251 for i in range(a.size))
        mask = os.urandom(4)
        masked = bytes(p ^ mask[i % 4] for i, p in enumerate(payload))
        self.message = self.head(0x82, a.size, True) + mask + masked
        self.expect = self.head(0x82, a.size, False) + payload
        self.echo_len = len(self.expect)
        self.recording = False
        self.stopping = False
        self.count = 0
        self.latencies: list = []
        self.errors = {"connect": 0, "closed": 0, "mismatch": 0}

    @staticmethod
    def head(b0: int, n: int, masked: bool) -> bytes:
        m = 0x80 if masked else 0
        if n < 126:
            return bytes((b0, m | n))
        if n < 65536:
            return bytes((b0, m | 126)) + n.to_bytes(2, "big")
        return bytes((b0, m | 127)) + n.to_bytes(8, "big")


def pct(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, int(q / 100.0 * len(sorted_values)))
    return round(sorted_values[i] * 1000, 3)


async def run(a) -> dict:
    b = Bench(a)
    loop = asyncio.get_running_loop()
    ctx = None
    if b.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(["http/1.1"])
    tunnels = []

    async def open_one():
        try:
            _, t = await loop.create_connection(
                lambda: Tunnel(b), b.hostname, b.port, ssl=ctx,
                server_hostname=b.hostname if ctx else None)
            await asyncio.wait_for(t.upgraded, 10)
            tunnels.append(t)
        except Exception as exc:  # noqa: BLE001 - counted and shown
            b.errors["connect"] += 1
            b.last_error = repr(exc)

    await asyncio.gather(*(open_one() for _ in range(a.conns)))
    for t in tunnels:
        t.send()
    await asyncio.sleep(a.warmup)
    b.recording = True
    t0 = time.perf_counter()
    await asyncio.sleep(a.duration)
    b.recording = False
    wall = time.perf_counter() - t0
    b.stopping = True
    for t in tunnels:
        t.transport.close()
    await asyncio.sleep(0.1)
    lat = sorted(b.latencies)
    return {
        "tunnels": len(tunnels), "messages": b.count, "duration_s": round(wall, 3),
        "msgs_per_s": round(b.count / wall, 1), "size": a.size,
        "latency_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
                       "max": pct(lat, 100)},
        "errors": b.errors, "last_error": getattr(b, "last_error", None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("-c", "--conns", type=int, default=64)
    ap.add_argument("-d", "--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--size", type=int, default=100, help="message size in bytes")
    a = ap.parse_args()
    res = asyncio.run(run(a))
    print("WS_JSON " + json.dumps(res), flush=True)
    sys.exit(0 if res["tunnels"] == a.conns else 1)


if __name__ == "__main__":
    main()
