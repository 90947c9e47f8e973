"""
What strategies share: a factory value, option checking, and the
"prefer not in avoid" rule.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence

import attrs
from zope.interface import implementer

from heimdall.errors import NoBackendAvailable, StrategyOptionError
from heimdall.interfaces import IStrategyFactory


@implementer(IStrategyFactory)
@attrs.frozen
class StrategyFactory:
    """
    A named strategy factory: C{build(options, random, clock)} validates
    the options (see L{Options}) and returns an L{IStrategy}.
    """

    name: str
    description: str
    build: Callable[..., Any]

    def create(self, options, random, clock):
        return self.build(Options(options), random, clock)


@attrs.define
class Options:
    """
    Strategy options being read by a factory: every option must be taken
    exactly once; C{done()} rejects the rest by name.
    """

    _raw: Mapping[str, Any]
    _taken: set = attrs.field(factory=set)

    def take(self, name: str, default: Any, check: Callable[[Any], Any] = None, what: str = "") -> Any:
        """
        The value of option C{name} (or C{default}).  C{check(value)}
        returns the value to use or raises L{ValueError}/L{TypeError}, whose
        message becomes the error, prefixed by the option's name.
        """
        self._taken.add(name)
        if name not in self._raw:
            return default
        value = self._raw[name]
        if check is None:
            return value
        try:
            return check(value)
        except (TypeError, ValueError) as e:
            raise StrategyOptionError(name, str(e) or f"must be {what}") from None

    def done(self) -> None:
        unknown = sorted(set(self._raw) - self._taken)
        if unknown:
            known = ", ".join(sorted(self._taken)) or "none"
            raise StrategyOptionError(unknown[0], f"unknown option (known options: {known})")


def first_not_avoided(candidates: Sequence[Any], start: int, avoid: Collection[Any]) -> Any:
    """
    The first of C{candidates} from index C{start} on (wrapping) that is
    not in C{avoid}; C{candidates[start]} when all are avoided.
    """
    n = len(candidates)
    if n == 0:
        raise NoBackendAvailable("no eligible backend")
    first = candidates[start % n]
    if not avoid or first not in avoid:
        return first
    for i in range(1, n):
        candidate = candidates[(start + i) % n]
        if candidate not in avoid:
            return candidate
    return first
