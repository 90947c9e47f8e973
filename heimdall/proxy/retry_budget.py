"""
L{RetryBudget}: how many retries may run at once, as a share of the live
requests (Envoy's retry budget).

Retries protect a client from one bad backend; during a wide outage they
multiply the load on what is left.  A budget bounds them: at most
C{max(min_retry_concurrency, budget_ratio x live requests)} retries in
flight at a time.  With the defaults (20%, at least 3) a quiet heimdall may
always retry a few requests, and a busy one never turns an outage into
more than 1.2 times its load.

How the proxy uses it::

    budget.request_started()            # a client request arrives
    ...
    if budget.can_retry():              # an attempt failed; retry?
        budget.retry_started()
        ... the retry ...
        budget.retry_finished()         # exactly once per retry_started
    ...
    budget.request_finished()           # the client request is over

Alternatively give C{live_requests}, a function returning the number of
live requests (e.g. the sum of the pool's in-flight counts), and skip
C{request_started}/C{request_finished}.
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs
from twisted.internet.interfaces import IReactorTime

__all__ = ["RETRY_ON_CHOICES", "RetryBudget"]

#: The opt-in retries of answered requests (C{retry_on}, idempotent
#: methods only): C{"5xx"}, a 5xx response head; C{"timeout"}, no head in
#: time.  The config's C{retry_on} accepts these.
RETRY_ON_CHOICES = ("5xx", "timeout")


def _ratio(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a number from 0 to 1, not {value!r}")


def _count(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer of at least 0, not {value!r}")


@attrs.define(eq=False)
class RetryBudget:
    """
    @ivar budget_ratio: the share of live requests that may be retries in
        flight (Envoy's C{budget_percent} / 100).
    @ivar min_retry_concurrency: retries always allowed in flight, however
        few requests are live.
    @ivar clock: for C{last_exhausted_at}.
    @ivar live_requests: optional source of the live request count; without
        it, L{request_started}/L{request_finished} keep the count.
    @ivar exhausted_total: how many times L{can_retry} said no.
    """

    budget_ratio: float = attrs.field(default=0.2, validator=_ratio)
    min_retry_concurrency: int = attrs.field(default=3, validator=_count)
    clock: Optional[IReactorTime] = None
    live_requests: Optional[Callable[[], int]] = None
    active_requests: int = attrs.field(init=False, default=0)
    active_retries: int = attrs.field(init=False, default=0)
    retries_total: int = attrs.field(init=False, default=0)
    exhausted_total: int = attrs.field(init=False, default=0)
    last_exhausted_at: Optional[float] = attrs.field(init=False, default=None)

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        if self.active_requests > 0:
            self.active_requests -= 1

    def allowed(self) -> int:
        """
        How many retries may be in flight now.
        """
        live = self.live_requests() if self.live_requests is not None else self.active_requests
        return max(self.min_retry_concurrency, int(self.budget_ratio * live))

    def can_retry(self) -> bool:
        """
        Whether one more retry fits in the budget now.  A "no" is counted
        (C{exhausted_total}, C{last_exhausted_at}).
        """
        if self.active_retries < self.allowed():
            return True
        self.exhausted_total += 1
        if self.clock is not None:
            self.last_exhausted_at = self.clock.seconds()
        return False

    def retry_started(self) -> None:
        self.active_retries += 1
        self.retries_total += 1

    def retry_finished(self) -> None:
        if self.active_retries > 0:
            self.active_retries -= 1
