"""
heimdall.proxy.queue in memory (task.Clock): first come first served, a
bound, a timeout, dispatch when the pool frees a slot, cancel.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from heimdall.pool.context import RequestContext
from heimdall.pool.pool import BackendPool
from heimdall.pool.values import Backend, Outcome
from heimdall.proxy.queue import RequestQueue
from heimdall.strategies.registry import default_registry


class Waiter:
    def __init__(self, name, pool, log):
        self.name, self.pool, self.log = name, pool, log
        self.lease = None

    def queue_dispatched(self):
        self.lease = self.pool.lease(self.pool.pick(RequestContext()))
        self.log.append(("dispatched", self.name))

    def queue_timed_out(self):
        self.log.append(("timed out", self.name))


@pytest.fixture
def setup():
    clock = Clock()
    pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), clock), clock=clock)
    pool.add(Backend.from_url("http://127.0.0.1:1"), max_connections=1)
    queue = RequestQueue(pool, 2, 5.0, clock)
    yield clock, pool, queue
    queue.close()


def test_fifo_dispatch_when_a_slot_frees_and_the_bound(setup):
    clock, pool, queue = setup
    log = []
    first = pool.lease(pool.pick(RequestContext()))
    waiters = [Waiter(n, pool, log) for n in ("a", "b", "c")]
    assert [queue.enqueue(w) for w in waiters] == [True, True, False]
    assert (len(queue), queue.rejected["full"]) == (2, 1)
    clock.advance(1.5)
    first.release(Outcome(status=200))
    assert log == [("dispatched", "a")]
    waiters[0].lease.release(Outcome(status=200))
    assert log == [("dispatched", "a"), ("dispatched", "b")]
    assert queue.queued_total == 2 and len(queue) == 0
    assert sum(queue.wait_counts) == 2 and queue.wait_sum == pytest.approx(3.0)  # both waited 1.5 s


def test_timeout_and_cancel(setup):
    clock, pool, queue = setup
    log = []
    pool.lease(pool.pick(RequestContext()))
    late, gone = Waiter("late", pool, log), Waiter("gone", pool, log)
    queue.enqueue(late)
    queue.enqueue(gone)
    queue.cancel(gone)
    clock.advance(5.0)
    assert log == [("timed out", "late")] and queue.rejected["timeout"] == 1
    assert clock.getDelayedCalls() == []


def test_a_pool_event_that_frees_capacity_dispatches(setup):
    clock, pool, queue = setup
    log = []
    pool.lease(pool.pick(RequestContext()))
    queue.enqueue(Waiter("a", pool, log))
    pool.add(Backend.from_url("http://127.0.0.1:2"))
    assert log == [("dispatched", "a")]
