"""
The strategy registry: strategy factories by name, in a
C{zope.interface.registry.Components} that heimdall owns (never the global
site manager).

heimdall's own strategies are registered by L{heimdall.strategies}; third
parties add theirs through the C{heimdall.strategies} entry-point group,
whose entries name an L{IStrategyFactory} provider.
"""

from __future__ import annotations

import random as _random
import sys
from typing import Any, Mapping, Optional

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface.registry import Components
from zope.interface.verify import verifyObject

from heimdall.clock import maybe_global_reactor
from heimdall.errors import DuplicateStrategy, UnknownStrategy
from heimdall.interfaces import IStrategy, IStrategyFactory

ENTRY_POINT_GROUP = "heimdall.strategies"

_log = Logger()


@attrs.define(eq=False)
class StrategyRegistry:
    """
    Strategy factories by name.
    """

    _components: Components = attrs.field(factory=lambda: Components("heimdall.strategies"))

    def register(self, factory: Any) -> None:
        """
        Register C{factory} under C{factory.name}.

        @raise TypeError: if C{factory} does not provide L{IStrategyFactory}.
        @raise DuplicateStrategy: if the name is taken (zope would silently
            replace it).
        """
        if not IStrategyFactory.providedBy(factory):
            raise TypeError(f"{factory!r} does not provide IStrategyFactory")
        verifyObject(IStrategyFactory, factory)
        name = factory.name
        if not isinstance(name, str) or not name:
            raise TypeError(f"{factory!r} has no valid name")
        if self._components.queryUtility(IStrategyFactory, name=name) is not None:
            raise DuplicateStrategy(f"a strategy named {name!r} is already registered")
        self._components.registerUtility(factory, IStrategyFactory, name=name)

    def get(self, name: str) -> IStrategyFactory:
        factory = self._components.queryUtility(IStrategyFactory, name=name)
        if factory is None:
            raise UnknownStrategy(name, self.names())
        return factory

    def names(self) -> list[str]:
        return sorted(name for name, _ in self._components.getUtilitiesFor(IStrategyFactory))

    def factories(self) -> list[IStrategyFactory]:
        return [self.get(name) for name in self.names()]

    def create(
        self,
        name: str,
        options: Optional[Mapping[str, Any]] = None,
        random: Optional[_random.Random] = None,
        clock: Optional[IReactorTime] = None,
    ) -> IStrategy:
        """
        Build a strategy by name.  C{random} defaults to a fresh
        L{random.Random}; C{clock} to the global reactor.
        """
        strategy = self.get(name).create(
            dict(options or {}), random if random is not None else _random.Random(), maybe_global_reactor(clock)
        )
        return strategy

    def load_entry_points(self) -> None:
        """
        Register every factory published in the C{heimdall.strategies}
        entry-point group.  A broken plug-in is logged and skipped, never
        fatal for the others; a name clash with a built-in is refused.
        """
        for entry in _entry_points(ENTRY_POINT_GROUP):
            try:
                factory = entry.load()
                self.register(factory)
            except Exception:
                _log.failure("strategy plug-in {entry} could not be registered", entry=entry.value)


def _entry_points(group: str):
    from importlib.metadata import entry_points

    if sys.version_info >= (3, 10):
        return list(entry_points(group=group))
    return list(entry_points().get(group, ()))  # Python 3.9 (PyPy)


_default: Optional[StrategyRegistry] = None


def default_registry() -> StrategyRegistry:
    """
    The process-wide registry: heimdall's strategies plus the entry points,
    built on first use.
    """
    global _default
    if _default is None:
        from heimdall.strategies import register_builtin

        registry = StrategyRegistry()
        register_builtin(registry)
        registry.load_entry_points()
        _default = registry
    return _default
