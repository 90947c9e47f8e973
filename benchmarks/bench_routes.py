"""
Route lookup cost, in microseconds per lookup, at 10 and 1,000 routes.
Run by hand (CPU only, a few seconds):

    python benchmarks/bench_routes.py [--lookups N]

Each table mixes the route kinds a real config has: a third exact hosts
(C{svcN.example.com}), a third wildcard hosts with a prefix
(C{*.tenantN.example.net} + C{/api/}), a third path prefixes on any host
(C{/svcN/}), and one route in ten also matches a method or a header.  The
requests are drawn from every kind, plus misses (no route matches).  What
is timed is L{RouteTable.lookup} with the host and path normalised as the
router does it (L{request_host}, L{match_path}), i.e. the router's whole
per-request cost apart from handing the request on.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.web.http_headers import Headers

from heimdall.config.routes import MatchConfig, RouteConfig
from heimdall.routing.table import RouteTable, match_path, request_host


class Request:
    def __init__(self, host: bytes, path: bytes, method: bytes = b"GET", headers=None) -> None:
        self.method = method
        self.requestHeaders = Headers({b"host": [host], **(headers or {})})
        self.args = {}
        self.path = path


def routes(count: int):
    out = []
    for i in range(count):
        kind = i % 3
        extra = {}
        if i % 10 == 9:
            extra = {"methods": ["GET", "POST"]} if i % 20 == 9 else {"headers": {"X-Env": "canary"}}
        if kind == 0:
            match = MatchConfig(host=f"svc{i}.example.com", **extra)
        elif kind == 1:
            match = MatchConfig(host=f"*.tenant{i}.example.net", path_prefix="/api/", **extra)
        else:
            match = MatchConfig(path_prefix=f"/svc{i}/", **extra)
        out.append(RouteConfig(match=match, service="default"))
    return out


def requests(count: int, rng: random.Random):
    out = []
    for _ in range(10_000):
        i = rng.randrange(count)
        kind = rng.randrange(4)
        if kind == 0:
            out.append(Request(b"svc%d.example.com:443" % (i - i % 3), b"/users/42"))
        elif kind == 1:
            out.append(Request(b"www.tenant%d.example.net" % (i - i % 3 + 1), b"/api/v1/items?x=1"))
        elif kind == 2:
            out.append(Request(b"any.example.org", b"/svc%d/static/app.js" % (i - i % 3 + 2)))
        else:
            out.append(Request(b"nomatch.example.org", b"/nothing/here"))
    return out


def measure(count: int, lookups: int) -> float:
    table = RouteTable.compile(routes(count))
    sample = requests(count, random.Random(count))
    # The router looks the path up without the query (upstream_target).
    prepared = [(r, r.requestHeaders.getRawHeaders(b"host")[0], r.path.partition(b"?")[0]) for r in sample]
    n = len(prepared)
    lookup = table.lookup
    start = time.perf_counter()
    for k in range(lookups):
        request, host, path = prepared[k % n]
        lookup(request, request_host(host), match_path(path))
    return (time.perf_counter() - start) / lookups * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=200_000)
    options = parser.parse_args()
    print(f"{'routes':>7} {'µs/lookup':>10}")
    for count in (10, 1000):
        measure(count, options.lookups // 10)  # warm-up
        print(f"{count:>7} {measure(count, options.lookups):>10.2f}")


if __name__ == "__main__":
    main()
