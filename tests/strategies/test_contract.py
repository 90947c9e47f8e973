"""
The contract every registered strategy keeps, checked on each of them
(heimdall's own and any installed through the entry point).
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from heimdall.pool.context import RequestContext
from heimdall.errors import NoBackendAvailable, StrategyOptionError
from heimdall.interfaces import IResponseObserver, IStrategy, IStrategyFactory
from heimdall.pool.pool import BackendPool, Member
from heimdall.pool.values import AdminState, Backend, Health, Outcome
from heimdall.strategies.registry import default_registry

#: Strategies that cannot be built without options.
REQUIRED_OPTIONS = {
    "first": {"max_in_flight": 2},
    "hash": {"key": "header:x-user"},
}

NAMES = default_registry().names()


def create(name, seed=1, clock=None):
    return default_registry().create(
        name, REQUIRED_OPTIONS.get(name, {}), random.Random(seed), clock if clock is not None else Clock()
    )


def backend(i, weight=1):
    return Backend("http", f"10.0.{i // 250}.{i % 250 + 1}", 8000, weight=weight)


def members(count, weights=None):
    weights = weights or [1] * count
    return [Member(backend(i, w), added_at=0.0) for i, w in enumerate(weights)]


def contexts(count=60):
    """
    Requests that vary in everything a strategy may key on, some with
    nothing at all.
    """
    result = [RequestContext()]
    for i in range(count - 1):
        result.append(
            RequestContext(
                client_address=f"192.0.2.{i % 40}",
                path=b"/page/%d" % (i % 13),
                query=b"id=%d" % (i % 5),
                headers=Headers({b"x-user": [b"user%d" % (i % 17)]}),
                cookies={b"session": b"s%d" % (i % 11)},
            )
        )
    return result


def test_every_builtin_is_registered():
    assert {
        "round_robin",
        "weighted_round_robin",
        "sticky_round_robin",
        "ip_hash",
        "url_hash",
        "hash",
        "least_connections",
        "least_time",
        "random",
        "power_of_two",
        "first",
    } <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_interfaces_verify(name):
    factory = default_registry().get(name)
    assert verifyObject(IStrategyFactory, factory)
    assert factory.name == name
    assert isinstance(factory.description, str) and factory.description
    strategy = create(name)
    assert verifyObject(IStrategy, strategy)
    if IResponseObserver.providedBy(strategy):
        assert verifyObject(IResponseObserver, strategy)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_named(name):
    options = dict(REQUIRED_OPTIONS.get(name, {}), no_such_option=1)
    with pytest.raises(StrategyOptionError) as caught:
        default_registry().create(name, options, random.Random(1), Clock())
    assert caught.value.path == "no_such_option"


@pytest.mark.parametrize("name", NAMES)
def test_empty_set_raises(name):
    strategy = create(name)
    strategy.rebuild([])
    for context in contexts(5):
        with pytest.raises(NoBackendAvailable):
            strategy.pick(context)
    # Emptied after having members, too.
    strategy.rebuild(members(3))
    strategy.pick(RequestContext())
    strategy.rebuild([])
    with pytest.raises(NoBackendAvailable):
        strategy.pick(RequestContext(), avoid=())


@pytest.mark.parametrize("name", NAMES)
def test_ineligible_never_picked(name):
    """
    Through a real pool: down, weight 0, draining and maintenance members
    never get a request, however the requests vary and load comes and goes.
    """
    clock = Clock()
    pool = BackendPool(create(name, clock=clock), clock=clock)
    for i in range(8):
        pool.add(backend(i, weight=1 + i % 3))
    pool.set_health(backend(1).id, Health.DOWN)
    pool.set_weight(backend(2).id, 0)
    pool.set_admin(backend(3).id, AdminState.DRAINING)
    pool.set_admin(backend(4).id, AdminState.MAINTENANCE)
    pool.remove(backend(5).id)
    excluded = {backend(i).id for i in range(1, 6)}
    leases = []
    for round_ in range(3):
        for context in contexts():
            member = pool.pick(context)
            assert member.id not in excluded
            assert member in pool.eligible()
            leases.append(pool.lease(member))
            clock.advance(0.01)
            if len(leases) > 5:
                leases.pop(0).release(Outcome(status=200, ttfb=0.01 * (1 + len(leases) % 4), ttlb=0.05))
    assert {m.id for m in pool.eligible()} == {backend(i).id for i in (0, 6, 7)}


@pytest.mark.parametrize("name", NAMES)
def test_all_ineligible_raises_through_the_pool(name):
    clock = Clock()
    pool = BackendPool(create(name, clock=clock), clock=clock)
    for i in range(3):
        pool.add(backend(i))
        pool.set_health(backend(i).id, Health.DOWN)
    with pytest.raises(NoBackendAvailable):
        pool.pick(RequestContext(client_address="192.0.2.1"))
    with pytest.raises(NoBackendAvailable):
        pool.strategy.pick(RequestContext(client_address="192.0.2.1"))


@pytest.mark.parametrize("name", NAMES)
def test_avoid_is_honoured_when_possible(name):
    strategy = create(name)
    group = members(5, [1, 2, 3, 1, 2])
    strategy.rebuild(group)
    for i, context in enumerate(contexts()):
        allowed = group[i % 5]
        avoid = [m for m in group if m is not allowed]
        assert strategy.pick(context, avoid) is allowed
        # Every member avoided: still one of them, never none.
        assert strategy.pick(context, group) in group
        # Avoiding one member: never that one.
        assert strategy.pick(context, {group[i % 5]}) is not group[i % 5]


@pytest.mark.parametrize("name", NAMES)
def test_rebuild_is_idempotent(name):
    """
    A strategy rebuilt twice (or three times) with the same members picks
    exactly as one rebuilt once.
    """
    group = members(6, [1, 1, 2, 3, 1, 5])
    for member, load in zip(group, [0, 1, 2, 0, 3, 1]):
        member.in_flight = load
    once, twice = create(name, seed=3), create(name, seed=3)
    once.rebuild(group)
    twice.rebuild(group)
    twice.rebuild(list(group))
    twice.rebuild(tuple(group))
    for context in contexts() * 2:
        assert once.pick(context) is twice.pick(context)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_random_gives_deterministic_picks(name):
    def run(seed):
        clock = Clock()
        pool = BackendPool(create(name, seed=seed, clock=clock), clock=clock)
        for i in range(10):
            pool.add(backend(i, weight=1 + i % 4))
        picked, leases = [], []
        for context in contexts(100):
            member = pool.pick(context)
            picked.append(member.id)
            leases.append(pool.lease(member))
            clock.advance(0.003)
            if len(leases) > 7:
                leases.pop(len(leases) // 2).release(Outcome(status=200, ttfb=0.002 * len(picked) % 0.05))
        return picked

    assert run(11) == run(11)
    assert run(12) == run(12)


@pytest.mark.parametrize("name", NAMES)
def test_picks_only_from_the_last_rebuild(name):
    strategy = create(name)
    old, new = members(4), members(7)[4:]
    strategy.rebuild(old)
    for context in contexts(20):
        strategy.pick(context)
    strategy.rebuild(new)
    for context in contexts():
        assert strategy.pick(context) in new


@pytest.mark.parametrize("name", NAMES)
def test_does_not_mutate_members(name):
    group = members(4, [1, 2, 1, 3])
    for i, member in enumerate(group):
        member.in_flight = i
        member.ttfb_avg = 0.01 * (i + 1)
        member.last_used_at = 0.0
    before = [attr_values(m) for m in group]
    strategy = create(name)
    strategy.rebuild(group)
    for context in contexts():
        strategy.pick(context, avoid={group[0]})
    assert [attr_values(m) for m in group] == before


def attr_values(member):
    return (
        member.backend,
        member.admin,
        member.health,
        member.in_flight,
        member.requests_total,
        member.ttfb_avg,
        member.ttlb_avg,
        member.last_used_at,
    )
