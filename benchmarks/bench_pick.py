"""
Pick cost of every registered strategy, in microseconds per pick, at 10 and
1,000 backends.  Run by hand:

    python benchmarks/bench_pick.py [--picks N]

Each strategy is rebuilt through a real L{BackendPool}; members carry a
random load (0-7 requests in flight, response times 5-50 ms, last used
0-10 s ago) so that load-aware strategies do their real work; requests come
from 10,000 distinct clients, paths and cookies.  The load is not changed
during the timed loop (the proxy would lease and release around each pick;
that cost is the pool's, not the strategy's).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from heimdall.pool.context import RequestContext
from heimdall.pool.pool import Backend, BackendPool, Health, Outcome
from heimdall.strategies.registry import default_registry

#: Options for strategies that need some, and extra variants worth timing.
CONFIGURATIONS = {
    "first": [{"max_in_flight": 4}],
    "hash": [{"key": "header:x-user"}, {"key": "cookie:session", "balance_factor": 1.25}],
    "ip_hash": [{}, {"trusted_proxies": ["10.0.0.0/8"]}],
    "url_hash": [{}, {"balance_factor": 1.25}, {"balance_factor": 1.25, "+total": True}],
    "sticky_round_robin": [{}, {"key": "ip"}],
    "least_time": [{}, {"choices": 2}],
}


def contexts(count: int, rng: random.Random):
    result = []
    for i in range(count):
        headers = Headers({b"x-user": [b"user-%d" % i], b"x-forwarded-for": [b"198.51.100.%d" % (i % 250)]})
        result.append(
            RequestContext(
                client_address=f"10.{i % 250}.{i // 250 % 250}.{rng.randrange(1, 250)}",
                path=b"/item/%d" % rng.randrange(100_000),
                query=b"page=%d" % (i % 7),
                headers=headers,
                cookies={b"session": b"s%d" % i},
            )
        )
    return result


def loaded_pool(strategy, size: int, clock: Clock, rng: random.Random, weighted: bool):
    pool = BackendPool(strategy, clock=clock)
    for i in range(size):
        weight = rng.randrange(1, 10) if weighted else 1
        pool.add(Backend("http", f"10.1.{i // 250}.{i % 250 + 1}", 8000, weight=weight))
    clock.advance(100)
    for member in pool.members():
        pool.set_health(member.id, Health.UP)
        member.in_flight = rng.randrange(8)
        member.ttfb_avg = rng.uniform(0.005, 0.05)
        member.ttlb_avg = member.ttfb_avg * 2
        member.last_used_at = clock.seconds() - rng.uniform(0, 10)
    # The loads above were set behind the pool's back: rebuild, and run one
    # lease through it, as traffic would (load-aware strategies such as
    # least_connections then pick from their own buckets).
    pool.set_strategy(strategy)
    lease = pool.lease(pool.members()[0])
    lease.release(Outcome(status=200))
    return pool


def measure(name: str, options: dict, size: int, picks: int, weighted: bool) -> float:
    rng = random.Random(42)
    clock = Clock()
    attach_total = options.pop("+total", False)
    strategy = default_registry().create(name, options, random.Random(7), clock)
    pool = loaded_pool(strategy, size, clock, rng, weighted)
    if attach_total:
        # What the pool could offer: its running total, O(1) (see hash.py).
        total = sum(m.in_flight for m in pool.eligible())
        strategy.attach_in_flight_total(lambda: total)
    requests = contexts(10_000, rng)
    pick = strategy.pick
    # Warm up (sticky tables, caches), then time.
    for context in requests[:1000]:
        pick(context)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for i in range(picks):
            pick(requests[i % 10_000])
        best = min(best, time.perf_counter() - started)
    del pool
    return best / picks * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--picks", type=int, default=20_000)
    args = parser.parse_args(argv)
    sizes = (10, 1000)
    print(f"Python {sys.version.split()[0]} ({sys.implementation.name}), µs per pick (best of 3 × {args.picks})")
    print()
    header = f"| {'strategy':<22} | {'options':<44} | " + " | ".join(
        f"{n:>5} eq | {n:>5} wt" for n in sizes
    ) + " |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for name in default_registry().names():
        for options in CONFIGURATIONS.get(name, [{}]):
            cells = []
            for size in sizes:
                for weighted in (False, True):
                    picks = args.picks if size <= 10 or name not in ("least_connections", "least_time") else args.picks // 10
                    cells.append(f"{measure(name, dict(options), size, picks, weighted):8.2f}")
            shown = ", ".join(
                "total from pool" if k == "+total" else f"{k}={v}" for k, v in options.items()
            ) or "-"
            print(f"| {name:<22} | {shown:<44} | " + " | ".join(cells) + " |")
    print()
    print("eq: all weights 1; wt: weights 1-9.  In flight 0-7 per backend.")


if __name__ == "__main__":
    main()
