"""
First (HAProxy's C{balance first}): the first member, in the pool's order,
with fewer than C{max_in_flight} requests in flight.

It packs load onto as few backends as possible, so the others can be
scaled down or kept cold.  When every member is full it takes the least
loaded (earliest on a tie).  Weights only decide eligibility (weight 0
means no requests), as in HAProxy.

O(k) per pick, k being the number of full members before the first with
room: small while the pool is sized so that only the last members idle.
"""

from __future__ import annotations

from typing import Collection, List

import attrs
from zope.interface import implementer

from heimdall.errors import NoBackendAvailable, StrategyOptionError
from heimdall.interfaces import IStrategy
from heimdall.strategies._base import StrategyFactory, check_int


@implementer(IStrategy)
@attrs.define(eq=False)
class First:
    max_in_flight: int
    _members: List = attrs.field(factory=list)

    def rebuild(self, members) -> None:
        self._members = list(members)

    def pick(self, context, avoid: Collection = ()):
        members = self._members
        if not members:
            raise NoBackendAvailable("no eligible backend")
        limit = self.max_in_flight
        for member in members:
            if member.in_flight < limit and not (avoid and member in avoid):
                return member
        candidates = [m for m in members if m not in avoid] or members
        return min(candidates, key=lambda m: m.in_flight)


def _build(options, random, clock):
    if "max_in_flight" not in options:
        raise StrategyOptionError(
            "max_in_flight", "required: how many requests a backend takes before the next one is used"
        )
    max_in_flight = options.take("max_in_flight", None, check_int(1))
    options.done()
    return First(max_in_flight)


factory = StrategyFactory(
    name="first",
    description="Fill the first backend up to max_in_flight, then the next; to keep few backends busy.",
    build=_build,
)
