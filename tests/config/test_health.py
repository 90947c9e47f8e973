"""
L{heimdall.config.health}: parsing the C{health} and C{alerts} sections.
"""

from __future__ import annotations

import pytest

from heimdall.config.model import parse_config
from heimdall.errors import ConfigError
from heimdall.config.health import (
    AlertsConfig,
    CheckSettings,
    HealthConfig,
    OutlierConfig,
    PoolSettings,
    WebhookConfig,
    parse_alerts,
    parse_health,
)

DURATION = 'must be a duration like "500ms", "2s" or "1m", or a number of seconds'


def test_defaults():
    health = parse_health({})
    assert health == parse_health(None)
    check = health.check
    assert (check.type, check.method, check.path) == ("http", "GET", "/health")
    assert (check.interval, check.effective_down_interval, check.timeout, check.jitter) == (2.0, 1.0, 1.0, 0.1)
    assert check.down_interval is None  # derived from the interval
    assert (check.rise, check.fall, check.slow_start) == (2, 3, 0.0)
    assert check.expect_status == ((200, 399),) and check.status_ok(302) and not check.status_ok(404)
    outlier = health.outlier
    assert (outlier.consecutive_failures, outlier.consecutive_connection_failures, outlier.count_5xx) == (5, 1, False)
    assert (outlier.base_ejection_time, outlier.max_ejection_time, outlier.max_ejection_percent) == (30, 300, 50)
    assert health.pool.panic_mode == "fail"
    alerts = parse_alerts({})
    assert alerts == AlertsConfig() and alerts.flap_window == 60 and alerts.webhooks == ()


def test_a_full_health_section_from_the_config_file():
    config = parse_config(
        {
            "health": {
                "_comment": "ignored",
                "type": "http",
                "method": "HEAD",
                "path": "/ready",
                "expect_status": [200, "3xx", "401-403"],
                "body_regex": "ok",
                "headers": {"Host": "app.example"},
                "interval": "5s",
                "down_interval": "500ms",
                "jitter": "20%",
                "timeout": 2,
                "rise": 3,
                "fall": 2,
                "slow_start": "30s",
                "backends": {"127.0.0.1:8081": {"path": "/slow", "rise": 5}, "http://[::1]:80": {"type": "tcp"}},
                "outlier": {"count_5xx": True, "base_ejection_time": "10s", "max_ejection_percent": 34},
                "panic": "route",
            }
        }
    )
    health = config.health
    check = health.check
    assert check.method == "HEAD" and check.path == "/ready" and check.headers == (("Host", "app.example"),)
    assert check.expect_status == ((200, 200), (300, 399), (401, 403)) and check.describe_statuses() == "200,300-399,401-403"
    assert (check.interval, check.down_interval, check.jitter, check.timeout) == (5, 0.5, 0.2, 2)
    assert (check.rise, check.fall, check.slow_start) == (3, 2, 30)
    special = health.for_backend("127.0.0.1:8081")
    assert special.path == "/slow" and special.rise == 5 and special.interval == 5  # merged over the globals
    assert health.for_backend("[::1]:80").type == "tcp"
    assert health.for_backend("10.0.0.1:80") is check
    assert health.outlier.count_5xx and health.outlier.base_ejection_time == 10
    assert health.pool.panic_mode == "route"


@pytest.mark.parametrize(
    "section, path, problem",
    [
        ({"interval": "soon"}, "health.interval", DURATION),
        ({"interval": 0}, "health.interval", "must be greater than 0"),
        ({"intervl": "1s"}, "health.intervl", 'unknown key; did you mean "interval"?'),
        ({"type": "icmp"}, "health.type", 'must be one of "http", "tcp", "none"'),
        ({"rise": 0}, "health.rise", "must be an integer from 1 to 100"),
        ({"fall": True}, "health.fall", "must be an integer from 1 to 100"),
        ({"jitter": "150%"}, "health.jitter", 'must be a percentage of the interval like "10%", or a fraction from 0 to 1'),
        ({"path": "health"}, "health.path", 'must be a path starting with "/", without spaces'),
        ({"expect_status": ["6xx"]}, "health.expect_status", 'must be a list of status codes (200), classes ("2xx") or ranges ("200-399")'),
        ({"expect_status": ["300-200"]}, "health.expect_status[0]", "must be a status from 100 to 599, or a range of them"),
        ({"body_regex": "("}, "health.body_regex", "invalid regular expression: missing ), unterminated subpattern at position 0"),
        ({"headers": ["Host"]}, "health.headers", "must be an object of header names to string values"),
        ({"headers": {"Bad Name": "x"}}, "health.headers", "invalid header name 'Bad Name'"),
        ({"backends": {"127.0.0.1:8081": {"rise": 0}}}, 'health.backends["127.0.0.1:8081"].rise', "must be an integer from 1 to 100"),
        ({"backends": {"127.0.0.1:8081": {"outlier": {}}}}, 'health.backends["127.0.0.1:8081"].outlier', "unknown key"),
        ({"backends": {"ftp://x:1": {}}}, 'health.backends["ftp://x:1"]', 'must be a backend "host:port" or URL: scheme must be http or https'),
        ({"backends": []}, "health.backends", 'must be an object of backend ("host:port") to check settings'),
        ({"outlier": {"max_ejection_percent": 101}}, "health.outlier.max_ejection_percent", "must be an integer from 0 to 100"),
        ({"outlier": {"base_ejection_time": "1m", "max_ejection_time": "10s"}}, "health.outlier.max_ejection_time", "must not be less than base_ejection_time"),
        ({"outlier": "on"}, "health.outlier", "must be an object"),
        ({"panic": "rout"}, "health.panic", 'must be one of "fail", "route"; did you mean "route"?'),
    ],
)
def test_health_errors_name_the_field(section, path, problem):
    with pytest.raises(ConfigError) as caught:
        parse_health(section)
    assert caught.value.path == path
    assert caught.value.problem.startswith(problem)


@pytest.mark.parametrize(
    "section, path, problem",
    [
        ({"flap_window": "-1s"}, "alerts.flap_window", DURATION),
        ({"events": ["dwn"]}, "alerts.events[0]", 'must be one of "up", "down"'),
        ({"events": "down"}, "alerts.events", "must be a list of event names"),
        ({"webhooks": {}}, "alerts.webhooks", "must be a list of objects"),
        ({"webhooks": [{}]}, "alerts.webhooks[0].url", "is required"),
        ({"webhooks": [{"url": "ftp://x"}]}, "alerts.webhooks[0].url", "must be an http or https URL"),
        ({"webhooks": [{"url": "http://x", "retries": 11}]}, "alerts.webhooks[0].retries", "must be an integer from 0 to 10"),
        ({"webhooks": [{"url": "http://x", "timout": "1s"}]}, "alerts.webhooks[0].timout", 'unknown key; did you mean "timeout"?'),
        ({"commands": [{"command": "notify"}]}, "alerts.commands[0].command", "must be a non-empty list of strings"),
        ({"commands": [{"command": [""]}]}, "alerts.commands[0].command[0]", "must be a non-empty string"),
        ({"sms": []}, "alerts.sms", "unknown key"),
    ],
)
def test_alerts_errors_name_the_field(section, path, problem):
    with pytest.raises(ConfigError) as caught:
        parse_alerts(section)
    assert caught.value.path == path
    assert caught.value.problem.startswith(problem)


def test_values_built_in_code_validate_too():
    with pytest.raises(ConfigError, match="^interval: "):
        CheckSettings(interval=-1)
    with pytest.raises(ConfigError, match="^max_ejection_percent: "):
        OutlierConfig(max_ejection_percent=-1)
    with pytest.raises(ConfigError, match="^url: "):
        WebhookConfig(url="nope")
    assert CheckSettings(interval="250ms").interval == 0.25
    config = HealthConfig(backends={"a:1": CheckSettings()})
    with pytest.raises(TypeError):
        config.backends["b:2"] = CheckSettings()  # read-only


def test_retry_budget_section():
    config = parse_health({"retry_budget": {"percent": 20, "min_retry_concurrency": 3}})
    assert (config.retry_budget.percent, config.retry_budget.min_retry_concurrency) == (20, 3)
    assert parse_health({}).retry_budget.percent == 50
    with pytest.raises(ConfigError) as info:
        parse_health({"retry_budget": {"percent": 150}})
    assert str(info.value).startswith("health.retry_budget.percent: must be a number from 0 to 100")


def test_panic_mode_is_a_pool_setting():
    assert parse_health({"panic": "route"}).pool == PoolSettings(panic_mode="route")
    with pytest.raises(ConfigError) as caught:
        parse_health({"panic": "sometimes"})
    assert str(caught.value).startswith('health.panic: must be one of "fail", "route"')


def test_down_interval_defaults_to_the_smaller_of_1s_and_the_interval():
    assert parse_health({"interval": "500ms"}).check.effective_down_interval == 0.5
    assert parse_health({"interval": "5s"}).check.effective_down_interval == 1.0
    assert parse_health({"interval": "500ms", "down_interval": "2s"}).check.effective_down_interval == 2.0
    assert parse_health({"down_interval": None}).check.effective_down_interval == 1.0
    # A backend's own interval gives it its own derived down_interval...
    health = parse_health({"interval": "5s", "backends": {"127.0.0.1:1": {"interval": "300ms"}}})
    assert health.for_backend("127.0.0.1:1").effective_down_interval == 0.3
    # ... unless the section set one.
    health = parse_health({"down_interval": "2s", "backends": {"127.0.0.1:1": {"interval": "300ms"}}})
    assert health.for_backend("127.0.0.1:1").effective_down_interval == 2.0
    with pytest.raises(ConfigError) as info:
        parse_health({"down_interval": "0s"})
    assert (info.value.path, info.value.problem) == ("health.down_interval", "must be greater than 0")
