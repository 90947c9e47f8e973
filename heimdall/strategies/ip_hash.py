"""
IP hash: consistent hashing on the client address (the C{hash} strategy
with C{key: ip}).  Behind other proxies, list them in C{trusted_proxies}
(CIDRs): the rightmost X-Forwarded-For address that is not one of them is
the client, and X-Forwarded-For is ignored from anyone else, so a client
cannot choose its backend by forging the header.
"""

from __future__ import annotations

from heimdall.strategies._base import StrategyFactory
from heimdall.strategies.hash import build_hash

factory = StrategyFactory(
    name="ip_hash",
    description="The same client address to the same backend; for sessions kept in backend memory.",
    build=lambda options, random, clock: build_hash(options, random, key="ip"),
)
