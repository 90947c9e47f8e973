"""
The C{health} and C{alerts} sections of the configuration, parsed and
validated into frozen attrs values.

L{parse_health} and L{parse_alerts} turn them into L{HealthConfig} and
L{AlertsConfig}; L{heimdall.config.model.parse_config} calls them, so that
L{heimdall.config.model.Config} holds both sections typed.  The rules are those of the rest of the config: strict
types, durations as C{"500ms"}/C{"2s"}/numbers of seconds, unknown keys are
errors with a did-you-mean suggestion, keys starting with C{_} are comments.
Errors are L{ConfigError}s whose path starts with the section:
C{health.interval: must be a duration like "500ms", "2s" or "1m", or a
number of seconds}, C{health.backends["127.0.0.1:8081"].rise: ...},
C{alerts.webhooks[0].url: ...}.

The shape, with every default::

    "health": {
      "type": "http",               # "http", "tcp" or "none" (no active checks)
      "method": "GET", "path": "/health",
      "expect_status": ["200-399"], # codes, "2xx"-style classes or "200-299" ranges
      "body_regex": null,           # a regular expression the body must match
      "headers": {},                # e.g. {"Host": "app.example.com"}
      "interval": "2s",             # between checks of an up backend
      "down_interval": null,        # between checks of a down or ejected backend; null: min(1s, interval)
      "jitter": "10%",              # random delay before each check, of the interval
      "timeout": "1s",
      "rise": 2, "fall": 3,
      "slow_start": "0s",           # weight ramp after recovery; 0: none
      "backends": {"127.0.0.1:8081": {"path": "/ready", "interval": "5s"}},
      "outlier": {
        "enabled": true,
        "consecutive_failures": 5,          # resets, timeouts, bad responses (and 5xx if counted)
        "consecutive_connection_failures": 1,  # connect errors, resets before any response byte
        "count_5xx": false,
        "base_ejection_time": "30s", "max_ejection_time": "300s",
        "max_ejection_percent": 50
      },
      "panic": "fail"               # or "route"
    }

    "alerts": {
      "flap_window": "60s",         # at most one alert per backend per window; 0: no damping
      "events": ["up", "down", "ejected", "returned", "added", "removed", "all_down", "recovered"],
      "webhooks": [{"url": "https://hooks.example.com/x", "timeout": "5s",
                    "retries": 3, "backoff": "1s", "headers": {}}],
      "commands": [{"command": ["/usr/local/bin/page-oncall"], "timeout": "10s"}]
    }
"""

from __future__ import annotations

import re
import types
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import attrs

from heimdall.config.fields import (
    boolean,
    duration,
    integer,
    lenient,
    one_of,
    parse_duration,
    regular_expression,
    seconds,
    tuple_from_list,
    validator,
)
from heimdall.config.reader import build, join, read_object
from heimdall.errors import ConfigError
from heimdall.pool.pool import PANIC_MODES, Backend
from heimdall.pool.values import EventKind

__all__ = [
    "ALERT_EVENT_KINDS",
    "AlertsConfig",
    "CheckSettings",
    "CommandConfig",
    "HealthConfig",
    "OutlierConfig",
    "PoolSettings",
    "RetryBudgetConfig",
    "WebhookConfig",
    "parse_alerts",
    "parse_health",
]

#: The pool events an alert may be sent for.
_E = EventKind
ALERT_EVENT_KINDS = tuple(
    kind.value
    for kind in (_E.UP, _E.DOWN, _E.EJECTED, _E.RETURNED, _E.ADDED, _E.REMOVED, _E.ALL_DOWN, _E.RECOVERED, _E.ADMIN, _E.WEIGHT)
)
_DEFAULT_ALERT_EVENTS = ALERT_EVENT_KINDS[:-2]  # not admin and weight

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

# --- checks: each returns a problem, or None ---------------------------------


def _problem(field: str, problem: Optional[str]) -> None:
    if problem is not None:
        raise ConfigError(field, problem)


# --- value converters -----------------------------------------------------------

_JITTER_PROBLEM = 'must be a percentage of the interval like "10%", or a fraction from 0 to 1'


def _jitter(value):
    if isinstance(value, str) and value.endswith("%"):
        try:
            return float(value[:-1]) / 100
        except ValueError:
            return value
    return value


def _check_jitter(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(attribute.name, _JITTER_PROBLEM)


_STATUS_PROBLEM = 'must be a list of status codes (200), classes ("2xx") or ranges ("200-399")'


def _status_ranges(value):
    """
    C{[200, "2xx", "300-302"]} to C{((200, 200), (200, 299), (300, 302))};
    anything unreadable is left for the validator.
    """
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return value
    ranges = []
    for item in value:
        if isinstance(item, tuple) and len(item) == 2:
            ranges.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            ranges.append((item, item))
        elif isinstance(item, str) and re.fullmatch(r"[1-5]xx", item, re.IGNORECASE):
            base = int(item[0]) * 100
            ranges.append((base, base + 99))
        elif isinstance(item, str) and re.fullmatch(r"[0-9]{3}(-[0-9]{3})?", item):
            low, _, high = item.partition("-")
            ranges.append((int(low), int(high or low)))
        else:
            return value
    return tuple(ranges)


def _check_statuses(instance, attribute, value) -> None:
    if not isinstance(value, tuple) or not value:
        raise ConfigError(attribute.name, _STATUS_PROBLEM)
    for index, item in enumerate(value):
        low, high = item if isinstance(item, tuple) and len(item) == 2 else (None, None)
        if not (isinstance(low, int) and isinstance(high, int) and 100 <= low <= high <= 599):
            raise ConfigError(f"{attribute.name}[{index}]", "must be a status from 100 to 599, or a range of them")


def _headers(value):
    if isinstance(value, Mapping):
        return tuple(value.items())
    return value


def _check_headers(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, "must be an object of header names to string values")
    for item in value:
        name, text = item if isinstance(item, tuple) and len(item) == 2 else (None, None)
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ConfigError(attribute.name, f"invalid header name {name!r}")
        if not isinstance(text, str) or "\r" in text or "\n" in text:
            raise ConfigError(f"{attribute.name}.{name}", "must be a string without CR or LF")


def _check_path(instance, attribute, value) -> None:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " \r\n"):
        raise ConfigError(attribute.name, 'must be a path starting with "/", without spaces')


def _check_method(instance, attribute, value) -> None:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ConfigError(attribute.name, 'must be an HTTP method like "GET" or "HEAD"')


# --- values -------------------------------------------------------------------------


@attrs.frozen
class CheckSettings:
    """
    How one backend is checked actively: the probe and its schedule.

    @ivar type: C{"http"}, C{"tcp"} (a connect, closed at once) or C{"none"}.
    @ivar expect_status: inclusive C{(low, high)} status ranges that pass.
    @ivar body_regex: if set, the response body (its first 64 KiB) must
        match it (C{re.search}).
    @ivar headers: C{(name, value)} pairs sent with the probe (a C{Host}
        here replaces the backend's address).
    @ivar interval: seconds between checks while the backend is up (or not
        yet known).
    @ivar down_interval: seconds between checks while it is down or
        ejected, so that a recovery is seen sooner; L{None} (the default):
        the smaller of 1 s and C{interval} (L{effective_down_interval}), so
        a short C{interval} is never slowed down while down.  It stays
        derived when C{interval} changes (a per-backend override).
    @ivar jitter: a random delay from 0 to this fraction of the current
        interval before each check, so that checks of many backends (and of
        many heimdalls) spread out.
    @ivar timeout: a check not finished by then fails.
    @ivar rise: consecutive passes that bring a down backend up.
    @ivar fall: consecutive failures that take an up backend down.
    @ivar slow_start: seconds over which the weight ramps up after a
        recovery or a runtime addition (0: none).
    """

    type: str = attrs.field(default="http", validator=validator(one_of("http", "tcp", "none")))
    method: str = attrs.field(default="GET", validator=_check_method)
    path: str = attrs.field(default="/health", validator=_check_path)
    expect_status: Tuple[Tuple[int, int], ...] = attrs.field(
        default=((200, 399),), converter=_status_ranges, validator=_check_statuses
    )
    body_regex: Optional[str] = attrs.field(default=None, validator=validator(regular_expression))
    headers: Tuple[Tuple[str, str], ...] = attrs.field(default=(), converter=_headers, validator=_check_headers)
    interval: float = duration(2.0)
    down_interval: Optional[float] = attrs.field(
        default=None,
        converter=attrs.converters.optional(lenient(parse_duration)),
        validator=attrs.validators.optional(validator(seconds(allow_zero=False))),
    )
    jitter: float = attrs.field(default=0.1, converter=_jitter, validator=_check_jitter)
    timeout: float = duration(1.0)
    rise: int = attrs.field(default=2, validator=validator(integer(1, 100)))
    fall: int = attrs.field(default=3, validator=validator(integer(1, 100)))
    slow_start: float = duration(0.0, allow_zero=True)

    @property
    def effective_down_interval(self) -> float:
        """
        The seconds between checks of a down or ejected backend.
        """
        return min(1.0, self.interval) if self.down_interval is None else self.down_interval

    def status_ok(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.expect_status)

    def describe_statuses(self) -> str:
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.expect_status)


@attrs.frozen
class OutlierConfig:
    """
    Passive checks: failures seen while proxying.

    @ivar consecutive_failures: resets, timeouts and malformed responses
        (and 5xx statuses with C{count_5xx}) in a row that eject a backend.
    @ivar consecutive_connection_failures: connection failures in a row
        (connect errors, resets before any response byte) that eject it
        (1: nothing listens there, or the process is dying).
    @ivar base_ejection_time: the first ejection's length; the n-th
        consecutive one lasts n times this, up to C{max_ejection_time}.
    @ivar max_ejection_percent: ejections stop once this share of the pool
        is ejected (one backend may always be ejected).
    """

    enabled: bool = attrs.field(default=True, validator=validator(boolean))
    consecutive_failures: int = attrs.field(default=5, validator=validator(integer(1, 1000)))
    consecutive_connection_failures: int = attrs.field(default=1, validator=validator(integer(1, 1000)))
    count_5xx: bool = attrs.field(default=False, validator=validator(boolean))
    base_ejection_time: float = duration(30.0)
    max_ejection_time: float = duration(300.0)
    max_ejection_percent: int = attrs.field(default=50, validator=validator(integer(0, 100)))

    def __attrs_post_init__(self) -> None:
        if self.max_ejection_time < self.base_ejection_time:
            raise ConfigError("max_ejection_time", "must not be less than base_ejection_time")


def _percent(value) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        return "must be a number from 0 to 100"
    return None


@attrs.frozen
class RetryBudgetConfig:
    """
    How many retries may be in flight at once: C{percent} of the live client
    requests, but at least C{min_retry_concurrency} (Envoy's retry budget).
    Retries after a refused connect or a stale keep-alive connection are
    not counted: they never reached a backend's application.

    The defaults (50%, 10) are roomier than Envoy's (20%, 3): when one of
    three backends dies under load, a third of the live requests fail at
    the same instant and each needs one retry; the budget is there for the
    outage where most backends fail, not for that.
    """

    percent: float = attrs.field(default=50, validator=validator(_percent))
    min_retry_concurrency: int = attrs.field(default=10, validator=validator(integer(0, 100000)))


def _normalise_backend_key(key: str) -> str:
    """
    A per-backend key may be C{host:port} or a URL; both mean the backend
    id C{host:port}.
    """
    if "://" in key:
        return Backend.from_url(key).id
    return Backend.from_url(f"http://{key}").id


@attrs.frozen
class PoolSettings:
    """
    What the pool itself does, configured under C{health} (the key
    C{"panic"}) but handed to the L{heimdall.pool.pool.BackendPool} where it
    is built.

    @ivar panic_mode: C{"fail"} or C{"route"} (see
        L{heimdall.pool.pool.BackendPool.panic_mode}).
    """

    panic_mode: str = attrs.field(default="fail", validator=validator(one_of(*PANIC_MODES)))


@attrs.frozen
class HealthConfig:
    """
    The whole C{health} section.

    @ivar check: the check settings of every backend without its own.
    @ivar backends: the settings of backends that override some, by
        backend id (C{host:port}), already merged over C{check}.
    @ivar outlier: the passive checks.
    @ivar retry_budget: for the proxy, which is where it is built.
    @ivar pool: for the pool (panic mode).
    """

    check: CheckSettings = attrs.field(factory=CheckSettings, validator=attrs.validators.instance_of(CheckSettings))
    backends: Mapping[str, CheckSettings] = attrs.field(
        factory=dict, converter=lambda v: types.MappingProxyType(dict(v)), hash=False
    )
    outlier: OutlierConfig = attrs.field(factory=OutlierConfig, validator=attrs.validators.instance_of(OutlierConfig))
    retry_budget: RetryBudgetConfig = attrs.field(
        factory=RetryBudgetConfig, validator=attrs.validators.instance_of(RetryBudgetConfig)
    )
    pool: PoolSettings = attrs.field(factory=PoolSettings, validator=attrs.validators.instance_of(PoolSettings))

    def for_backend(self, backend_id: str) -> CheckSettings:
        return self.backends.get(backend_id, self.check)


def _check_url(instance, attribute, value) -> None:
    if not isinstance(value, str):
        raise ConfigError(attribute.name, "must be an http or https URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(attribute.name, "must be an http or https URL")


def _check_argv(instance, attribute, value) -> None:
    if not isinstance(value, tuple) or not value:
        raise ConfigError(attribute.name, "must be a non-empty list of strings (the program and its arguments)")
    for index, argument in enumerate(value):
        if not isinstance(argument, str) or not argument and index == 0:
            raise ConfigError(f"{attribute.name}[{index}]", "must be a non-empty string")


@attrs.frozen
class WebhookConfig:
    """
    A webhook: each alert is POSTed as JSON to C{url}; a delivery that fails
    (no 2xx within C{timeout}) is retried C{retries} times, waiting
    C{backoff}, then twice that, and so on.
    """

    url: str = attrs.field(validator=_check_url)
    timeout: float = duration(5.0)
    retries: int = attrs.field(default=3, validator=validator(integer(0, 10)))
    backoff: float = duration(1.0)
    headers: Tuple[Tuple[str, str], ...] = attrs.field(default=(), converter=_headers, validator=_check_headers)


@attrs.frozen
class CommandConfig:
    """
    A program run for each alert, with the alert as JSON on its stdin; it is
    killed if it runs longer than C{timeout}.
    """

    command: Tuple[str, ...] = attrs.field(converter=tuple_from_list, validator=_check_argv)
    timeout: float = duration(10.0)


def _check_events(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, "must be a list of event names")
    for index, kind in enumerate(value):
        _problem(f"{attribute.name}[{index}]", one_of(*ALERT_EVENT_KINDS)(kind))


@attrs.frozen
class AlertsConfig:
    """
    The whole C{alerts} section.  The log sink is always on.

    @ivar flap_window: at most one alert per backend (and one for the pool)
        per window; what is held back is summarised at the window's end.
        0 sends every event.
    """

    flap_window: float = duration(60.0, allow_zero=True)
    events: Tuple[str, ...] = attrs.field(default=_DEFAULT_ALERT_EVENTS, converter=tuple_from_list, validator=_check_events)
    webhooks: Tuple[WebhookConfig, ...] = attrs.field(default=(), converter=tuple_from_list)
    commands: Tuple[CommandConfig, ...] = attrs.field(default=(), converter=tuple_from_list)


# --- parsing -------------------------------------------------------------------------


def _config_object(data: object, path: str, known) -> Dict[str, Any]:
    # Config sections allow comments (keys starting with "_").
    return read_object(data, path, known, comments=True)


_CHECK_KEYS = tuple(attrs.fields_dict(CheckSettings))


def _parse_check(values: Dict[str, Any], path: str, base: CheckSettings) -> CheckSettings:
    values = dict(values)
    if "headers" in values and not isinstance(values["headers"], Mapping):
        raise ConfigError(join(path, "headers"), "must be an object of header names to string values")
    return build(CheckSettings, values, path, base=base)


def parse_health(data: Optional[Mapping[str, Any]], path: str = "health") -> HealthConfig:
    """
    Validate the C{health} mapping (L{heimdall.config.model.Config.health}).

    @raise ConfigError: naming the first bad field, e.g.
        C{health.interval: must be a duration ...}.
    """
    entries = _config_object(
        data if data is not None else {}, path, _CHECK_KEYS + ("backends", "outlier", "retry_budget", "panic")
    )
    check = _parse_check({k: v for k, v in entries.items() if k in _CHECK_KEYS}, path, CheckSettings())
    outlier = OutlierConfig()
    if "outlier" in entries:
        outlier_path = join(path, "outlier")
        outlier = build(OutlierConfig, _config_object(entries["outlier"], outlier_path, attrs.fields_dict(OutlierConfig)), outlier_path)
    retry_budget = RetryBudgetConfig()
    if "retry_budget" in entries:
        budget_path = join(path, "retry_budget")
        retry_budget = build(
            RetryBudgetConfig, _config_object(entries["retry_budget"], budget_path, attrs.fields_dict(RetryBudgetConfig)), budget_path
        )
    backends: Dict[str, CheckSettings] = {}
    if "backends" in entries:
        backends_path = join(path, "backends")
        raw = entries["backends"]
        if not isinstance(raw, Mapping):
            raise ConfigError(backends_path, 'must be an object of backend ("host:port") to check settings')
        for key, overrides in raw.items():
            if isinstance(key, str) and key.startswith("_"):
                continue
            key_path = f"{backends_path}[{key!r}]".replace("'", '"')
            try:
                backend_id = _normalise_backend_key(key)
            except ValueError as e:
                raise ConfigError(key_path, f'must be a backend "host:port" or URL: {e}') from None
            if backend_id in backends:
                raise ConfigError(key_path, "names a backend already given")
            backends[backend_id] = _parse_check(_config_object(overrides, key_path, _CHECK_KEYS), key_path, check)
    panic = entries.get("panic", "fail")
    _problem(join(path, "panic"), one_of(*PANIC_MODES)(panic))
    pool = PoolSettings(panic_mode=panic)
    return HealthConfig(check=check, backends=backends, outlier=outlier, retry_budget=retry_budget, pool=pool)


def parse_alerts(data: Optional[Mapping[str, Any]], path: str = "alerts") -> AlertsConfig:
    """
    Validate the C{alerts} mapping (L{heimdall.config.model.Config.alerts}).

    @raise ConfigError: naming the first bad field, e.g.
        C{alerts.webhooks[0].url: must be an http or https URL}.
    """
    entries = _config_object(data if data is not None else {}, path, ("flap_window", "events", "webhooks", "commands"))
    values: Dict[str, Any] = {k: v for k, v in entries.items() if k in ("flap_window", "events")}
    if "events" in values and not isinstance(values["events"], list):
        raise ConfigError(join(path, "events"), "must be a list of event names")
    for key, cls in (("webhooks", WebhookConfig), ("commands", CommandConfig)):
        if key not in entries:
            continue
        list_path = join(path, key)
        items = entries[key]
        if not isinstance(items, list):
            raise ConfigError(list_path, "must be a list of objects")
        parsed = []
        for index, item in enumerate(items):
            item_path = f"{list_path}[{index}]"
            fields = _config_object(item, item_path, attrs.fields_dict(cls))
            required = [a.name for a in attrs.fields(cls) if a.default is attrs.NOTHING]
            for name in required:
                if name not in fields:
                    raise ConfigError(join(item_path, name), "is required")
            if "headers" in fields and not isinstance(fields["headers"], Mapping):
                raise ConfigError(join(item_path, "headers"), "must be an object of header names to string values")
            if "command" in fields and not isinstance(fields["command"], list):
                raise ConfigError(join(item_path, "command"), "must be a non-empty list of strings (the program and its arguments)")
            parsed.append(build(cls, fields, item_path))
        values[key] = tuple(parsed)
    return build(AlertsConfig, values, path)
