"""
The pool's tiers in memory: backups get nothing while a primary is
eligible and everything when none is; members at their max_connections
are hidden from the strategy until a slot frees; BackendsBusy versus
NoBackendAvailable.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from heimdall.errors import BackendsBusy, NoBackendAvailable
from heimdall.pool.context import RequestContext
from heimdall.pool.pool import BackendPool
from heimdall.pool.values import AdminState, Backend, EventKind, Health, Outcome
from heimdall.strategies.registry import default_registry


def pool_of(*specs, strategy="round_robin"):
    clock = Clock()
    pool = BackendPool(default_registry().create(strategy, {}, random.Random(0), clock), clock=clock)
    for port, options in specs:
        pool.add(Backend.from_url(f"http://127.0.0.1:{port}"), **options)
    return pool


def picks(pool, n=6):
    return [pool.pick(RequestContext()).backend.port for _ in range(n)]


def test_backups_wait_until_no_primary_is_eligible_and_give_back():
    pool = pool_of((1, {}), (2, {}), (3, {"backup": True}))
    events = []
    pool.subscribe(events.append)
    assert set(picks(pool)) == {1, 2}
    pool.set_health("127.0.0.1:1", Health.DOWN)
    assert set(picks(pool)) == {2}
    pool.set_admin("127.0.0.1:2", AdminState.MAINTENANCE)
    assert set(picks(pool)) == {3}
    assert not pool.in_panic and pool.get("127.0.0.1:3").health_details()["backup"] is True
    pool.set_health("127.0.0.1:1", Health.UP)
    assert set(picks(pool)) == {1}
    pool.set_backup("127.0.0.1:3", False)
    assert set(picks(pool)) == {1, 3}
    assert events[-1].kind is EventKind.BACKUP and events[-1].detail == "primary"


def test_only_backups_left_down_means_no_backend():
    pool = pool_of((1, {}), (2, {"backup": True}))
    pool.set_health("127.0.0.1:1", Health.DOWN)
    pool.set_health("127.0.0.1:2", Health.DOWN)
    with pytest.raises(NoBackendAvailable) as raised:
        pool.pick(RequestContext())
    assert not isinstance(raised.value, BackendsBusy)


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections", "random"])
def test_full_members_are_hidden_from_the_strategy_until_a_slot_frees(strategy):
    pool = pool_of((1, {"max_connections": 1}), (2, {"max_connections": 2}), strategy=strategy)
    leases = []
    for _ in range(3):
        member = pool.pick(RequestContext())
        leases.append(pool.lease(member))
    assert sorted(lease.member.backend.port for lease in leases) == [1, 2, 2]
    assert not pool.has_free_slot
    with pytest.raises(BackendsBusy):
        pool.pick(RequestContext())
    assert pool.in_flight_total() == 0  # nothing routable is in flight
    freed = next(lease for lease in leases if lease.member.backend.port == 1)
    freed.release(Outcome(status=200))
    assert pool.has_free_slot and picks(pool, 3) == [1, 1, 1]
    # A backup never takes the overflow of full primaries: they queue.
    pool.add(Backend.from_url("http://127.0.0.1:3"), backup=True)
    pool.lease(pool.pick(RequestContext()))
    with pytest.raises(BackendsBusy):
        pool.pick(RequestContext())
    pool.set_max_connections("127.0.0.1:1", 0)
    assert picks(pool, 2) == [1, 1]
