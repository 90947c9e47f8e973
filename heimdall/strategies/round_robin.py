"""
Round robin: each eligible backend in turn.

It starts at a random offset so that a fleet of heimdalls started together
does not send its first requests to the same backend.
"""

from __future__ import annotations

from typing import Any, Collection, Dict, List

import attrs
from zope.interface import implementer

from heimdall.errors import NoBackendAvailable
from heimdall.interfaces import IStrategy
from heimdall.strategies._base import StrategyFactory, first_not_avoided


@implementer(IStrategy)
@attrs.define(eq=False)
class RoundRobin:
    random: Any
    _members: List = attrs.field(factory=list)
    _index: Dict[Any, int] = attrs.field(factory=dict)
    _next: int = 0
    _started: bool = False

    def rebuild(self, members) -> None:
        members = list(members)
        if members == self._members:
            return
        if members and self._members:
            # Keep the position of the next member if it is still there.
            current = self._members[self._next] if self._members else None
            self._next = members.index(current) if current in members else self._next % len(members)
        self._members = members
        self._index = {member: i for i, member in enumerate(members)}

    def pick(self, context, avoid: Collection = ()):
        members = self._members
        if not members:
            raise NoBackendAvailable("no eligible backend")
        if not self._started:
            # The random first offset is drawn at the first pick, not the
            # first rebuild: pools are filled one add at a time, so the
            # first rebuild usually sees a single member.
            self._started = True
            self._next = self.random.randrange(len(members))
        if avoid:
            chosen = first_not_avoided(members, self._next, avoid)
            self._next = (self._index[chosen] + 1) % len(members)
            return chosen
        chosen = members[self._next]
        self._next = (self._next + 1) % len(members)
        return chosen


def _build(options, random, clock):
    options.done()
    return RoundRobin(random)


factory = StrategyFactory(
    name="round_robin",
    description="Each backend in turn; the default, for backends of equal capacity.",
    build=_build,
)
