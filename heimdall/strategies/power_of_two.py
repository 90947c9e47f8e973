"""
Power of two choices (P2C, as Envoy's least request): draw two members in
proportion to weight and take the one with fewer requests in flight per
unit of weight; on a tie, the first drawn.

It comes close to least connections (Mitzenmacher: the maximum load falls
from log n / log log n to log log n) at O(1) per pick, and it does not herd:
several balancers that each see a different snapshot of the load do not
all pick the same idle backend.

The comparison is C{in_flight / weight}, not C{(in_flight + 1) / weight}:
when everything is idle the two tie and the first draw wins, so an idle
pool is shared in proportion to weight.
"""

from __future__ import annotations

from typing import Any, Collection

import attrs
from zope.interface import implementer

from heimdall.interfaces import IStrategy
from heimdall.strategies._base import StrategyFactory, WeightedSampler


@implementer(IStrategy)
@attrs.define(eq=False)
class PowerOfTwo:
    random: Any
    _sampler: WeightedSampler = attrs.field(factory=lambda: WeightedSampler([]))

    def rebuild(self, members) -> None:
        self._sampler = self._sampler.rebuilt(members)

    def pick(self, context, avoid: Collection = ()):
        first = self._sampler.sample_not_avoided(self.random, avoid)
        second = self._sampler.sample_not_avoided(self.random, avoid)
        # Cross-multiplied: no division, exact.
        if second.in_flight * first.weight < first.in_flight * second.weight:
            return second
        return first


def _build(options, random, clock):
    options.done()
    return PowerOfTwo(random)


factory = StrategyFactory(
    name="power_of_two",
    description="The less loaded of two random backends; O(1) near-least-connections for large pools.",
    build=_build,
)
