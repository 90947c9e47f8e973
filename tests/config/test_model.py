"""
Tests for L{heimdall.config.model}: the JSON config file, its values and errors.
"""

from __future__ import annotations

import ipaddress
import json
import os

import attrs
import pytest

from heimdall.config import model as config_module
from heimdall.config.health import AlertsConfig, CheckSettings, HealthConfig, WebhookConfig
from heimdall.config.model import (
    DURATION_PROBLEM,
    SIZE_PROBLEM,
    AccessLogConfig,
    BackendConfig,
    Config,
    ForwardedConfig,
    LimitsConfig,
    LogConfig,
    ManagerConfig,
    StrategyConfig,
    TimeoutsConfig,
    UpstreamConfig,
    load_config,
    parse_config,
)
from heimdall.errors import ConfigError
from heimdall.pool.pool import Backend
from heimdall.strategies.registry import default_registry

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def error_of(data) -> str:
    """
    The message of the error C{parse_config(data)} raises.
    """
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def load_text(tmp_path, text: str) -> Config:
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    return load_config(str(path))


# --- The shipped config.json and the defaults --------------------------------


def test_repository_config_json_loads():
    config = load_config(os.path.join(REPO_ROOT, "config.json"))
    assert config.listen == "tcp:8080:interface=127.0.0.1"
    assert config.strategy == StrategyConfig("round_robin", {})
    assert config.backends == ()
    assert config.spawn == 3
    assert config.manager.listen == "tcp:9090:interface=127.0.0.1"
    assert config.manager.base_port == 8081
    assert config.access_log == AccessLogConfig(enabled=True, format="text", path="-")
    # Its explicit timeouts and limits are the built-in defaults.
    assert config.timeouts == TimeoutsConfig()
    assert config.limits == LimitsConfig()
    assert attrs.evolve(config, spawn=0) == Config()


def test_default_config_is_valid():
    config = Config()
    assert config.listen == "tcp:8080:interface=127.0.0.1"
    assert config.strategy.name == "round_robin"
    assert dict(config.strategy.options) == {}
    assert config.backends == ()
    assert config.spawn == 0
    assert config.retries == 2
    assert config.manager == ManagerConfig(
        listen="tcp:9090:interface=127.0.0.1",
        base_port=8081,
        port_range=1000,
        host="127.0.0.1",
        command=None,
        drain_timeout=30.0,
        state_file="heimdall-state.json",
        token=None,
        token_env=None,
    )
    assert config.timeouts == TimeoutsConfig(
        connect=5.0, response=60.0, idle_upstream=30.0, client_header=10.0, client_idle=75.0
    )
    assert config.limits == LimitsConfig(
        max_header_bytes=32 * 1024, max_uri_bytes=8 * 1024, max_body_bytes=100 * 1024 * 1024
    )
    assert config.upstream == UpstreamConfig(max_idle_per_backend=256)
    assert config.forwarded == ForwardedConfig(trusted_proxies=())
    assert config.log == LogConfig(format="text", path="-", level="info")
    assert config.health == HealthConfig() and config.alerts == AlertsConfig()
    # Frozen and hashable, despite the mappings inside.
    hash(config)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.listen = "tcp:1"  # type: ignore[misc]


def test_empty_object_is_the_default_config():
    assert parse_config({}) == Config()


def test_full_config_parses():
    config = parse_config(
        {
            "$schema": "https://example.invalid/heimdall.schema.json",
            "_comment": "top-level comments are ignored",
            "listen": 8000,
            "strategy": {"name": "round_robin", "_why": "comments are not options"},
            "backends": [
                "http://127.0.0.1:8081",
                {"url": "https://[::1]:8443", "weight": 5, "backup": True, "_note": "ignored"},
                {"url": "http://example.com", "weight": 0},
            ],
            "spawn": 2,
            "manager": {
                "listen": "unix:/tmp/heimdall.sock",
                "base_port": 9000,
                "port_range": 10,
                "host": "0.0.0.0",
                "command": ["python", "-m", "app", "--port={port}"],
                "drain_timeout": 0,
                "state_file": "/var/lib/heimdall/state.json",
                "token_env": "HEIMDALL_TOKEN",
                "_comment": "nested comments are ignored too",
            },
            "timeouts": {"connect": "500ms", "response": 30, "idle_upstream": 1.5, "client_header": "1m", "client_idle": "1h"},
            "limits": {"max_header_bytes": "64KiB", "max_uri_bytes": 4096, "max_body_bytes": 0},
            "retries": 0,
            "upstream": {"max_idle_per_backend": 10},
            "forwarded": {"trusted_proxies": ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]},
            "access_log": {"enabled": False, "format": "json", "path": "/var/log/access.log"},
            "log": {"format": "json", "path": "heimdall.log", "level": "debug"},
            "health": {"interval": "5s", "path": "/healthz"},
            "alerts": {"webhooks": [{"url": "http://hooks.invalid/x"}]},
        }
    )
    assert config.listen == "tcp:8000:interface=127.0.0.1"
    assert config.strategy == StrategyConfig("round_robin", {})
    assert config.backends == (
        BackendConfig(Backend("http", "127.0.0.1", 8081, 1), backup=False),
        BackendConfig(Backend("https", "::1", 8443, 5), backup=True),
        BackendConfig(Backend("http", "example.com", 80, 0), backup=False),
    )
    assert config.spawn == 2
    assert config.manager == ManagerConfig(
        listen="unix:/tmp/heimdall.sock",
        base_port=9000,
        port_range=10,
        host="0.0.0.0",
        command=("python", "-m", "app", "--port={port}"),
        drain_timeout=0.0,
        state_file="/var/lib/heimdall/state.json",
        token=None,
        token_env="HEIMDALL_TOKEN",
    )
    assert config.timeouts == TimeoutsConfig(
        connect=0.5, response=30.0, idle_upstream=1.5, client_header=60.0, client_idle=3600.0
    )
    assert config.limits == LimitsConfig(max_header_bytes=65536, max_uri_bytes=4096, max_body_bytes=0)
    assert config.retries == 0
    assert config.upstream.max_idle_per_backend == 10
    assert config.forwarded.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert config.access_log == AccessLogConfig(enabled=False, format="json", path="/var/log/access.log")
    assert config.log == LogConfig(format="json", path="heimdall.log", level="debug")
    assert config.health == HealthConfig(check=CheckSettings(interval=5, path="/healthz"))
    assert config.alerts == AlertsConfig(webhooks=(WebhookConfig(url="http://hooks.invalid/x"),))


# --- Errors, with their exact messages --------------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        # listen
        ({"listen": "http:8080"}, "listen: unknown endpoint type 'http'; known types: ssl, systemd, tcp, tcp6, unix"),
        ({"listen": 0}, 'listen: a port number must be from 1 to 65535 (use "tcp:0" for any free port)'),
        ({"listen": True}, 'listen: must be an endpoint string like "tcp:8080:interface=127.0.0.1" or a port number'),
        ({"listen": "tcp:x"}, "listen: port must be a number from 0 to 65535, not 'x'"),
        # strategy
        ({"strategy": 3}, 'strategy: must be a strategy name or an object like {"name": "round_robin"}'),
        ({"strategy": ""}, "strategy: must be a non-empty string"),
        ({"strategy": {}}, "strategy.name: is required"),
        ({"strategy": {"name": 1}}, "strategy.name: must be a non-empty string"),
        # backends
        ({"backends": "http://a"}, "backends: must be a list of backend URLs or objects"),
        ({"backends": ["ftp://127.0.0.1:21"]}, "backends[0].url: scheme must be http or https"),
        (
            {"backends": ["http://127.0.0.1:8081", "127.0.0.1:8082"]},
            "backends[1].url: scheme must be http or https",
        ),
        ({"backends": ["http://:8081"]}, "backends[0].url: a host is required"),
        ({"backends": ["http://a:99999"]}, "backends[0].url: port must be a number from 1 to 65535"),
        ({"backends": ["http://a:1/path"]}, "backends[0].url: must not have a path, query or fragment"),
        ({"backends": [{"url": 8081}]}, "backends[0].url: must be a URL string, not int"),
        ({"backends": [{}]}, "backends[0].url: is required"),
        ({"backends": [{"weight": 2}]}, "backends[0].url: is required"),
        ({"backends": [3]}, 'backends[0]: must be a URL string or an object like {"url": "http://127.0.0.1:8081"}'),
        ({"backends": [{"url": "http://a", "weight": 1001}]}, "backends[0].weight: must be an integer from 0 to 1000"),
        ({"backends": [{"url": "http://a", "weight": -1}]}, "backends[0].weight: must be an integer from 0 to 1000"),
        ({"backends": [{"url": "http://a", "weight": True}]}, "backends[0].weight: must be an integer from 0 to 1000"),
        ({"backends": [{"url": "http://a", "weight": "2"}]}, "backends[0].weight: must be an integer from 0 to 1000"),
        ({"backends": [{"url": "http://a", "weight": 1.0}]}, "backends[0].weight: must be an integer from 0 to 1000"),
        ({"backends": [{"url": "http://a", "backup": "yes"}]}, "backends[0].backup: must be true or false"),
        ({"backends": [{"url": "http://a", "wieght": 2}]}, 'backends[0].wieght: unknown key; did you mean "weight"?'),
        # spawn, retries
        ({"spawn": 65}, "spawn: must be an integer from 0 to 64"),
        ({"spawn": -1}, "spawn: must be an integer from 0 to 64"),
        ({"spawn": "3"}, "spawn: must be an integer from 0 to 64"),
        ({"spawn": True}, "spawn: must be an integer from 0 to 64"),
        ({"spawn": 5, "manager": {"port_range": 4}}, "spawn: must not exceed manager.port_range (4)"),
        ({"retries": 11}, "retries: must be an integer from 0 to 10"),
        ({"retries": 2.0}, "retries: must be an integer from 0 to 10"),
        ({"retries": None}, "retries: must be an integer from 0 to 10"),
        # manager
        ({"manager": []}, "manager: must be an object"),
        ({"manager": {"listen": "unix:"}}, 'manager.listen: a unix endpoint needs a socket path, like "unix:/run/heimdall.sock"'),
        ({"manager": {"base_port": 0}}, "manager.base_port: must be an integer from 1 to 65535"),
        ({"manager": {"base_port": 65536}}, "manager.base_port: must be an integer from 1 to 65535"),
        ({"manager": {"port_range": 0}}, "manager.port_range: must be an integer from 1 to 10000"),
        ({"manager": {"port_range": 10001}}, "manager.port_range: must be an integer from 1 to 10000"),
        (
            {"manager": {"base_port": 65000, "port_range": 1000}},
            "manager.port_range: base_port + port_range reaches port 65999, beyond 65535",
        ),
        ({"manager": {"host": ""}}, "manager.host: must be a non-empty string"),
        ({"manager": {"host": None}}, "manager.host: must be a non-empty string"),
        (
            {"manager": {"command": "python -m app {port}"}},
            'manager.command: must be a list of strings with a "{port}" placeholder, or null',
        ),
        ({"manager": {"command": []}}, "manager.command: must not be empty (use null for the built-in demo backend)"),
        ({"manager": {"command": ["app", 8081]}}, "manager.command[1]: must be a string"),
        ({"manager": {"command": ["app", "--port=8081"]}}, 'manager.command: must contain "{port}" in at least one argument'),
        ({"manager": {"drain_timeout": "soon"}}, f"manager.drain_timeout: {DURATION_PROBLEM}"),
        ({"manager": {"drain_timeout": -1}}, "manager.drain_timeout: must not be negative"),
        ({"manager": {"state_file": ""}}, "manager.state_file: must be a non-empty string"),
        ({"manager": {"token": 1234}}, "manager.token: must be a non-empty string or null"),
        ({"manager": {"token": ""}}, "manager.token: must be a non-empty string or null"),
        ({"manager": {"token_env": False}}, "manager.token_env: must be a non-empty string or null"),
        ({"manager": {"token": "s3cret", "token_env": "T"}}, "manager.token_env: set token or token_env, not both"),
        # timeouts
        ({"timeouts": "5s"}, "timeouts: must be an object"),
        ({"timeouts": {"connect": "soon"}}, f"timeouts.connect: {DURATION_PROBLEM}"),
        ({"timeouts": {"connect": "5"}}, f"timeouts.connect: {DURATION_PROBLEM}"),
        ({"timeouts": {"response": True}}, f"timeouts.response: {DURATION_PROBLEM}"),
        ({"timeouts": {"idle_upstream": None}}, f"timeouts.idle_upstream: {DURATION_PROBLEM}"),
        ({"timeouts": {"client_header": 0}}, "timeouts.client_header: must be greater than 0"),
        ({"timeouts": {"client_idle": "0ms"}}, "timeouts.client_idle: must be greater than 0"),
        ({"timeouts": {"connect": -2}}, "timeouts.connect: must be greater than 0"),
        # limits
        ({"limits": {"max_body_bytes": "lots"}}, f"limits.max_body_bytes: {SIZE_PROBLEM}"),
        ({"limits": {"max_body_bytes": -1}}, f"limits.max_body_bytes: {SIZE_PROBLEM}"),
        ({"limits": {"max_body_bytes": 1.5}}, f"limits.max_body_bytes: {SIZE_PROBLEM}"),
        ({"limits": {"max_header_bytes": False}}, f"limits.max_header_bytes: {SIZE_PROBLEM}"),
        (
            {"limits": {"max_header_bytes": 0}},
            "limits.max_header_bytes: must be greater than 0 (only max_body_bytes may be 0, meaning unlimited)",
        ),
        (
            {"limits": {"max_uri_bytes": "0KiB"}},
            "limits.max_uri_bytes: must be greater than 0 (only max_body_bytes may be 0, meaning unlimited)",
        ),
        ({"limits": {"max_uri_bytes": "64KiB"}}, "limits.max_uri_bytes: must not exceed max_header_bytes (32768)"),
        (
            {"limits": {"max_header_bytes": "4KiB", "max_uri_bytes": 4097}},
            "limits.max_uri_bytes: must not exceed max_header_bytes (4096)",
        ),
        # upstream
        ({"upstream": {"max_idle_per_backend": 0}}, "upstream.max_idle_per_backend: must be an integer from 1 to 10000"),
        ({"upstream": {"max_idle_per_backend": 10001}}, "upstream.max_idle_per_backend: must be an integer from 1 to 10000"),
        # forwarded
        ({"forwarded": {"trusted_proxies": "10.0.0.0/8"}}, "forwarded.trusted_proxies: must be a list of IP networks"),
        (
            {"forwarded": {"trusted_proxies": ["10.0.0.0/8", "10.0.0.0/33"]}},
            'forwarded.trusted_proxies[1]: must be an IP network like "10.0.0.0/8" or an IP address',
        ),
        (
            {"forwarded": {"trusted_proxies": [167772160]}},
            'forwarded.trusted_proxies[0]: must be an IP network like "10.0.0.0/8" or an IP address',
        ),
        (
            {"forwarded": {"trusted_proxies": ["localhost"]}},
            'forwarded.trusted_proxies[0]: must be an IP network like "10.0.0.0/8" or an IP address',
        ),
        # access_log, log
        ({"access_log": {"enabled": "yes"}}, "access_log.enabled: must be true or false"),
        ({"access_log": {"enabled": 1}}, "access_log.enabled: must be true or false"),
        ({"access_log": {"format": "xml"}}, 'access_log.format: must be one of "text", "json"'),
        ({"access_log": {"format": "JSON"}}, 'access_log.format: must be one of "text", "json"; did you mean "json"?'),
        ({"access_log": {"path": ""}}, "access_log.path: must be a non-empty string"),
        ({"log": {"format": 1}}, 'log.format: must be one of "text", "json"'),
        ({"log": {"path": None}}, "log.path: must be a non-empty string"),
        ({"log": {"level": "warning"}}, 'log.level: must be one of "debug", "info", "warn", "error"; did you mean "warn"?'),
        ({"log": {"level": "trace"}}, 'log.level: must be one of "debug", "info", "warn", "error"'),
        # health, alerts
        ({"health": []}, "health: must be an object"),
        ({"alerts": "email"}, "alerts: must be an object"),
        ({"health": {1: "x"}}, "health: keys must be strings, not 1"),
    ],
)
def test_error_messages(data, message):
    assert error_of(data) == message


@pytest.mark.parametrize(
    "data, message",
    [
        ({"timeouts": {"conect": "1s"}}, 'timeouts.conect: unknown key; did you mean "connect"?'),
        ({"listn": 8080}, 'listn: unknown key; did you mean "listen"?'),
        ({"backend": []}, 'backend: unknown key; did you mean "backends"?'),
        ({"limits": {"max_body_size": 1}}, 'limits.max_body_size: unknown key; did you mean "max_body_bytes"?'),
        ({"manager": {"basePort": 1}}, 'manager.basePort: unknown key; did you mean "base_port"?'),
        ({"access_log": {"enable": False}}, 'access_log.enable: unknown key; did you mean "enabled"?'),
        ({"upstream": {"pool": 3}}, "upstream.pool: unknown key; known keys: max_idle_per_backend"),
        (
            {"zzz": 1},
            "zzz: unknown key; known keys: listen, strategy, backends, spawn, manager, timeouts, limits, "
            "retries, retry_on, upstream, forwarded, access_log, log, health, alerts, services, routes, tls, h2c",
        ),
        # "$schema" is a comment at the top level only.
        ({"log": {"$schema": "x"}}, "log.$schema: unknown key; known keys: format, path, level"),
    ],
)
def test_unknown_keys(data, message):
    assert error_of(data) == message


def test_first_error_in_document_order_is_reported():
    assert error_of({"retries": -1, "spawn": -1}) == "retries: must be an integer from 0 to 10"
    assert error_of({"spawn": -1, "retries": -1}) == "spawn: must be an integer from 0 to 64"
    assert (
        error_of({"timeouts": {"response": 0, "connect": "x"}, "listen": 0})
        == "timeouts.response: must be greater than 0"
    )
    # A bad URL after a duplicate: the duplicate comes first.
    assert (
        error_of({"backends": ["http://a:1", "http://a:1", "ftp://b"]})
        == "backends[1].url: duplicate of backends[0]"
    )


def test_comment_keys_are_ignored_everywhere():
    config = parse_config(
        {
            "_comment": "x",
            "$schema": "y",
            "timeouts": {"_comment": "z", "connect": "1s"},
            "backends": [{"_comment": "w", "url": "http://a:1"}],
        }
    )
    assert config.timeouts.connect == 1.0
    assert config.backends == (BackendConfig.from_url("http://a:1"),)


def test_top_level_must_be_an_object():
    with pytest.raises(ConfigError) as caught:
        parse_config([], source="my.json")
    assert str(caught.value) == "my.json: must be a JSON object, not a list"
    assert error_of(None) == "config: must be a JSON object, not null"
    assert error_of("listen") == "config: must be a JSON object, not a string"


# --- Backends ------------------------------------------------------------------------


def test_backend_forms():
    config = parse_config(
        {
            "backends": [
                "http://127.0.0.1:8081",
                "http://127.0.0.1:8082/",
                {"url": "https://backend.internal", "weight": 3},
                {"backup": True, "url": "http://[::1]:8083"},
            ]
        }
    )
    assert [(b.backend.url, b.backend.weight, b.backup) for b in config.backends] == [
        ("http://127.0.0.1:8081", 1, False),
        ("http://127.0.0.1:8082", 1, False),
        ("https://backend.internal:443", 3, False),
        ("http://[::1]:8083", 1, True),
    ]


@pytest.mark.parametrize(
    "backends, message",
    [
        (["http://a:1", "http://a:1"], "backends[1].url: duplicate of backends[0]"),
        (["http://a:1", "http://b:2", {"url": "http://a:1", "weight": 5}], "backends[2].url: duplicate of backends[0]"),
        # Same host and port whatever the scheme or default port spelling.
        (["http://a:80", "http://a"], "backends[1].url: duplicate of backends[0]"),
        (["http://a:443", "https://a"], "backends[1].url: duplicate of backends[0]"),
        (["http://a:1", "http://b:1", "http://b:1"], "backends[2].url: duplicate of backends[1]"),
    ],
)
def test_duplicate_backends(backends, message):
    assert error_of({"backends": backends}) == message


def test_duplicate_backends_built_in_code():
    backend = BackendConfig.from_url("http://a:1")
    with pytest.raises(ConfigError) as caught:
        Config(backends=[backend, BackendConfig.from_url("http://b:1"), backend])
    assert str(caught.value) == "backends[2].url: duplicate of backends[0]"


# --- Strategy --------------------------------------------------------------------------


def test_strategy_by_name_and_object():
    assert parse_config({"strategy": "round_robin"}).strategy == StrategyConfig("round_robin")
    assert parse_config({"strategy": {"name": "round_robin"}}).strategy == StrategyConfig("round_robin")


def test_unknown_strategy_lists_the_known_names():
    known = ", ".join(default_registry().names())
    assert "round_robin" in known
    assert error_of({"strategy": "fastest"}) == f"strategy: unknown strategy 'fastest'; known strategies: {known}"
    assert error_of({"strategy": {"name": "fastest"}}) == (
        f"strategy.name: unknown strategy 'fastest'; known strategies: {known}"
    )
    assert error_of({"strategy": "round_robbin"}) == (
        f"strategy: unknown strategy 'round_robbin'; known strategies: {known}; did you mean \"round_robin\"?"
    )


def test_strategy_option_errors_are_prefixed():
    # The problem's wording is the strategy's own; the path is ours.
    assert error_of({"strategy": {"name": "round_robin", "seed": 1}}).startswith("strategy.seed: unknown option")


def test_strategy_options_are_validated_by_the_factory(monkeypatch):
    """
    Options reach the factory (without C{name} and comments) with a seeded
    random and a fake clock; its option errors come back as C{strategy.*}.
    """
    import random as random_module

    from heimdall.strategies import registry as registry_module
    from heimdall.strategies import round_robin
    from heimdall.strategies._base import StrategyFactory

    calls = []

    def non_negative(value):
        if value < 0:
            raise ValueError("must not be negative")
        return value

    def build(options, random, clock):
        factor = options.take("factor", 1, non_negative)
        keys = options.take("keys", [])
        options.done()
        if factor == 0:
            raise ValueError("factor 0 is silly")
        calls.append((factor, keys, random.random(), clock.seconds()))
        return object()

    registry = registry_module.StrategyRegistry()
    registry.register(round_robin.factory)
    registry.register(StrategyFactory(name="scaled", description="for tests", build=build))
    monkeypatch.setattr(registry_module, "default_registry", lambda: registry)

    config = parse_config({"strategy": {"name": "scaled", "_c": "x", "factor": 2, "keys": ["a"]}})
    assert config.strategy == StrategyConfig("scaled", {"factor": 2, "keys": ["a"]})
    assert calls == [(2, ["a"], random_module.Random(0).random(), 0)]
    assert error_of({"strategy": {"name": "scaled", "factor": -1}}) == (
        "strategy.factor: must not be negative"
    )
    assert error_of({"strategy": {"name": "scaled", "factr": 1}}) == (
        "strategy.factr: unknown option (known options: factor, keys)"
    )
    assert error_of({"strategy": {"name": "scaled", "factor": 0}}) == (
        "strategy: invalid options for 'scaled': factor 0 is silly"
    )
    assert error_of({"strategy": "nope"}) == "strategy: unknown strategy 'nope'; known strategies: round_robin, scaled"


def test_strategy_options_are_read_only_copies():
    options = {"keys": ["a"]}
    strategy = StrategyConfig("round_robin", options)
    options["keys"].append("b")
    options["extra"] = 1
    assert strategy.options == {"keys": ["a"]}
    with pytest.raises(TypeError):
        strategy.options["extra"] = 1  # type: ignore[index]


# --- Values built in code --------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Config(listen="http:80"), "listen: unknown endpoint type 'http'; known types: ssl, systemd, tcp, tcp6, unix"),
        (lambda: Config(spawn=100), "spawn: must be an integer from 0 to 64"),
        (lambda: Config(retries=True), "retries: must be an integer from 0 to 10"),
        (lambda: Config(strategy=3), "strategy: must be a strategy name or a StrategyConfig"),
        (lambda: Config(timeouts={"connect": 1}), "timeouts: must be a TimeoutsConfig"),
        (lambda: Config(backends=["http://a:1"]), "backends[0]: must be a BackendConfig"),
        (lambda: Config(health=[]), "health: must be a HealthConfig"),
        (lambda: TimeoutsConfig(connect=0), "connect: must be greater than 0"),
        (lambda: TimeoutsConfig(response="fast"), f"response: {DURATION_PROBLEM}"),
        (lambda: LimitsConfig(max_body_bytes=-5), f"max_body_bytes: {SIZE_PROBLEM}"),
        (lambda: LimitsConfig(max_uri_bytes=64 * 1024), "max_uri_bytes: must not exceed max_header_bytes (32768)"),
        (lambda: ManagerConfig(command=("app",)), 'command: must contain "{port}" in at least one argument'),
        (lambda: ManagerConfig(base_port=True), "base_port: must be an integer from 1 to 65535"),
        (lambda: UpstreamConfig(max_idle_per_backend=0), "max_idle_per_backend: must be an integer from 1 to 10000"),
        (lambda: ForwardedConfig(trusted_proxies=["nope"]), 'trusted_proxies[0]: must be an IP network like "10.0.0.0/8" or an IP address'),
        (lambda: AccessLogConfig(enabled=None), "enabled: must be true or false"),
        (lambda: LogConfig(level="verbose"), 'level: must be one of "debug", "info", "warn", "error"'),
        (lambda: StrategyConfig(""), "name: must be a non-empty string"),
        (lambda: StrategyConfig("x", options=[1]), "options: must be an object"),
        (lambda: BackendConfig("http://a:1"), "backend: must be a heimdall.pool.pool.Backend"),
        (lambda: BackendConfig(Backend("http", "a", 1), backup=1), "backup: must be true or false"),
    ],
)
def test_bad_values_built_in_code_fail(build, message):
    with pytest.raises(ConfigError) as caught:
        build()
    assert str(caught.value) == message


def test_values_built_in_code_accept_units_and_lists():
    assert TimeoutsConfig(connect="250ms").connect == 0.25
    assert LimitsConfig(max_body_bytes="1MiB").max_body_bytes == 1024 * 1024
    assert ManagerConfig(command=["app", "{port}"]).command == ("app", "{port}")
    assert ManagerConfig(listen=9999).listen == "tcp:9999:interface=127.0.0.1"
    assert Config(strategy="round_robin").strategy == StrategyConfig("round_robin")
    assert Config(listen=80).listen == "tcp:80:interface=127.0.0.1"
    backends = [BackendConfig.from_url("http://a:1", weight=2, backup=True)]
    assert Config(backends=backends).backends == tuple(backends)
    assert ForwardedConfig(trusted_proxies=["10.1.2.3/8"]).trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)


def test_evolve_keeps_validating():
    config = Config()
    assert attrs.evolve(config, retries=5).retries == 5
    with pytest.raises(ConfigError, match="^retries: must be an integer from 0 to 10$"):
        attrs.evolve(config, retries=50)
    assert attrs.evolve(config.strategy, name="round_robin") == config.strategy


def test_token_is_not_in_repr():
    manager = ManagerConfig(token="s3cret")
    assert "s3cret" not in repr(manager)
    assert manager.token == "s3cret"


def test_forwarded_is_trusted():
    forwarded = ForwardedConfig(trusted_proxies=["10.0.0.0/8", "::1"])
    assert forwarded.is_trusted("10.2.3.4")
    assert forwarded.is_trusted("::ffff:10.2.3.4")
    assert forwarded.is_trusted("::1")
    assert not forwarded.is_trusted("11.0.0.1")
    assert not forwarded.is_trusted("not an address")
    assert not ForwardedConfig().is_trusted("127.0.0.1")


# --- Overrides ---------------------------------------------------------------------------


def test_with_overrides():
    config = Config()
    assert config.with_overrides() == config
    changed = config.with_overrides(listen="tcp:0", manager_listen="unix:/tmp/m.sock")
    assert changed.listen == "tcp:0"
    assert changed.manager.listen == "unix:/tmp/m.sock"
    assert changed.manager.base_port == config.manager.base_port
    assert config.listen == "tcp:8080:interface=127.0.0.1"  # unchanged
    assert config.with_overrides(manager_listen="tcp:1").listen == config.listen


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"listen": "8080"}, '--listen: unknown endpoint type \'8080\'; known types: ssl, systemd, tcp, tcp6, unix (for a port, write "tcp:8080")'),
        ({"listen": ""}, "--listen: must not be empty"),
        ({"manager_listen": "tcp:x"}, "--manager-listen: port must be a number from 0 to 65535, not 'x'"),
    ],
)
def test_with_overrides_rejects_bad_endpoints(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        Config().with_overrides(**kwargs)
    assert str(caught.value) == message


# --- load_config -------------------------------------------------------------------------------


def test_load_config_file(tmp_path):
    config = load_text(tmp_path, json.dumps({"listen": "tcp:0", "backends": ["http://127.0.0.1:8081"]}))
    assert config.listen == "tcp:0"
    assert len(config.backends) == 1


def test_load_config_with_byte_order_mark(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"spawn": 1}')
    assert load_config(str(path)).spawn == 1


def test_load_config_missing_file(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read the file: No such file or directory"
    assert caught.value.path == path


def test_load_config_directory(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(str(tmp_path))


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"log": {"path": "\xff"}}')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: not valid UTF-8 (at byte 18)"


def test_load_config_invalid_json_names_line_and_column(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, '{\n  "spawn": 3,\n  "retries": 2,\n}\n')
    assert str(caught.value) == (
        f"{tmp_path / 'config.json'}: invalid JSON at line 4 column 1: "
        "Expecting property name enclosed in double quotes"
    )


def test_load_config_top_level_not_an_object(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "[1, 2]")
    assert str(caught.value) == f"{tmp_path / 'config.json'}: must be a JSON object, not a list"


def test_load_config_field_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, '{"timeouts": {"conect": "1s"}}')
    assert str(caught.value) == 'timeouts.conect: unknown key; did you mean "connect"?'


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"spawn": 1, "spawn": 2}', "spawn: duplicate key"),
        ('{"timeouts": {"connect": "1s", "connect": "2s"}}', "timeouts.connect: duplicate key"),
        ('{"backends": [{"url": "http://a:1", "url": "http://b:1"}]}', "backends[0].url: duplicate key"),
        ('{"strategy": {"name": "round_robin", "name": "x"}}', "strategy.name: duplicate key"),
    ],
)
def test_load_config_rejects_duplicate_keys(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value) == message


def test_health_and_alerts_are_parsed_with_the_rest(tmp_path):
    # Once, by load_config: a bad health key fails the load, not the start.
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, '{"health": {"checks": [{"path": "/"}]}}')
    assert str(caught.value).startswith("health.checks: unknown key")
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, '{"alerts": {"flap_window": "1s", "flap_window": "2s"}}')
    assert str(caught.value) == "alerts.flap_window: duplicate key"


def test_public_names():
    for name in config_module.__all__:
        assert hasattr(config_module, name), name


def test_retry_on():
    assert parse_config({"retry_on": ["5xx", "timeout"]}).retry_on == ("5xx", "timeout")
    for value, message in [
        ("5xx", 'retry_on: must be a list of "5xx" and "timeout"'),
        (["5xx", "reset"], 'retry_on[1]: must be one of "5xx", "timeout"'),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"retry_on": value})
        assert str(info.value).startswith(message)
