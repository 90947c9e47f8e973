"""
Waiting for a backend to drain: the manager removes a server only once its
in-flight requests are done (or a timeout passed).
"""

from __future__ import annotations

from typing import Any, Callable, List

from twisted.internet.defer import Deferred, succeed

from heimdall.pool.pool import BackendPool, Member

__all__ = ["wait_drained"]


def wait_drained(pool: BackendPool, member: Member, timeout: float, clock: Any) -> Deferred:
    """
    Fires with True once C{member} has no request in flight, or with False
    after C{timeout} seconds (on C{clock}, an L{IReactorTime}).
    Event-driven: it listens to C{pool}'s lease releases rather than
    polling.  Cancelling it stops the wait (and the timer).
    """
    if member.in_flight <= 0:
        return succeed(True)
    unsubscribe: List[Callable[[], None]] = []
    timer: List[Any] = []

    def finish(drained: bool) -> None:
        if waiting.called:
            return
        if timer and timer[0].active():
            timer[0].cancel()
        # Unsubscribing from inside the pool's subscriber loop would make
        # it skip the next subscriber: do it on the next turn.
        if unsubscribe:
            clock.callLater(0, unsubscribe.pop())
        waiting.callback(drained)

    def cancel(_: Deferred) -> None:
        if timer and timer[0].active():
            timer[0].cancel()
        if unsubscribe:
            unsubscribe.pop()()

    waiting: Deferred = Deferred(cancel)

    def released(released_member: Member, outcome: Any) -> None:
        if released_member is member and member.in_flight <= 0:
            finish(True)

    unsubscribe.append(pool.subscribe_outcomes(released))
    timer.append(clock.callLater(timeout, finish, False))
    return waiting
