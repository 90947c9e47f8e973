"""
heimdall's built-in strategies, one module each.  Every module exposes a
C{factory} providing L{heimdall.interfaces.IStrategyFactory}.
"""

from __future__ import annotations

from heimdall.strategies import (
    first,
    ip_hash,
    least_connections,
    least_time,
    power_of_two,
    random_choice,
    round_robin,
    sticky_round_robin,
    url_hash,
    weighted_round_robin,
)
from heimdall.strategies import hash as hash_

BUILTIN = [
    round_robin.factory,
    weighted_round_robin.factory,
    sticky_round_robin.factory,
    ip_hash.factory,
    url_hash.factory,
    hash_.factory,
    least_connections.factory,
    least_time.factory,
    random_choice.factory,
    power_of_two.factory,
    first.factory,
]


def register_builtin(registry) -> None:
    for factory in BUILTIN:
        registry.register(factory)
