"""
Property tests (hypothesis) of the strategies' promises: exact round-robin
proportions, smooth weighted round robin, consistent hashing that moves few
keys, bounded load, sticky sessions that re-pin only when they must.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from heimdall.pool.context import RequestContext
from heimdall.strategies.hashing import HashRing, stable_hash
from heimdall.pool.pool import BackendPool, Member
from heimdall.pool.values import Backend, Health
from heimdall.strategies.registry import default_registry

FEW = settings(max_examples=25, deadline=None)
KEYS = 10_000


def create(name, options=None, seed=0, clock=None):
    return default_registry().create(name, options or {}, random.Random(seed), clock or Clock())


def member(i, weight=1):
    return Member(Backend("http", f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 8000, weight=weight), 0.0)


EMPTY = RequestContext()

# -- round robin and weighted round robin ---------------------------------------------


@FEW
@given(count=st.integers(1, 30), cycles=st.integers(1, 4), seed=st.integers(0, 2**32), warmup=st.integers(0, 50))
def test_round_robin_exact_over_a_cycle(count, cycles, seed, warmup):
    strategy = create("round_robin", seed=seed)
    group = [member(i) for i in range(count)]
    strategy.rebuild(group)
    for _ in range(warmup):
        strategy.pick(EMPTY)
    picks = Counter(strategy.pick(EMPTY) for _ in range(count * cycles))
    assert picks == {m: cycles for m in group}


weight_lists = st.lists(st.integers(1, 12), min_size=2, max_size=8)


@FEW
@given(weights=weight_lists, cycles=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_weighted_round_robin_exact_over_a_cycle(weights, cycles, seed):
    strategy = create("weighted_round_robin", seed=seed)
    group = [member(i, w) for i, w in enumerate(weights)]
    strategy.rebuild(group)
    total = sum(weights)
    for cycle in range(cycles):
        picks = Counter(strategy.pick(EMPTY) for _ in range(total))
        assert picks == {m: m.weight for m in group}, f"cycle {cycle}"


@FEW
@given(weights=weight_lists, seed=st.integers(0, 2**32))
def test_weighted_round_robin_never_more_than_weight_in_a_row(weights, seed):
    strategy = create("weighted_round_robin", seed=seed)
    group = [member(i, w) for i, w in enumerate(weights)]
    strategy.rebuild(group)
    sequence = [strategy.pick(EMPTY) for _ in range(sum(weights) * 4)]
    run = 1
    for previous, current in zip(sequence, sequence[1:]):
        run = run + 1 if current is previous else 1
        assert run <= current.weight


@FEW
@given(
    weights=weight_lists,
    seed=st.integers(0, 2**32),
    avoid_at=st.sets(st.integers(0, 60), max_size=10),
    change_at=st.integers(0, 60),
    new_weight=st.integers(1, 12),
)
def test_weighted_round_robin_settles_after_avoid_and_reweight(weights, seed, avoid_at, change_at, new_weight):
    """
    Retries (avoid) and weight changes disturb a cycle, but the proportions
    of later cycles are exact again.
    """
    strategy = create("weighted_round_robin", seed=seed)
    group = [member(i, w) for i, w in enumerate(weights)]
    strategy.rebuild(group)
    for step in range(61):
        if step == change_at:
            group[0] = member(0, new_weight)
            strategy.rebuild(group)
        strategy.pick(EMPTY, avoid={group[step % len(group)]} if step in avoid_at else ())
    total = sum(m.weight for m in group)
    # Run out the disturbed cycle, then the next ones are exact.
    counts = Counter(strategy.pick(EMPTY) for _ in range(total * 4))
    for m in group:
        assert abs(counts[m] - 4 * m.weight) <= 2 * len(group)


def test_weighted_round_robin_interleaves_like_nginx():
    strategy = create("weighted_round_robin")
    a, b, c = member(0, 5), member(1, 1), member(2, 1)
    strategy.rebuild([a, b, c])
    sequence = [strategy.pick(EMPTY) for _ in range(14)]
    assert Counter(sequence[:7]) == {a: 5, b: 1, c: 1}
    assert sequence[:7].index(b) not in (0, 6) or sequence[:7].index(c) not in (0, 6)
    assert max(run_lengths(sequence)) <= 4


def run_lengths(sequence):
    runs, run = [], 1
    for previous, current in zip(sequence, sequence[1:]):
        if current is previous:
            run += 1
        else:
            runs.append(run)
            run = 1
    return runs + [run]


# -- consistent hashing -----------------------------------------------------------


def keys():
    return [RequestContext(path=b"/object/%d" % i) for i in range(KEYS)]


def assignment(strategy, requests):
    return [strategy.pick(r).id for r in requests]


@settings(max_examples=12, deadline=None)
@given(count=st.integers(1, 40), start=st.integers(0, 5000))
def test_adding_a_backend_moves_about_one_in_n_plus_one(count, start):
    requests = keys()
    group = [member(start + i) for i in range(count)]
    strategy = create("url_hash")
    strategy.rebuild(group)
    before = assignment(strategy, requests)
    newcomer = member(start + count)
    strategy.rebuild(group + [newcomer])
    after = assignment(strategy, requests)
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    # Keys only ever move to the newcomer...
    assert all(a == newcomer.id for _, a in moved)
    # ... and about 1/(N+1) of them.
    assert len(moved) / KEYS <= 1.2 / (count + 1) + 0.01


@settings(max_examples=12, deadline=None)
@given(count=st.integers(2, 40), start=st.integers(0, 5000), data=st.data())
def test_removing_a_backend_moves_only_its_keys(count, start, data):
    requests = keys()
    group = [member(start + i, weight=1 + i % 3) for i in range(count)]
    strategy = create("url_hash")
    strategy.rebuild(group)
    before = assignment(strategy, requests)
    gone = data.draw(st.sampled_from(group))
    strategy.rebuild([m for m in group if m is not gone])
    after = assignment(strategy, requests)
    for b, a in zip(before, after):
        if b == gone.id:
            assert a != gone.id
        else:
            assert a == b


@settings(max_examples=8, deadline=None)
@given(weights=st.lists(st.integers(1, 5), min_size=2, max_size=12))
def test_hash_shares_follow_weights(weights):
    requests = keys()
    group = [member(i, w) for i, w in enumerate(weights)]
    strategy = create("url_hash")
    strategy.rebuild(group)
    counts = Counter(assignment(strategy, requests))
    total = sum(weights)
    for m in group:
        expected = KEYS * m.weight / total
        # 100 points per unit of weight: within ~4 standard deviations.
        assert abs(counts[m.id] - expected) <= 0.45 * expected + 150


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(
        st.lists(st.tuples(st.integers(0, 30), st.integers(1, 4)), max_size=25, unique_by=lambda t: t[0]),
        min_size=1,
        max_size=8,
    )
)
def test_a_ring_updated_in_place_maps_like_a_fresh_one(steps):
    """
    Whatever joins, leaves, comes back or changes weight, the ring updated
    in place (dead points, merged points) answers as one built afresh.
    """
    updated = HashRing(points_per_weight=20)
    probes = [stable_hash(b"probe-%d" % i) for i in range(300)]
    for step in steps:
        group = [member(i, w) for i, w in step]
        updated.update(group)
        fresh = HashRing.build(group, points_per_weight=20)
        assert len(updated) == len(fresh)
        assert [_id(updated.owner(h)) for h in probes] == [_id(fresh.owner(h)) for h in probes]


def _id(owner):
    return None if owner is None else owner.id


def test_the_ring_does_not_depend_on_member_order():
    requests = keys()[:2000]
    group = [member(i, 1 + i % 4) for i in range(20)]
    forward, backward = create("url_hash"), create("url_hash")
    forward.rebuild(group)
    backward.rebuild(group[::-1])
    assert assignment(forward, requests) == assignment(backward, requests)


# -- bounded load ------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.integers(0, 6)),  # few keys: hot spots
        st.tuples(st.just("release"), st.integers(0, 1000)),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(1, 4), min_size=1, max_size=8),
    factor=st.sampled_from([1.05, 1.25, 1.5, 2.0]),
    ops=operations,
    with_releases=st.booleans(),
)
def test_bounded_load_keeps_every_backend_under_factor_times_average(weights, factor, ops, with_releases):
    clock = Clock()
    strategy = create("hash", {"key": "cookie:k", "balance_factor": factor}, clock=clock)
    pool = BackendPool(strategy, clock=clock)
    for i, w in enumerate(weights):
        pool.add(member(i, w).backend)
    eligible = pool.eligible()
    total_weight = sum(weights)
    exact = Fraction(factor)
    leases = []

    def bound(m, total):
        return math.ceil(exact * total * m.weight / total_weight)

    for op, value in ops:
        if op == "release":
            if with_releases and leases:
                leases.pop(value % len(leases)).release(None or _ok())
            continue
        chosen = pool.pick(RequestContext(cookies={b"k": b"key-%d" % value}))
        leases.append(pool.lease(chosen))
        total = sum(m.in_flight for m in eligible)
        # The member that took the request is within the bound...
        assert chosen.in_flight <= bound(chosen, total)
        if not with_releases:
            # ... and, as the average only grows, so is everyone.
            assert all(m.in_flight <= bound(m, total) for m in eligible)


def _ok():
    from heimdall.pool.values import Outcome

    return Outcome(status=200)


def test_bounded_load_spills_a_hot_key():
    clock = Clock()
    strategy = create("url_hash", {"balance_factor": 1.25}, clock=clock)
    pool = BackendPool(strategy, clock=clock)
    for i in range(4):
        pool.add(member(i).backend)
    hot = RequestContext(path=b"/hot")
    for _ in range(100):
        pool.lease(pool.pick(hot))
    loads = sorted(m.in_flight for m in pool.members())
    assert loads[-1] <= math.ceil(1.25 * 100 / 4)
    assert sum(loads) == 100


# -- sticky ------------------------------------------------------------------------

sticky_ops = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.integers(0, 9)),
        st.tuples(st.just("down"), st.integers(0, 4)),
        st.tuples(st.just("up"), st.integers(0, 4)),
    ),
    max_size=80,
)


class Browser:
    """
    A client's cookie jar, fed from Set-Cookie headers.
    """

    def __init__(self):
        self.cookies = {}

    def context(self, address):
        return RequestContext(client_address=address, cookies=dict(self.cookies))

    def receive(self, request):
        for header in request.responseHeaders.getRawHeaders(b"set-cookie", []):
            name, _, rest = header.partition(b"=")
            self.cookies[name] = rest.split(b";", 1)[0]


@settings(max_examples=40, deadline=None)
@given(ops=sticky_ops, seed=st.integers(0, 2**32), key=st.sampled_from(["cookie", "ip"]))
def test_sticky_keeps_a_client_until_its_backend_goes_down(ops, seed, key):
    clock = Clock()
    strategy = create("sticky_round_robin", {"key": key}, seed=seed, clock=clock)
    pool = BackendPool(strategy, clock=clock)
    for i in range(5):
        pool.add(member(i).backend)
    browsers = [Browser() for _ in range(10)]
    pinned = {}
    for op, value in ops:
        if op == "down":
            pool.set_health(member(value).id, Health.DOWN)
            continue
        if op == "up":
            pool.set_health(member(value).id, Health.UP)
            continue
        if not pool.eligible():
            continue
        browser = browsers[value]
        context = browser.context(f"192.0.2.{value}")
        chosen = pool.pick(context)
        request = DummyRequest([b""])
        if key == "cookie":
            strategy.response_started(context, chosen, request)
        previous = pinned.get(value)
        if previous is not None and pool.get(previous) in pool.eligible():
            assert chosen.id == previous, "moved while its backend was up"
            assert not request.responseHeaders.hasHeader(b"set-cookie"), "cookie set again"
        elif key == "cookie":
            assert request.responseHeaders.hasHeader(b"set-cookie"), "re-pinned without a cookie"
        pinned[value] = chosen.id
        browser.receive(request)
