"""
Each strategy's own behaviour and options.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from heimdall.pool.context import RequestContext
from heimdall.errors import StrategyOptionError
from heimdall.strategies.hashing import HashRing, point_counts, stable_hash
from heimdall.pool.pool import BackendPool, Member
from heimdall.pool.values import Backend, Health, Outcome
from heimdall.strategies.registry import default_registry
from heimdall.strategies._base import check_networks, client_address, lowest_score
from heimdall.strategies.sticky_round_robin import cookie_token


def create(name, options=None, seed=0, clock=None):
    return default_registry().create(name, options or {}, random.Random(seed), clock or Clock())


def member(i, weight=1, in_flight=0):
    m = Member(Backend("http", f"10.0.0.{i + 1}", 8000, weight=weight), 0.0)
    m.in_flight = in_flight
    return m


def option_error(name, options):
    with pytest.raises(StrategyOptionError) as caught:
        create(name, options)
    return caught.value


# -- hashing ---------------------------------------------------------------------


def test_stable_hash_is_stable_across_processes():
    # A fixed vector (BLAKE2b-64, big-endian): Python's hash() would differ per run.
    assert stable_hash(b"heimdall") == 0x98A9357BC9D81D29


def test_stable_hash_is_the_same_in_another_process():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = "from heimdall.strategies.hashing import stable_hash; print(stable_hash(b'/some/path'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
        ).stdout
        for _ in range(2)
    }
    assert outputs == {f"{stable_hash(b'/some/path')}\n"}


def test_point_counts_follow_weight_and_fit_the_budget():
    assert point_counts([1, 2, 3], 100) == [100, 200, 300]
    counts = point_counts([1000] * 1000, 100, max_points=1 << 17)
    assert sum(counts) <= 1 << 17 and len(set(counts)) == 1
    assert point_counts([1, 1000], 100, max_points=1000) == [1, 781]


def test_ring_lookup_wraps():
    a, b = member(0), member(1)
    ring = HashRing.build([a, b], points_per_weight=3)
    assert len(ring) == 6
    owners = ring.owners()
    assert ring.owner(2**64 - 1) is owners[0]
    assert ring.owner(0) is owners[0]
    walked = list(ring.walk(5))
    assert walked[0] is owners[5] and sorted(walked, key=id) == sorted([a, b], key=id)


def test_ring_dead_points_are_swept_and_slots_reused():
    group = [member(i) for i in range(40)]
    ring = HashRing.build(group, points_per_weight=50)
    assert len(ring) == 2000
    ring.update(group[:5])  # 1750 dead points > 250 live: swept
    assert len(ring) == 250 and len(ring._entries) == 250
    ring.update(group[:5] + group[30:32])  # slots reused
    assert len(ring._id_at) == 40 and len(ring) == 350
    assert ring.owner(12345) in group[:5] + group[30:32]
    assert HashRing().owner(1) is None


# -- option errors name the option --------------------------------------------------


@pytest.mark.parametrize(
    "name, options, path",
    [
        ("hash", {}, "key"),
        ("hash", {"key": "body"}, "key"),
        ("hash", {"key": "header:"}, "key"),
        ("hash", {"key": "header:bad name"}, "key"),
        ("hash", {"key": "header:x", "include_query": True}, "include_query"),
        ("hash", {"key": "url", "trusted_proxies": ["10.0.0.0/8"]}, "trusted_proxies"),
        ("hash", {"key": "ip", "balance_factor": 1.0}, "balance_factor"),
        ("hash", {"key": "ip", "balance_factor": "x"}, "balance_factor"),
        ("ip_hash", {"trusted_proxies": "10.0.0.0/8"}, "trusted_proxies"),
        ("ip_hash", {"trusted_proxies": ["10.0.0.300/8"]}, "trusted_proxies"),
        ("ip_hash", {"points_per_weight": 0}, "points_per_weight"),
        ("url_hash", {"include_query": "yes"}, "include_query"),
        ("least_time", {"metric": "latency"}, "metric"),
        ("least_time", {"half_life": 0}, "half_life"),
        ("least_time", {"choices": 1}, "choices"),
        ("first", {}, "max_in_flight"),
        ("first", {"max_in_flight": 0}, "max_in_flight"),
        ("sticky_round_robin", {"key": "session"}, "key"),
        ("sticky_round_robin", {"cookie": "bad name"}, "cookie"),
        ("sticky_round_robin", {"secret": "short"}, "secret"),
        ("sticky_round_robin", {"path": "no-slash"}, "path"),
        ("sticky_round_robin", {"same_site": "sometimes"}, "same_site"),
        ("sticky_round_robin", {"same_site": "None", "secure": False}, "same_site"),
        ("sticky_round_robin", {"secure": "yes"}, "secure"),
        ("sticky_round_robin", {"max_age": -1}, "max_age"),
        ("sticky_round_robin", {"key": "ip", "cookie": "x"}, "cookie"),
        ("sticky_round_robin", {"max_clients": 10}, "max_clients"),
    ],
)
def test_option_errors_name_the_option(name, options, path):
    error = option_error(name, options)
    assert error.path == path
    assert str(error).startswith(f"{path}: ")


# -- round robin -------------------------------------------------------------------


def test_round_robin_starts_at_a_random_offset():
    group = [member(i) for i in range(10)]
    firsts = set()
    for seed in range(30):
        strategy = create("round_robin", seed=seed)
        strategy.rebuild(group)
        firsts.add(strategy.pick(RequestContext()))
    assert len(firsts) > 3


def test_round_robin_keeps_its_place_across_rebuilds():
    group = [member(i) for i in range(4)]
    strategy = create("round_robin")
    strategy.rebuild(group)
    first = strategy.pick(RequestContext())
    following = strategy.pick(RequestContext())
    strategy.rebuild([m for m in group if m is not first])
    assert strategy.pick(RequestContext()) is group[(group.index(following) + 1) % 4]


# -- weighted round robin -----------------------------------------------------------------


def test_weighted_round_robin_follows_weight_changes_through_the_pool():
    clock = Clock()
    strategy = create("weighted_round_robin", clock=clock)
    pool = BackendPool(strategy, clock=clock)
    a, b = pool.add(Backend("http", "a", 80, weight=1)), pool.add(Backend("http", "b", 80, weight=1))
    pool.set_weight("b:80", 3)
    # The disturbed cycle runs out first, then the proportions are exact.
    for _ in range(4):
        pool.pick(RequestContext())
    counts = Counter(pool.pick(RequestContext()) for _ in range(40))
    assert counts == {a: 10, b: 30}


def test_weighted_round_robin_newcomer_gets_no_burst():
    strategy = create("weighted_round_robin")
    group = [member(i, 4) for i in range(3)]
    strategy.rebuild(group)
    for _ in range(6):  # half a cycle
        strategy.pick(RequestContext())
    newcomer = member(3, 4)
    strategy.rebuild(group + [newcomer])
    sequence = [strategy.pick(RequestContext()) for _ in range(8)]
    assert sequence.count(newcomer) <= 3


# -- sticky ------------------------------------------------------------------------------


def set_cookies(request):
    return request.responseHeaders.getRawHeaders(b"set-cookie", [])


def test_sticky_sets_a_signed_opaque_cookie_once():
    strategy = create("sticky_round_robin", {"secret": "a fleet-wide secret!"})
    group = [member(i) for i in range(3)]
    strategy.rebuild(group)
    context = RequestContext(client_address="192.0.2.1")
    chosen = strategy.pick(context)
    request = DummyRequest([b""])
    strategy.response_started(context, chosen, request)
    [header] = set_cookies(request)
    value = header.split(b";")[0].split(b"=", 1)[1]
    assert header == b"heimdall_sticky=" + value + b"; Path=/; HttpOnly; SameSite=Lax"
    assert b"10.0.0" not in value and b"8000" not in value
    assert value == cookie_token(b"a fleet-wide secret!", chosen.id)
    # The client comes back with it: same backend, no new cookie.
    back = RequestContext(client_address="192.0.2.99", cookies={b"heimdall_sticky": value})
    for _ in range(5):
        assert strategy.pick(back) is chosen
    again = DummyRequest([b""])
    strategy.response_started(back, chosen, again)
    assert set_cookies(again) == []


def test_sticky_cookie_attributes_are_configurable():
    strategy = create(
        "sticky_round_robin",
        {
            "cookie": "lb",
            "max_age": 3600,
            "path": "/app",
            "secure": "auto",
            "http_only": False,
            "same_site": "strict",
        },
    )
    m = member(0)
    strategy.rebuild([m])
    request = DummyRequest([b""])
    strategy.response_started(RequestContext(secure=True), m, request)
    [header] = set_cookies(request)
    assert header.startswith(b"lb=")
    assert header.endswith(b"; Path=/app; Max-Age=3600; Secure; SameSite=Strict")
    plain = DummyRequest([b""])
    strategy.response_started(RequestContext(secure=False), m, plain)
    assert b"Secure" not in set_cookies(plain)[0]


def test_sticky_forged_or_foreign_cookie_is_ignored_and_replaced():
    ours = create("sticky_round_robin", {"secret": "x" * 20})
    theirs = create("sticky_round_robin", {"secret": "y" * 20})
    group = [member(i) for i in range(4)]
    ours.rebuild(group)
    theirs.rebuild(group)
    forged = cookie_token(b"y" * 20, group[2].id)
    seen = set()
    for _ in range(8):
        context = RequestContext(cookies={b"heimdall_sticky": forged})
        chosen = ours.pick(context)
        seen.add(chosen)
        request = DummyRequest([b""])
        ours.response_started(context, chosen, request)
        assert len(set_cookies(request)) == 1
    assert len(seen) == 4  # round robin, not the forged pin


def test_sticky_secret_shared_by_a_fleet():
    one = create("sticky_round_robin", {"secret": "s" * 32}, seed=1)
    two = create("sticky_round_robin", {"secret": "s" * 32}, seed=2)
    group = [member(i) for i in range(5)]
    one.rebuild(group)
    two.rebuild(group)
    for m in group:
        context = RequestContext(cookies={b"heimdall_sticky": cookie_token(b"s" * 32, m.id)})
        assert one.pick(context) is m and two.pick(context) is m


def test_sticky_default_secret_is_random_per_process_and_hidden():
    one, two = create("sticky_round_robin", seed=1), create("sticky_round_robin", seed=1)
    assert one.secret == two.secret and len(one.secret) == 32
    assert one.secret != random.Random(1).randbytes(32)
    assert repr(one.secret) not in repr(one)


def test_sticky_repins_when_the_backend_goes_and_on_retry():
    clock = Clock()
    strategy = create("sticky_round_robin", clock=clock)
    pool = BackendPool(strategy, clock=clock)
    for i in range(3):
        pool.add(member(i).backend)
    first = pool.pick(RequestContext())
    token = strategy.token(first.id)
    context = RequestContext(cookies={b"heimdall_sticky": token})
    pool.set_health(first.id, Health.DOWN)
    second = pool.pick(context)
    assert second is not first
    request = DummyRequest([b""])
    strategy.response_started(context, second, request)
    assert set_cookies(request)[0].startswith(b"heimdall_sticky=" + strategy.token(second.id))
    # A retry (avoid) of a pinned client goes elsewhere, and is re-pinned there.
    pinned = RequestContext(cookies={b"heimdall_sticky": strategy.token(second.id)})
    retry = pool.pick(pinned, avoid={second})
    assert retry is not second


def test_sticky_by_ip_pins_expire_and_are_bounded():
    clock = Clock()
    strategy = create("sticky_round_robin", {"key": "ip", "max_age": 60, "max_clients": 3}, clock=clock)
    group = [member(i) for i in range(4)]
    strategy.rebuild(group)
    a = RequestContext(client_address="192.0.2.1")
    pinned = strategy.pick(a)
    for _ in range(5):
        clock.advance(50)
        assert strategy.pick(a) is pinned  # kept alive by use
    clock.advance(61)
    strategy.pick(RequestContext(client_address="192.0.2.2"))
    assert strategy.pinned("192.0.2.1") is None  # expired
    for i in range(3, 8):
        strategy.pick(RequestContext(client_address=f"192.0.2.{i}"))
    assert strategy.pinned("192.0.2.3") is None  # least recently seen, evicted
    assert strategy.pinned("192.0.2.7") is not None


def test_sticky_by_ip_behind_trusted_proxies():
    strategy = create("sticky_round_robin", {"key": "ip", "trusted_proxies": ["10.9.0.0/16"]})
    strategy.rebuild([member(i) for i in range(5)])
    picks = {
        strategy.pick(
            RequestContext(client_address=f"10.9.0.{i}", headers=Headers({b"x-forwarded-for": [b"203.0.113.5"]}))
        )
        for i in range(1, 6)
    }
    assert len(picks) == 1


# -- client address and X-Forwarded-For ---------------------------------------------------------

TRUSTED = check_networks(["10.0.0.0/8", "2001:db8::/32"])


def xff(peer, *values):
    return RequestContext(client_address=peer, headers=Headers({b"x-forwarded-for": list(values)}))


@pytest.mark.parametrize(
    "context, expected",
    [
        (xff("203.0.113.9", b"198.51.100.1"), "203.0.113.9"),  # untrusted peer: XFF ignored
        (xff("10.0.0.2", b"198.51.100.1"), "198.51.100.1"),
        (xff("10.0.0.2", b"6.6.6.6, 198.51.100.1, 10.1.1.1"), "198.51.100.1"),  # rightmost untrusted
        (xff("10.0.0.2", b"6.6.6.6", b"198.51.100.1"), "198.51.100.1"),  # repeated headers
        (xff("10.0.0.2", b"10.0.0.7, 10.0.0.8"), "10.0.0.7"),  # all trusted: the leftmost
        (xff("10.0.0.2", b"garbage, 10.0.0.8"), "10.0.0.8"),  # stops at garbage
        (xff("10.0.0.2"), "10.0.0.2"),  # no header
        (xff("::ffff:10.0.0.2", b"[2001:db9::1]:443"), "2001:db9::1"),
        (xff("2001:db8::5", b"198.51.100.1:5555"), "198.51.100.1"),
        (RequestContext(), None),
    ],
)
def test_client_address(context, expected):
    assert client_address(context, TRUSTED) == expected


def test_client_address_without_trusted_proxies_ignores_xff():
    assert client_address(xff("203.0.113.9", b"1.2.3.4"), ()) == "203.0.113.9"
    assert client_address(RequestContext(client_address="::ffff:192.0.2.3"), ()) == "192.0.2.3"


def test_ip_hash_cannot_be_steered_by_a_forged_header():
    strategy = create("ip_hash", {"trusted_proxies": ["10.0.0.0/8"]})
    strategy.rebuild([member(i) for i in range(8)])
    direct = {strategy.pick(xff("203.0.113.9", b"198.51.100.%d" % i)) for i in range(30)}
    assert len(direct) == 1
    proxied = {strategy.pick(xff("10.0.0.2", b"198.51.100.%d" % i)) for i in range(30)}
    assert len(proxied) > 1


# -- hash keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, same, other",
    [
        ("header:X-User", RequestContext(headers=Headers({b"x-user": [b"alice"]})), None),
        ("cookie:sid", RequestContext(cookies={b"sid": b"alice"}), None),
        ("query:user", RequestContext(query=b"a=1&user=alice&b=2"), RequestContext(query=b"user=al%69ce")),
        ("url", RequestContext(path=b"/a/b", query=b"x=1"), RequestContext(path=b"/a/b", query=b"x=2")),
        ("ip", RequestContext(client_address="192.0.2.4"), RequestContext(client_address="::ffff:192.0.2.4")),
    ],
)
def test_hash_keys_route_consistently(key, same, other):
    one, two = create("hash", {"key": key}, seed=1), create("hash", {"key": key}, seed=2)
    group = [member(i) for i in range(16)]
    one.rebuild(group)
    two.rebuild(group)
    chosen = one.pick(same)
    assert all(one.pick(same) is chosen for _ in range(5))
    assert two.pick(same) is chosen  # another process, same answer
    if other is not None:
        assert one.pick(other) is chosen


def test_hash_without_its_key_falls_back_to_round_robin():
    strategy = create("hash", {"key": "header:x-user"})
    group = [member(i) for i in range(4)]
    strategy.rebuild(group)
    picks = Counter(strategy.pick(RequestContext()) for _ in range(8))
    assert picks == {m: 2 for m in group}
    empty = RequestContext(headers=Headers({b"x-user": [b""]}))
    assert len({strategy.pick(empty) for _ in range(4)}) == 4


def test_url_hash_include_query():
    strategy = create("url_hash", {"include_query": True})
    strategy.rebuild([member(i) for i in range(16)])
    picks = {strategy.pick(RequestContext(path=b"/p", query=b"page=%d" % i)) for i in range(20)}
    assert len(picks) > 1


def test_hash_avoid_walks_the_ring_to_a_stable_successor():
    strategy = create("url_hash")
    group = [member(i) for i in range(6)]
    strategy.rebuild(group)
    context = RequestContext(path=b"/x")
    owner = strategy.pick(context)
    successor = strategy.pick(context, avoid={owner})
    assert successor is not owner
    # The successor is where the key goes if the owner leaves.
    strategy.rebuild([m for m in group if m is not owner])
    assert strategy.pick(context) is successor


def test_bounded_load_uses_an_attached_total():
    strategy = create("url_hash", {"balance_factor": 1.5})
    group = [member(i) for i in range(4)]
    strategy.rebuild(group)
    context = RequestContext(path=b"/x")
    owner = strategy.pick(context)
    owner.in_flight = 3
    assert strategy.pick(context) is not owner  # the scan: 3 >= ceil(1.5 * 4 / 4)
    strategy.attach_in_flight_total(lambda: 12)
    assert strategy.pick(context) is owner  # 3 < ceil(1.5 * 13 / 4) = 5
    strategy.attach_in_flight_total(lambda: 4)
    assert strategy.pick(context) is not owner  # 3 >= ceil(1.5 * 5 / 4) = 2


# -- least connections ---------------------------------------------------------------------------


def test_least_connections_picks_lowest_per_weight():
    strategy = create("least_connections")
    a, b, c = member(0, 1, in_flight=2), member(1, 4, in_flight=7), member(2, 1, in_flight=3)
    strategy.rebuild([a, b, c])
    # (2+1)/1 = 3, (7+1)/4 = 2, (3+1)/1 = 4
    assert strategy.pick(RequestContext()) is b
    assert strategy.pick(RequestContext(), avoid={b}) is a


def test_least_connections_breaks_ties_at_random():
    strategy = create("least_connections")
    group = [member(i, in_flight=1) for i in range(40)]
    group[7].in_flight = group[30].in_flight = 0
    strategy.rebuild(group)
    assert {strategy.pick(RequestContext()) for _ in range(60)} == {group[7], group[30]}
    for m in group:
        m.in_flight = 0
    assert len({strategy.pick(RequestContext()) for _ in range(400)}) == 40


@pytest.mark.parametrize("ties", [1, 2, 3, 5, 10, 40])
def test_lowest_score_is_uniform_among_ties(ties):
    scores = [5] * 40
    tied = list(range(0, 40, 40 // ties))[:ties]
    for i in tied:
        scores[i] = 1
    rng = random.Random(3)
    counts = Counter(lowest_score(list(scores), list(range(40)), rng) for _ in range(400 * ties))
    assert set(counts) == set(tied)
    assert min(counts.values()) > 250


# -- least time --------------------------------------------------------------------------------------


def least_time_pool(options=None):
    clock = Clock()
    strategy = create("least_time", options, clock=clock)
    pool = BackendPool(strategy, clock=clock)
    fast, slow = pool.add(Backend("http", "fast", 80)), pool.add(Backend("http", "slow", 80))
    return clock, strategy, pool, fast, slow


def serve(pool, clock, member, seconds):
    lease = pool.lease(member)
    lease.release(Outcome(status=200, ttfb=seconds, ttlb=seconds * 2))


@pytest.mark.parametrize(
    "options, fast_share",
    [({}, 1.0), ({"choices": 2}, 0.7), ({"metric": "ttlb"}, 1.0)],
)
@pytest.mark.parametrize("busy", [True, False])
def test_least_time_avoids_a_slow_backend_but_tries_it_again(options, fast_share, busy):
    """
    After one slow response a backend gets (almost) nothing; while it gets
    no traffic its average decays toward the others' and it is tried again:
    soon when the others are busy, after ten half-lives (50 s) when the
    pool is idle.
    """
    clock, _, pool, fast, slow = least_time_pool(options)
    serve(pool, clock, fast, 0.010)
    serve(pool, clock, slow, 2.0)  # one slow response
    clock.advance(0.5)
    picks = Counter(pool.pick(RequestContext()) for _ in range(200))
    assert picks[fast] >= 200 * fast_share
    if busy:
        pool.lease(fast)  # one long request in flight on the fast backend
    for _ in range(120):
        clock.advance(1)
        serve(pool, clock, fast, 0.010)
        if pool.pick(RequestContext()) is slow:
            break
    else:
        pytest.fail("the slow backend was starved")
    if fast_share == 1.0:
        assert (30 if busy else 50) < clock.seconds() < (45 if busy else 60)


def test_least_time_weighs_load_and_weight():
    clock, strategy, pool, fast, slow = least_time_pool()
    serve(pool, clock, fast, 0.010)
    serve(pool, clock, slow, 0.030)
    fast.in_flight = 3  # 0.010 * 4 = 0.04 > 0.030 * 1
    assert strategy.pick(RequestContext()) is slow
    fast.in_flight = 1  # 0.02 < 0.03
    assert strategy.pick(RequestContext()) is fast


def test_least_time_unmeasured_member_counts_as_the_mean():
    clock, strategy, pool, fast, slow = least_time_pool()
    serve(pool, clock, fast, 0.010)
    serve(pool, clock, slow, 0.030)
    new = pool.add(Backend("http", "new", 80))
    assert strategy.estimates()[-1] == pytest.approx(0.020)
    fast.in_flight = 2
    assert strategy.pick(RequestContext()) is new


def test_least_time_with_nothing_measured_is_least_connections():
    _, strategy, _, fast, slow = least_time_pool()
    fast.in_flight = 1
    assert {strategy.pick(RequestContext()) for _ in range(10)} == {slow}


# -- power of two, random, first ------------------------------------------------------------------------


def test_power_of_two_prefers_the_less_loaded():
    strategy = create("power_of_two")
    group = [member(i, in_flight=5) for i in range(2)]
    group[1].in_flight = 0
    strategy.rebuild(group)
    counts = Counter(strategy.pick(RequestContext()) for _ in range(1000))
    # Only a draw of the busy one twice (1/4) picks it.
    assert 180 < counts[group[0]] < 320


@pytest.mark.parametrize("name", ["power_of_two", "random"])
def test_idle_pool_is_shared_by_weight(name):
    strategy = create(name)
    group = [member(0, 1), member(1, 3)]
    strategy.rebuild(group)
    counts = Counter(strategy.pick(RequestContext()) for _ in range(4000))
    assert 850 < counts[group[0]] < 1150


def test_first_fills_backends_in_order():
    strategy = create("first", {"max_in_flight": 2})
    group = [member(i) for i in range(3)]
    strategy.rebuild(group)
    taken = []
    for _ in range(6):
        chosen = strategy.pick(RequestContext())
        chosen.in_flight += 1  # as the pool's lease would
        taken.append(group.index(chosen))
    assert taken == [0, 0, 1, 1, 2, 2]
    # Everyone full: the least loaded.
    group[1].in_flight = 1
    assert strategy.pick(RequestContext()) is group[1]
    group[0].in_flight = 0
    assert strategy.pick(RequestContext(), avoid={group[0]}) is group[1]


def test_round_robin_offset_is_random_even_when_members_arrive_one_by_one():
    import random as _random

    from heimdall.pool.context import RequestContext
    from heimdall.pool.pool import BackendPool
    from heimdall.pool.values import Backend
    from heimdall.strategies.round_robin import RoundRobin
    from twisted.internet.task import Clock

    firsts = set()
    for seed in range(20):
        pool = BackendPool(RoundRobin(_random.Random(seed)), clock=Clock())
        for port in (1, 2, 3):
            pool.add(Backend.from_url(f"http://127.0.0.1:{port}"))
        firsts.add(pool.pick(RequestContext()).id)
    assert len(firsts) == 3


def test_least_connections_tracked_buckets_match_a_scan():
    """Inside a pool, least_connections keeps load buckets (O(1) picks);
    after any sequence of leases and releases it picks among exactly the
    members a full scan would."""
    import random as _random

    from heimdall.pool.context import RequestContext
    from heimdall.pool.pool import BackendPool
    from heimdall.pool.values import Backend, Outcome
    from heimdall.strategies.least_connections import LeastConnections
    from twisted.internet.task import Clock

    rng = _random.Random(7)
    strategy = LeastConnections(_random.Random(1))
    pool = BackendPool(strategy, clock=Clock())
    for port in range(1, 21):
        pool.add(Backend.from_url(f"http://127.0.0.1:{port}"))
    leases = []
    for step in range(2000):
        if leases and rng.random() < 0.45:
            leases.pop(rng.randrange(len(leases))).release(Outcome(status=200))
        else:
            leases.append(pool.lease(pool.pick(RequestContext())))
        lowest = min(m.in_flight for m in pool.members())
        picked = pool.pick(RequestContext())
        assert picked.in_flight == lowest, step
    assert strategy._tracked
    avoid = [m for m in pool.members() if m.in_flight == min(x.in_flight for x in pool.members())]
    picked = pool.pick(RequestContext(), avoid)
    assert picked not in avoid
