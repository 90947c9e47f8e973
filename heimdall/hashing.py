"""
Stable hashing and a consistent hash ring.

The hash must give the same answer in every process and every run, so a
fleet of heimdalls (or one heimdall after a restart) sends a key to the same
backend: Python's C{hash()} is salted per process, so we use an 8-byte
BLAKE2b digest from the standard library.

The ring places C{points} virtual nodes per member, in proportion to its
weight, at the stable hashes of C{"<backend id>#<i>"}.  A key goes to the
owner of the first point at or after the key's hash (wrapping).  Because a
member's points depend only on its id and its point count, adding or
removing a member moves only the keys that land on its points (about
1/(N+1) of them), the property consistent hashing exists for.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from typing import Any, Dict, Iterator, List, Sequence

import attrs

#: Ring points per unit of weight.  With ~100 points a member's share of
#: the keys is within about 10% of its fair share (ketama uses 160).
DEFAULT_POINTS_PER_WEIGHT = 100

#: The most points a ring holds.  Beyond it every member's count is halved
#: (as often as needed), so 1,000 heavy backends do not make a ring of
#: 100 million points.  A halving keeps the first half of each member's
#: points, so it only moves the keys of the dropped points.
MAX_POINTS = 1 << 17


def stable_hash(data: bytes) -> int:
    """
    A 64-bit hash of C{data} that is the same in every process and run.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def point_counts(weights: Sequence[int], points_per_weight: int, max_points: int = MAX_POINTS) -> List[int]:
    """
    How many ring points each of C{weights} gets: C{weight * points_per_weight},
    halved as a whole until the ring fits in C{max_points}, at least one.
    """
    total = sum(weights) * points_per_weight
    divisor = 1
    while total > max_points * divisor:
        divisor *= 2
    return [max(1, (w * points_per_weight) // divisor) for w in weights]


@attrs.define(eq=False)
class PointCache:
    """
    The point hashes of each backend id, kept across rebuilds so that a
    health flap at 1,000 backends does not rehash 100,000 points.
    """

    _points: Dict[str, List[int]] = attrs.field(factory=dict)

    def points(self, backend_id: str, count: int) -> List[int]:
        known = self._points.get(backend_id)
        if known is None:
            known = self._points[backend_id] = []
        if len(known) < count:
            prefix = backend_id.encode("utf-8") + b"#"
            known.extend(
                stable_hash(prefix + str(i).encode("ascii")) for i in range(len(known), count)
            )
        return known[:count]

    def keep_only(self, backend_ids) -> None:
        """
        Forget the backends not in C{backend_ids} (bounded memory).
        """
        for backend_id in set(self._points) - set(backend_ids):
            del self._points[backend_id]


@attrs.frozen
class HashRing:
    """
    A sorted ring of points and their owners.  Build with L{HashRing.build}.

    @ivar hashes: point positions, ascending.
    @ivar owners: C{owners[i]} owns the point at C{hashes[i]}.
    """

    hashes: List[int]
    owners: List[Any]

    @classmethod
    def build(
        cls,
        members: Sequence[Any],
        points_per_weight: int = DEFAULT_POINTS_PER_WEIGHT,
        cache: PointCache = None,
        max_points: int = MAX_POINTS,
    ) -> "HashRing":
        """
        A ring of C{members} (anything with C{id} and C{weight}).
        """
        if cache is None:
            cache = PointCache()
        counts = point_counts([m.weight for m in members], points_per_weight, max_points)
        # Sort plain ints (hash, then member index in the low bits) rather
        # than tuples: about twice as fast for 100,000 points.
        shift = max(1, len(members).bit_length())
        mask = (1 << shift) - 1
        packed = []
        for index, (member, count) in enumerate(zip(members, counts)):
            packed.extend((h << shift) | index for h in cache.points(member.id, count))
        packed.sort()
        cache.keep_only(m.id for m in members)
        return cls(
            hashes=[p >> shift for p in packed],
            owners=[members[p & mask] for p in packed],
        )

    def __len__(self) -> int:
        return len(self.hashes)

    def position(self, key_hash: int) -> int:
        """
        The index of the first point at or after C{key_hash}, wrapping:
        O(log n) by bisection.
        """
        index = bisect_left(self.hashes, key_hash)
        return 0 if index == len(self.hashes) else index

    def owner(self, key_hash: int) -> Any:
        return self.owners[self.position(key_hash)]

    def walk(self, start: int) -> Iterator[Any]:
        """
        Every distinct owner clockwise from point C{start}, each once (the
        order in which a key falls back when its owner cannot take it).
        """
        owners = self.owners
        n = len(owners)
        seen = set()
        for offset in range(n):
            owner = owners[(start + offset) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
