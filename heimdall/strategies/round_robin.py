"""
Round robin: each eligible backend in turn.

It starts at a random offset so that a fleet of heimdalls started together
does not send its first requests to the same backend.
"""

from __future__ import annotations

from typing import Collection, List

import attrs
from zope.interface import implementer

from heimdall.interfaces import IStrategy
from heimdall.strategies._base import StrategyFactory, first_not_avoided


@implementer(IStrategy)
@attrs.define(eq=False)
class RoundRobin:
    random: object
    _members: List = attrs.field(factory=list)
    _next: int = 0
    _started: bool = False

    def rebuild(self, members) -> None:
        members = list(members)
        if not self._started and members:
            # Random first offset, taken once, so rebuilds do not reshuffle.
            self._next = self.random.randrange(len(members))
            self._started = True
        elif members and self._members != members:
            # Keep the position of the next member if it is still there.
            current = self._members[self._next % len(self._members)] if self._members else None
            self._next = members.index(current) if current in members else self._next % len(members)
        self._members = members

    def pick(self, context, avoid: Collection = ()):
        members = self._members
        chosen = first_not_avoided(members, self._next, avoid)
        self._next = (members.index(chosen) + 1) % len(members) if avoid else (self._next + 1) % len(members)
        return chosen


def _build(options, random, clock):
    options.done()
    return RoundRobin(random)


factory = StrategyFactory(
    name="round_robin",
    description="Each backend in turn; the default, for backends of equal capacity.",
    build=_build,
)
