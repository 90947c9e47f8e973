"""
Weighted round robin, smooth: earliest deadline first, as Traefik's wrr,
with a phase per member.

Member i's k-th pick of a cycle is due at virtual time (k - 1 + phase_i) /
weight_i, phase_i in (0, 1); every pick takes the earliest due member (a
heap: O(log n)).  Over one cycle of sum(weights) picks, a member of weight
w is picked exactly w times: its w deadlines are the ones before 1, and
there are exactly sum(weights) of those, whatever the phases.

The phases, (rank + 1/2) / n for the members' ranks in a randomly rotated
order, spread the members' picks over the cycle: with Traefik's phase of 1
every light member is due at the end of the cycle, together, and a heavy
member gets long runs.  Here weights 5, 1, 1 give a a a b a a c (nginx's
smooth WRR gives a a b a c a a) with no O(n) scan per pick.

Deadlines are computed from integers (never accumulated), so equal
fractions compare equal and the cycle proportions are exact; the cycle
restarts when every member has had its share, which keeps them small.
"""

from __future__ import annotations

import math
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
    served: int = 0  # picks in the current cycle
    rank: int = 0  # the tie-break; the phase is (2 rank + 1) / scale
    scale: int = 2

    def deadline(self) -> float:
        return (self.scale * self.served + 2 * self.rank + 1) / (self.scale * self.weight)


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
            # A random rotation of the ranks, taken once, so a fleet
            # started together does not begin on the same backend.
            self._offset = self.random.randrange(len(members))
        n = len(members)
        slots = {}
        for i, (member, weight) in enumerate(zip(members, weights)):
            slot = self._slots.get(member)
            fresh = slot is None or slot.weight != weight
            if fresh:
                slot = _Slot(member, weight)
            slot.rank, slot.scale = (i - (self._offset or 0)) % n, 2 * n
            if fresh:
                # A newcomer (or a new weight) joins at the current virtual
                # time: no burst for the part of the cycle it missed.
                phase = (2 * slot.rank + 1) / slot.scale
                slot.served = max(0, math.floor(self._now * weight - phase) + 1)
            slots[member] = slot
        self._heap = [(s.deadline(), s.rank, s) for s in slots.values()]
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
        heapreplace(heap, (slot.deadline(), rank, slot))
        for entry in skipped:
            heappush(heap, entry)
        self._now = deadline
        if heap[0][0] > 1.0:
            self._next_cycle()
        return slot.member

    def _next_cycle(self) -> None:
        # Everyone has had its share of this cycle: start the next one, so
        # the numbers stay small and the divisions exact.
        for _, _, slot in self._heap:
            slot.served -= slot.weight
        self._heap = [(s.deadline(), rank, s) for _, rank, s in self._heap]
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
