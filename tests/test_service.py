"""
L{heimdall.service}'s builders: each part from the config's typed values.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from heimdall.config.health import RetryBudgetConfig
from heimdall.config.model import parse_config
from heimdall.config.services import default_service
from heimdall.routing.services import build_pool, build_retry_budget
from heimdall.service import build_proxy


def test_the_pool_gets_its_settings_from_the_health_section():
    config = parse_config({"health": {"panic": "route"}, "strategy": "least_connections"})
    pool = build_pool(default_service(config), MemoryReactorClock())
    assert pool.panic_mode == "route"
    assert build_pool(default_service(parse_config({})), MemoryReactorClock()).panic_mode == "fail"


def test_the_retry_budget_is_built_with_the_proxy():
    reactor = MemoryReactorClock()
    budget = build_retry_budget(RetryBudgetConfig(percent=20, min_retry_concurrency=3), reactor)
    assert (budget.budget_ratio, budget.min_retry_concurrency) == (0.2, 3)
    config = parse_config({"health": {"retry_budget": {"min_retry_concurrency": 7}}, "access_log": {"enabled": False}})
    proxy = build_proxy(config, reactor)
    assert proxy.resource.retry_budget.min_retry_concurrency == 7
    assert proxy.access_log is None and proxy.site.resource is proxy.router
    assert proxy.router.routing.services["default"] is proxy.resource


def test_each_service_gets_its_own_settings_over_the_top_level_ones():
    reactor = MemoryReactorClock()
    config = parse_config(
        {
            "access_log": {"enabled": False},
            "retries": 1,
            "timeouts": {"connect": "2s", "response": "9s"},
            "backends": ["http://127.0.0.1:8001"],
            "services": {
                "api": {
                    "backends": ["http://127.0.0.1:8001", {"url": "http://127.0.0.1:8002", "weight": 3}],
                    "strategy": "least_connections",
                    "retries": 0,
                    "retry_on": ["5xx"],
                    "timeouts": {"response": "1s"},
                    "upstream": {"max_idle_per_backend": 4},
                }
            },
            "routes": [{"match": {"path_prefix": "/api"}, "service": "api"}],
        }
    )
    proxy = build_proxy(config, reactor)
    api, default = proxy.services["api"], proxy.default
    assert list(proxy.services) == ["default", "api"]
    assert [entry.backend.id for entry in api.settings.backends] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert api.settings.backends[1].backend.weight == 3
    # The backends are the managers' to load (with the state files).
    assert default.pool.members() == [] and api.pool.members() == []
    assert type(api.pool.strategy).__name__ != type(default.pool.strategy).__name__
    assert (api.resource.retries, default.resource.retries) == (0, 1)
    assert api.resource.retry_on == frozenset({"5xx"}) and default.resource.retry_on == frozenset()
    assert (api.resource.response_timeout, default.resource.response_timeout) == (1.0, 9.0)
    assert api.upstream.connect_timeout == 2.0  # merged over the top-level timeouts
    assert api.upstream.max_idle_per_backend == 4
    assert api.resource.service == "api" and default.resource.service == "default"
    assert api.upstream is not default.upstream and api.pool is not default.pool
    assert api.health.name != default.health.name


def test_preflight_reads_every_services_state_file_and_the_managers_apply_them(tmp_path):
    from heimdall.manager.statefile import State, save_state
    from heimdall.service import HeimdallService, preflight

    path = tmp_path / "state.json"
    save_state(str(tmp_path / "state.api.json"), State(strategy={"name": "least_connections"}))
    config = parse_config(
        {
            "access_log": {"enabled": False},
            "manager": {"state_file": str(path)},
            "services": {"api": {"backends": ["http://127.0.0.1:8001"]}, "web": {}},
        }
    )
    result = preflight(config, environ={})
    assert list(result.states) == ["default", "api", "web"]
    assert result.state is None and result.states["web"] is None
    assert result.states["api"].strategy == {"name": "least_connections"}
    assert result.state_path == str(path)
    service = HeimdallService(config, MemoryReactorClock(), preflight_result=result)
    assert service.managers.get("api").strategy_name == "least_connections"
    assert service.managers.get("web").strategy_name == "round_robin"
    assert [member.backend.id for member in service.proxy.services["api"].pool.members()] == ["127.0.0.1:8001"]


def test_a_service_takes_each_setting_it_leaves_at_none_from_the_top_level():
    import attrs

    from heimdall.config.model import StrategyConfig
    from heimdall.config.services import INHERITED, ServiceConfig

    config = parse_config({"retries": 4, "retry_on": ["timeout"], "strategy": "random"})
    inherited = ServiceConfig().resolved(config)
    assert {name: getattr(inherited, name) for name in INHERITED} == {name: getattr(config, name) for name in INHERITED}
    own = ServiceConfig(strategy="first", retries=0, retry_on=()).resolved(config)
    assert (own.strategy, own.retries, own.retry_on) == (StrategyConfig("first"), 0, ())
    assert own.timeouts is config.timeouts
    # Every Optional field of ServiceConfig is inherited, and nothing else
    # but tls (TLS to its backends: the top-level tls is termination).
    optional = {f.name for f in attrs.fields(ServiceConfig) if f.default is None}
    assert optional == set(INHERITED) | {"tls"}
    assert ServiceConfig().resolved(config).tls is None
