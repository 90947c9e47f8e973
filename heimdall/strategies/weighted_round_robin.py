"""
Weighted round robin, smooth: earliest deadline first (as Traefik's wrr).

Each member's k-th pick of a cycle is due at virtual time k / weight; every
pick takes the earliest due member (a heap: O(log n)).  Over one cycle of
sum(weights) picks, a member of weight w is picked exactly w times: its w
deadlines are the ones at or before 1, and there are exactly sum(weights)
of those.  Picks are interleaved (weights 5, 1, 1 give a a b a c a a, not
a a a a a b c), like nginx's smooth WRR, without its O(n) scan.

Deadlines are computed as C{served / weight} rather than accumulated, so
equal fractions compare equal (ties go to a fixed, randomly rotated rank)
and the cycle proportions are exact.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush, heapreplace
from typing import Any, Collection, Dict, List, Optional

import attrs
from zope.interface import implementer

from heimdall.errors import NoBackendAvailable
from heimdall.interfaces import IStrategy
from heimdall.strategies._base import StrategyFactory


@attrs.define(eq=False)
class _Slot:
    member: Any
    weight: int
    served: int  # picks in the current cycle


@implementer(IStrategy)
@attrs.define(eq=False)
class WeightedRoundRobin:
    random: Any
    _members: List = attrs.field(factory=list)
    _weights: List[int] = attrs.field(factory=list)
    _slots: Dict[Any, _Slot] = attrs.field(factory=dict)
    # Entries (deadline, rank, slot); ranks are unique, so slots are never compared.
    _heap: List = attrs.field(factory=list)
    _offset: Optional[int] = None
    # Virtual time: the deadline of the last pick, in cycles.
    _now: float = 0.0

    def rebuild(self, members) -> None:
        members = list(members)
        weights = [m.weight for m in members]
        if members == self._members and weights == self._weights:
            return
        if self._offset is None and members:
            # A random rotation of the tie-break order, taken once, so a
            # fleet started together does not begin on the same backend.
            self._offset = self.random.randrange(len(members))
        slots = {}
        for member, weight in zip(members, weights):
            slot = self._slots.get(member)
            if slot is None or slot.weight != weight:
                # A newcomer (or a new weight) joins at the current virtual
                # time, so it does not get a burst for the part of the cycle
                # it missed.
                slot = _Slot(member, weight, int(self._now * weight))
            slots[member] = slot
        n = len(members)
        offset = self._offset or 0
        self._heap = [
            ((slots[m].served + 1) / slots[m].weight, (i - offset) % n, slots[m])
            for i, m in enumerate(members)
        ]
        heapify(self._heap)
        self._members, self._weights, self._slots = members, weights, slots

    def pick(self, context, avoid: Collection = ()):
        heap = self._heap
        if not heap:
            raise NoBackendAvailable("no eligible backend")
        skipped = []
        if avoid:
            while heap and heap[0][2].member in avoid:
                skipped.append(heappop(heap))
            if not heap:  # every member is avoided: take the earliest anyway
                heap.extend(skipped)
                heapify(heap)
                skipped = []
        deadline, rank, slot = heap[0]
        slot.served += 1
        heapreplace(heap, ((slot.served + 1) / slot.weight, rank, slot))
        for entry in skipped:
            heappush(heap, entry)
        self._now = deadline
        if heap[0][0] > 1.0:
            self._next_cycle()
        return slot.member

    def _next_cycle(self) -> None:
        # Everyone has had its share of this cycle: start the next one, so
        # deadlines stay small and their float division stays exact.
        for entry in self._heap:
            entry[2].served -= entry[2].weight
        self._heap = [((s.served + 1) / s.weight, rank, s) for _, rank, s in self._heap]
        heapify(self._heap)
        self._now -= 1.0


def _build(options, random, clock):
    options.done()
    return WeightedRoundRobin(random)


factory = StrategyFactory(
    name="weighted_round_robin",
    description="Each backend in proportion to its weight, interleaved; for backends of unequal capacity.",
    build=_build,
)
