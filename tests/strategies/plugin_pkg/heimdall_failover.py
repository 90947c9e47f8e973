"""
Failover: every request to the first eligible backend (in the pool's
order); the next ones only when it fails or goes.  An active/passive pair
in one strategy.  The example of a third-party strategy in
docs/strategies.md.
"""

from __future__ import annotations

import attrs
from zope.interface import implementer

from heimdall.interfaces import IStrategy
from heimdall.strategies._base import StrategyFactory, check_int, first_not_avoided


@implementer(IStrategy)
@attrs.define(eq=False)
class Failover:
    primary: int = 0  # index of the preferred backend
    _members: list = attrs.field(factory=list)

    def rebuild(self, members) -> None:
        self._members = list(members)

    def pick(self, context, avoid=()):
        # Raises NoBackendAvailable when empty; prefers members not in avoid.
        return first_not_avoided(self._members, min(self.primary, max(len(self._members) - 1, 0)), avoid)


def _build(options, random, clock):
    primary = options.take("primary", 0, check_int(0))
    options.done()  # rejects unknown options, by name
    return Failover(primary)


factory = StrategyFactory(
    name="failover",
    description="Everything to the first backend, the next ones only when it fails; active/passive.",
    build=_build,
)
