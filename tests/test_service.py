"""
L{heimdall.service}'s builders: each part from the config's typed values.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from heimdall.config.health import RetryBudgetConfig
from heimdall.config.model import parse_config
from heimdall.service import build_pool, build_proxy, build_retry_budget


def test_the_pool_gets_its_settings_from_the_health_section():
    config = parse_config({"health": {"panic": "route"}, "strategy": "least_connections"})
    pool = build_pool(config, MemoryReactorClock())
    assert pool.panic_mode == "route"
    assert build_pool(parse_config({}), MemoryReactorClock()).panic_mode == "fail"


def test_the_retry_budget_is_built_with_the_proxy():
    reactor = MemoryReactorClock()
    budget = build_retry_budget(RetryBudgetConfig(percent=20, min_retry_concurrency=3), reactor)
    assert (budget.budget_ratio, budget.min_retry_concurrency) == (0.2, 3)
    config = parse_config({"health": {"retry_budget": {"min_retry_concurrency": 7}}, "access_log": {"enabled": False}})
    proxy = build_proxy(config, build_pool(config, reactor), reactor)
    assert proxy.resource.retry_budget.min_retry_concurrency == 7
    assert proxy.access_log is None and proxy.site.resource is proxy.resource
