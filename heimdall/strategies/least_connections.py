"""
Least connections: the member with the lowest (in-flight + 1) / weight,
at random among ties.

In-flight counts change outside the strategy (every lease and release), and
the pool does not tell strategies when, so the only exact answer is a scan:
O(n) per pick, with the loops in C (see L{lowest_score}).  At 1,000
backends prefer C{power_of_two}, which is O(1) and nearly as good.
"""

from __future__ import annotations

from operator import attrgetter, truediv
from typing import Any, Collection, Dict, List

import attrs
from zope.interface import implementer

from heimdall.interfaces import IStrategy
from heimdall.strategies._base import StrategyFactory, lowest_score

_in_flight = attrgetter("in_flight")
_plus_one = (1).__add__


@implementer(IStrategy)
@attrs.define(eq=False)
class LeastConnections:
    random: Any
    _members: List = attrs.field(factory=list)
    _weights: List[int] = attrs.field(factory=list)
    _index: Dict[Any, int] = attrs.field(factory=dict)
    _uniform: bool = True

    def rebuild(self, members) -> None:
        self._members = list(members)
        self._weights = [m.weight for m in self._members]
        self._index = {m: i for i, m in enumerate(self._members)}
        # Equal weights: comparing in-flight counts is the same order.
        self._uniform = len(set(self._weights)) <= 1

    def pick(self, context, avoid: Collection = ()):
        loads = list(map(_in_flight, self._members))
        if not self._uniform:
            loads = list(map(truediv, map(_plus_one, loads), self._weights))
        return lowest_score(loads, self._members, self.random, avoid, self._index)


def _build(options, random, clock):
    options.done()
    return LeastConnections(random)


factory = StrategyFactory(
    name="least_connections",
    description="Fewest requests in flight per unit of weight; for requests of very different lengths.",
    build=_build,
)
