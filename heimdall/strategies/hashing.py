"""
Stable hashing and a consistent hash ring.

The hash must give the same answer in every process and every run, so a
fleet of heimdalls (or one heimdall after a restart) sends a key to the same
backend: Python's C{hash()} is salted per process, so we use an 8-byte
BLAKE2b digest from the standard library.

The ring places virtual nodes ("points") for each member, in proportion to
its weight, at the stable hashes of C{"<backend id>#<i>"}.  A key goes to
the owner of the first point at or after the key's hash (wrapping).
Because a member's points depend only on its id and its point count, adding
or removing a member moves only the keys that land on its points (about
1/(N+1) of them), the property consistent hashing exists for.

The ring is updated in place, not rebuilt, because the pool calls
C{rebuild} on every health flap and once per backend added at start-up
(1,000 backends are 100,000 points):

  - a member that leaves keeps its points, marked dead; a key that lands
    on a dead point goes on clockwise to the next live one, which is
    exactly where it would go if the points were gone.  A member that comes
    back (the usual flap) is marked live again, in O(1).  Dead points are
    swept out when they outnumber the live ones.
  - a newcomer's points are sorted and merged in: Timsort merges two
    sorted runs in one linear pass in C.
  - the ring is one sorted list of ints, C{hash << SLOT_BITS | slot}, so a
    lookup is one C{bisect} and there are no parallel lists to rebuild.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from typing import Any, Dict, Iterator, List, Optional, Sequence

import attrs

#: Ring points per unit of weight.  With ~100 points a member's share of
#: the keys is within about 10% of its fair share (ketama uses 160).
DEFAULT_POINTS_PER_WEIGHT = 100

#: The most points a ring holds.  Beyond it every member's count is halved
#: (as often as needed), so 1,000 heavy backends do not make a ring of
#: 100 million points.  A halving keeps the first half of each member's
#: points, so it only moves the keys of the dropped points.
MAX_POINTS = 1 << 17

#: Low bits of a ring entry that hold the owner's slot.
SLOT_BITS = 24
_SLOT_MASK = (1 << SLOT_BITS) - 1


def stable_hash(data: bytes) -> int:
    """
    A 64-bit hash of C{data} that is the same in every process and run.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _divisor(total_weight: int, points_per_weight: int, max_points: int) -> int:
    divisor = 1
    while total_weight * points_per_weight > max_points * divisor:
        divisor *= 2
    return divisor


def point_counts(weights: Sequence[int], points_per_weight: int, max_points: int = MAX_POINTS) -> List[int]:
    """
    How many ring points each of C{weights} gets: C{weight * points_per_weight},
    halved as a whole until the ring fits in C{max_points}, at least one.
    """
    divisor = _divisor(sum(weights), points_per_weight, max_points)
    return [max(1, (w * points_per_weight) // divisor) for w in weights]


def _points(backend_id: str, start: int, stop: int) -> List[int]:
    prefix = backend_id.encode("utf-8") + b"#"
    return [stable_hash(prefix + str(i).encode("ascii")) for i in range(start, stop)]


@attrs.define(eq=False)
class HashRing:
    """
    A consistent hash ring over members (anything with C{id} and
    C{weight}), updated in place by L{update}.
    """

    points_per_weight: int = DEFAULT_POINTS_PER_WEIGHT
    max_points: int = MAX_POINTS
    # Sorted entries: point hash << SLOT_BITS | slot.
    _entries: List[int] = attrs.field(factory=list)
    _slot_of: Dict[str, int] = attrs.field(factory=dict)
    _id_at: List[Optional[str]] = attrs.field(factory=list)
    _count_at: List[int] = attrs.field(factory=list)
    # slot -> the live member, or None for a dead (or free) slot.
    _live: List[Any] = attrs.field(factory=list)
    _free: List[int] = attrs.field(factory=list)
    _live_points: int = 0
    _divisor: int = 0

    @classmethod
    def build(cls, members: Sequence[Any], points_per_weight: int = DEFAULT_POINTS_PER_WEIGHT,
              max_points: int = MAX_POINTS) -> "HashRing":
        ring = cls(points_per_weight, max_points)
        ring.update(members)
        return ring

    def __len__(self) -> int:
        """
        The number of live points.
        """
        return self._live_points

    def update(self, members: Sequence[Any]) -> None:
        """
        Make the live members exactly C{members}, with points for their
        current weights.
        """
        weights = [m.weight for m in members]
        divisor = _divisor(sum(weights), self.points_per_weight, self.max_points)
        if divisor != self._divisor:
            self._reset()
            self._divisor = divisor
        added: List[int] = []
        live = [None] * len(self._live)
        live_points = 0
        for member, weight in zip(members, weights):
            count = max(1, (weight * self.points_per_weight) // divisor)
            slot = self._slot_of.get(member.id)
            if slot is None:
                slot = self._allocate(member.id)
                live.extend([None] * (len(self._live) - len(live)))
            old = self._count_at[slot]
            if count > old:
                added.extend((h << SLOT_BITS) | slot for h in _points(member.id, old, count))
            elif count < old:
                self._remove_points(member.id, slot, count, old)
            self._count_at[slot] = count
            live[slot] = member
            live_points += count
        self._live = live
        self._live_points = live_points
        if added:
            added.sort()
            self._entries += added
            self._entries.sort()  # two sorted runs: one linear merge
        dead_points = len(self._entries) - live_points
        if dead_points > max(live_points, 1024):
            self._sweep()

    def _allocate(self, backend_id: str) -> int:
        if self._free:
            slot = self._free.pop()
            self._id_at[slot], self._count_at[slot] = backend_id, 0
        else:
            slot = len(self._id_at)
            if slot > _SLOT_MASK:
                raise OverflowError("too many distinct backends in one ring")
            self._id_at.append(backend_id)
            self._count_at.append(0)
            self._live.append(None)
        self._slot_of[backend_id] = slot
        return slot

    def _remove_points(self, backend_id: str, slot: int, start: int, stop: int) -> None:
        entries = self._entries
        for h in _points(backend_id, start, stop):
            entry = (h << SLOT_BITS) | slot
            index = bisect_left(entries, entry)
            if index < len(entries) and entries[index] == entry:
                del entries[index]

    def _sweep(self) -> None:
        """
        Drop the points of dead members and free their slots.
        """
        live = self._live
        self._entries = [e for e in self._entries if live[e & _SLOT_MASK] is not None]
        for slot, member in enumerate(live):
            backend_id = self._id_at[slot]
            if member is None and backend_id is not None:
                del self._slot_of[backend_id]
                self._id_at[slot], self._count_at[slot] = None, 0
                self._free.append(slot)

    def _reset(self) -> None:
        self._entries, self._slot_of, self._id_at, self._count_at = [], {}, [], []
        self._live, self._free = [], []

    # -- lookups -------------------------------------------------------------------

    def position(self, key_hash: int) -> int:
        """
        The index of the first point at or after C{key_hash}, wrapping:
        O(log n) by bisection.  (The point may be dead; see L{owner}.)
        """
        index = bisect_left(self._entries, key_hash << SLOT_BITS)
        return 0 if index == len(self._entries) else index

    def owner_at(self, index: int) -> Any:
        """
        The live owner of the point at C{index} or, if it is dead, of the
        next live point clockwise; L{None} if no member is live.
        """
        entries, live = self._entries, self._live
        owner = live[entries[index] & _SLOT_MASK]
        if owner is not None or not self._live_points:
            return owner
        n = len(entries)
        for offset in range(1, n):
            owner = live[entries[(index + offset) % n] & _SLOT_MASK]
            if owner is not None:
                return owner
        return None

    def owner(self, key_hash: int) -> Any:
        if not self._live_points:
            return None
        return self.owner_at(self.position(key_hash))

    def walk(self, start: int) -> Iterator[Any]:
        """
        Every distinct live owner clockwise from point C{start}, each once
        (the order in which a key falls back when its owner cannot take it).
        """
        entries, live = self._entries, self._live
        n = len(entries)
        seen = set()
        for offset in range(n):
            owner = live[entries[(start + offset) % n] & _SLOT_MASK]
            if owner is not None and owner not in seen:
                seen.add(owner)
                yield owner

    def owners(self) -> List[Any]:
        """
        The live owner of every live point, in ring order (for tests).
        """
        live = self._live
        return [o for o in (live[e & _SLOT_MASK] for e in self._entries) if o is not None]
