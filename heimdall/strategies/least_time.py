"""
Least time: the member with the lowest expected wait, estimated as

    response time x (in-flight + 1) / weight

where the response time is the pool's moving average of time to first byte
(C{metric: ttfb}, the default) or to last byte (C{ttlb}).  Ties (members
never measured, say) are broken at random.

A backend that was slow once must not be starved for ever: nothing would
ever measure it again.  So while a member gets no traffic its average
decays toward the mean of the other members, halving the gap every
C{half_life} seconds since it was last used; the decay is computed at pick
time from C{member.last_used_at}, so the pool's counters stay the only
state.  After C{FORGET_AFTER} half-lives the gap is under 0.1% and the old
measurement is forgotten: the member then ties with a backend exactly as
fast as the others' mean, and the random tie-break sends it a request even
when the pool is idle.  A member with no measurement yet counts as the pool
mean.  With no measurement at all this is least connections.

By default every pick scores every member: exact, but O(n), since the
averages and counts change outside the strategy (see the benchmark: about
1 µs at 10 backends, over 100 µs at 1,000).  With C{choices: k} a pick
scores only k members drawn at random, O(k), as power of two does for least
connections; the pool mean is then refreshed at most every 100 ms.
"""

from __future__ import annotations

import math
from operator import attrgetter, truediv
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple

import attrs
from zope.interface import implementer

from heimdall.interfaces import IStrategy
from heimdall.strategies._base import (
    StrategyFactory,
    WeightedSampler,
    check_choice,
    check_float,
    check_int,
    lowest_score,
)

# A measured time of 0 (a fake clock, a cache hit) would make the in-flight
# count irrelevant; a microsecond keeps it in play.
_FLOOR = 1e-6

#: After this many half-lives without traffic a measurement is forgotten.
FORGET_AFTER = 10

#: How long the sampled mode reuses the pool mean, in seconds.
MEAN_REFRESH = 0.1

_in_flight = attrgetter("in_flight")
_plus_one = (1).__add__


@implementer(IStrategy)
@attrs.define(eq=False)
class LeastTime:
    random: Any
    clock: Any
    metric: str = "ttfb"
    half_life: float = 5.0
    choices: Optional[int] = None
    _average: Callable[[Any], Any] = attrs.field(init=False)
    _members: List = attrs.field(init=False, factory=list)
    _weights: List[int] = attrs.field(init=False, factory=list)
    _index: Dict[Any, int] = attrs.field(init=False, factory=dict)
    _sampler: WeightedSampler = attrs.field(init=False, factory=lambda: WeightedSampler([]))
    _mean: Optional[Tuple[float, float, int]] = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._average = attrgetter(f"{self.metric}_avg")

    def rebuild(self, members) -> None:
        members = list(members)
        weights = [m.weight for m in members]
        if members == self._members and weights == self._weights:
            return
        self._members, self._weights = members, weights
        self._index = {m: i for i, m in enumerate(members)}
        self._sampler = WeightedSampler(members)
        self._mean = None

    def _totals(self, averages: List[Any]) -> Tuple[float, int]:
        measured = [a for a in averages if a is not None]
        return sum(measured), len(measured)

    def estimate(self, member: Any, total: float, count: int, now: float) -> Optional[float]:
        """
        C{member}'s response time, decayed toward the mean of the others:
        C{total} and C{count} sum up the measured averages of the pool.
        L{None} when nothing is measured.
        """
        if not count:
            return None
        average = self._average(member)
        if average is None:
            return total / count
        last = member.last_used_at
        if count == 1 or last is None or now <= last:
            return average
        # Clamped: a sampled pick's cached total may lag the averages.
        target = max((total - average) / (count - 1), 0.0)
        if now - last >= FORGET_AFTER * self.half_life:
            return target
        return target + (average - target) * math.exp((last - now) * math.log(2) / self.half_life)

    def estimates(self) -> List[Optional[float]]:
        """
        Every member's current estimate, in member order (for tests and the
        manager).
        """
        total, count = self._totals(list(map(self._average, self._members)))
        now = self.clock.seconds()
        return [self.estimate(m, total, count, now) for m in self._members]

    def pick(self, context, avoid: Collection = ()):
        if self.choices is not None:
            return self._pick_sampled(avoid)
        members = self._members
        averages = list(map(self._average, members))
        total, count = self._totals(averages)
        if not count:
            loads = map(_plus_one, map(_in_flight, members))
            scores = list(map(truediv, loads, self._weights))
            return lowest_score(scores, members, self.random, avoid, self._index)
        now = self.clock.seconds()
        rate = math.log(2) / self.half_life
        mean = total / count
        others = max(count - 1, 1)
        forget = FORGET_AFTER * self.half_life
        exp = math.exp
        # estimate() inlined: this loop is the whole cost of the pick.
        scores = []
        append = scores.append
        for member, average, weight in zip(members, averages, self._weights):
            if average is None:
                estimate = mean
            else:
                last = member.last_used_at
                if last is None or last >= now or count == 1:
                    estimate = average
                elif now - last >= forget:
                    estimate = (total - average) / others
                else:
                    target = (total - average) / others
                    estimate = target + (average - target) * exp((last - now) * rate)
            if estimate < _FLOOR:  # not max(): a call per member costs more
                estimate = _FLOOR
            append(estimate * (member.in_flight + 1) / weight)
        return lowest_score(scores, members, self.random, avoid, self._index)

    def _pick_sampled(self, avoid: Collection) -> Any:
        now = self.clock.seconds()
        if self._mean is None or now - self._mean[0] >= MEAN_REFRESH or now < self._mean[0]:
            self._mean = (now, *self._totals(list(map(self._average, self._members))))
        _, total, count = self._mean
        best, best_score = None, None
        for _ in range(self.choices):
            member = self._sampler.sample_not_avoided(self.random, avoid)
            estimate = self.estimate(member, total, count, now)
            score = (member.in_flight + 1) / member.weight
            if estimate is not None:
                score *= estimate if estimate > _FLOOR else _FLOOR
            if best_score is None or score < best_score:
                best, best_score = member, score
        return best


def _check_choices(value: Any) -> Optional[int]:
    if value is None:
        return None
    return check_int(2, 100)(value)


def _build(options, random, clock):
    metric = options.take("metric", "ttfb", check_choice("ttfb", "ttlb"))
    half_life = options.take("half_life", 5.0, check_float(0.0, inclusive=False))
    choices = options.take("choices", None, _check_choices)
    options.done()
    return LeastTime(random, clock, metric=metric, half_life=half_life, choices=choices)


factory = StrategyFactory(
    name="least_time",
    description="Lowest response time x load; for backends of uneven or changing speed.",
    build=_build,
)
