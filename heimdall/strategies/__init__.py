"""
heimdall's built-in strategies, one module each.  Every module exposes a
C{factory} providing L{heimdall.interfaces.IStrategyFactory}.
"""

from __future__ import annotations

from heimdall.strategies import round_robin

BUILTIN = [
    round_robin.factory,
]


def register_builtin(registry) -> None:
    for factory in BUILTIN:
        registry.register(factory)
