"""
Random: a member drawn with probability proportional to its weight.

(The module is not called C{random} so that it never shadows the standard
library's.)  O(1) with equal weights, O(log n) otherwise.
"""

from __future__ import annotations

from typing import Any, Collection

import attrs
from zope.interface import implementer

from heimdall.interfaces import IStrategy
from heimdall.strategies._base import StrategyFactory, WeightedSampler


@implementer(IStrategy)
@attrs.define(eq=False)
class RandomChoice:
    random: Any
    _sampler: WeightedSampler = attrs.field(factory=lambda: WeightedSampler([]))

    def rebuild(self, members) -> None:
        self._sampler = self._sampler.rebuilt(members)

    def pick(self, context, avoid: Collection = ()):
        return self._sampler.sample_not_avoided(self.random, avoid)


def _build(options, random, clock):
    options.done()
    return RandomChoice(random)


factory = StrategyFactory(
    name="random",
    description="A random backend, in proportion to weight; stateless, for many balancers sharing backends.",
    build=_build,
)
