"""
L{RequestQueue}: where a service's requests wait, first come first served,
while every eligible backend is at its C{max_connections} (HAProxy's
C{maxqueue} and C{timeout queue}).

A request that finds no free slot (the pool raises
L{heimdall.errors.BackendsBusy}) is queued if there is room, else it gets
503 at once; a queued request gets 503 when its C{timeout} passes.  The
queue hears of freed slots from the pool (every released lease, every pool
event) and dispatches its oldest waiters, synchronously, while the pool
has a backend with a free slot.

A waiter provides C{queue_dispatched()} (try again now) and
C{queue_timed_out()}; the queue calls exactly one of them, once, unless the
waiter was L{RequestQueue.cancel}led first.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Tuple

import attrs
from twisted.logger import Logger

__all__ = ["QUEUE_WAIT_BUCKETS", "RequestQueue"]

_log = Logger()

#: Histogram buckets (seconds) of the time spent queued.
QUEUE_WAIT_BUCKETS: Tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)


@attrs.define(eq=False)
class RequestQueue:
    """
    The queue of one service's pool.

    @ivar size: how many requests may wait (at least 1).
    @ivar timeout: how long one may wait, in seconds.
    @ivar rejected: requests refused, by reason (C{"full"}, C{"timeout"}).
    @ivar wait_counts: per L{QUEUE_WAIT_BUCKETS} bucket (not cumulative;
        the last is +Inf), the waits of dispatched requests.
    """

    pool: Any
    size: int
    timeout: float
    clock: Any
    queued_total: int = attrs.field(init=False, default=0)
    rejected: Dict[str, int] = attrs.field(init=False, factory=lambda: {"full": 0, "timeout": 0})
    wait_counts: List[int] = attrs.field(init=False, factory=lambda: [0] * (len(QUEUE_WAIT_BUCKETS) + 1))
    wait_sum: float = attrs.field(init=False, default=0.0)
    # waiter -> (queued at, timer); insertion order is the queue order.
    _waiting: "OrderedDict[Any, Tuple[float, Any]]" = attrs.field(init=False, factory=OrderedDict)
    _dispatching: bool = attrs.field(init=False, default=False)
    _undo: List[Callable[[], None]] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a queue holds at least one request")
        self._undo.append(self.pool.subscribe(lambda event: self.dispatch()))
        self._undo.append(self.pool.subscribe_outcomes(lambda member, outcome: self.dispatch()))

    def resize(self, size: int, timeout: float) -> None:
        """
        New settings (a reload) for requests queued from now on; size 0
        queues none (503 at once), and the waiting ones are still served.
        """
        self.size, self.timeout = size, timeout

    def __len__(self) -> int:
        return len(self._waiting)

    def enqueue(self, waiter: Any) -> bool:
        """
        Queue C{waiter}; False (and nothing queued) if the queue is full.
        """
        if len(self._waiting) >= self.size:
            self.rejected["full"] += 1
            return False
        timer = self.clock.callLater(self.timeout, self._expire, waiter)
        self._waiting[waiter] = (self.clock.seconds(), timer)
        self.queued_total += 1
        return True

    def cancel(self, waiter: Any) -> None:
        """
        Forget C{waiter} (its client went away); nothing is called.
        """
        entry = self._waiting.pop(waiter, None)
        if entry is not None and entry[1].active():
            entry[1].cancel()

    def dispatch(self) -> None:
        """
        Hand free slots to the oldest waiters, while there are both.
        """
        if self._dispatching or not self._waiting:
            return
        self._dispatching = True
        try:
            while self._waiting and self.pool.has_free_slot:
                waiter, (queued_at, timer) = self._waiting.popitem(last=False)
                if timer.active():
                    timer.cancel()
                waited = self.clock.seconds() - queued_at
                self.wait_counts[bisect_left(QUEUE_WAIT_BUCKETS, waited)] += 1
                self.wait_sum += waited
                try:
                    waiter.queue_dispatched()
                except Exception:
                    _log.failure("dispatching a queued request failed")
        finally:
            self._dispatching = False

    def _expire(self, waiter: Any) -> None:
        if self._waiting.pop(waiter, None) is None:
            return
        self.rejected["timeout"] += 1
        waiter.queue_timed_out()

    def close(self) -> None:
        """
        Stop listening to the pool and time out every waiter now.
        """
        while self._undo:
            self._undo.pop()()
        for waiter in list(self._waiting):
            self.cancel(waiter)
            waiter.queue_timed_out()
