"""
URL hash: consistent hashing on the request path, and on the query too with
C{include_query} (the C{hash} strategy with C{key: url}), so that each URL
is served, and cached, by one backend.
"""

from __future__ import annotations

from heimdall.strategies._base import StrategyFactory
from heimdall.strategies.hash import build_hash

factory = StrategyFactory(
    name="url_hash",
    description="The same URL to the same backend; for backend caches.",
    build=lambda options, random, clock: build_hash(options, random, key="url"),
)
