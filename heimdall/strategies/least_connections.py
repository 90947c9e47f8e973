"""
Least connections: the member with the lowest (in-flight + 1) / weight,
at random among ties.

In-flight counts change outside the strategy, on every lease and release.
Inside a pool the strategy is told of each change (L{ILoadAware}): with
equal weights it keeps the members in buckets by load, so a pick is O(1)
whatever the pool's size.  With unequal weights, or outside a pool, it
scans the members (O(n), the loops in C; see L{lowest_score}).
"""

from __future__ import annotations

from operator import attrgetter, truediv
from typing import Any, Collection, Dict, List

import attrs
from zope.interface import implementer

from heimdall.errors import NoBackendAvailable
from heimdall.interfaces import ILoadAware, IStrategy
from heimdall.strategies._base import StrategyFactory, lowest_score

_in_flight = attrgetter("in_flight")
_plus_one = (1).__add__


@implementer(IStrategy, ILoadAware)
@attrs.define(eq=False)
class LeastConnections:
    random: Any
    _members: List = attrs.field(factory=list)
    _weights: List[int] = attrs.field(factory=list)
    _index: Dict[Any, int] = attrs.field(factory=dict)
    _uniform: bool = True
    # Equal weights and told of every change: members by load.
    _tracked: bool = False
    _buckets: Dict[int, List] = attrs.field(factory=dict)
    _load: Dict[Any, int] = attrs.field(factory=dict)
    _slot: Dict[Any, int] = attrs.field(factory=dict)
    _min: int = 0

    def rebuild(self, members) -> None:
        self._members = list(members)
        self._weights = [m.weight for m in self._members]
        self._index = {m: i for i, m in enumerate(self._members)}
        # Equal weights: comparing in-flight counts is the same order.
        self._uniform = len(set(self._weights)) <= 1
        self._buckets, self._load, self._slot = {}, {}, {}
        for member in self._members:
            self._place(member, member.in_flight)
        self._min = min(self._buckets) if self._buckets else 0

    # -- buckets -------------------------------------------------------------

    def _place(self, member, load: int) -> None:
        bucket = self._buckets.setdefault(load, [])
        self._slot[member] = len(bucket)
        self._load[member] = load
        bucket.append(member)

    def _unplace(self, member) -> None:
        load = self._load[member]
        bucket = self._buckets[load]
        slot = self._slot[member]
        last = bucket.pop()
        if last is not member:  # swap-remove keeps it O(1)
            bucket[slot] = last
            self._slot[last] = slot
        if not bucket:
            del self._buckets[load]

    def in_flight_changed(self, member) -> None:
        """
        Called by the pool on every lease and release (L{ILoadAware}).
        Loads move by one at a time, so the minimum moves by at most one.
        """
        self._tracked = True
        if member not in self._load:
            return
        self._unplace(member)
        load = member.in_flight
        self._place(member, load)
        if load < self._min:
            self._min = load
        elif self._min not in self._buckets:
            # The last member at the minimum went up by one: it is there.
            self._min += 1

    # -- picking -------------------------------------------------------------

    def pick(self, context, avoid: Collection = ()):
        if not self._members:
            raise NoBackendAvailable("no eligible backend")
        if self._tracked and self._uniform:
            return self._pick_tracked(avoid)
        loads = list(map(_in_flight, self._members))
        if not self._uniform:
            loads = list(map(truediv, map(_plus_one, loads), self._weights))
        return lowest_score(loads, self._members, self.random, avoid, self._index)

    def _pick_tracked(self, avoid: Collection):
        bucket = self._buckets[self._min]
        choice = bucket[int(self.random.random() * len(bucket))]
        if not avoid or choice not in avoid:
            return choice
        # Rare (retries): the least loaded member not avoided, scanning
        # the loads upwards.
        for load in sorted(self._buckets):
            candidates = [m for m in self._buckets[load] if m not in avoid]
            if candidates:
                return candidates[int(self.random.random() * len(candidates))]
        return choice


def _build(options, random, clock):
    options.done()
    return LeastConnections(random)


factory = StrategyFactory(
    name="least_connections",
    description="Fewest requests in flight per unit of weight; for requests of very different lengths.",
    build=_build,
)
