"""
The C{services} object of the config: each named service has its own
backends, strategy, health checks, retries, timeouts, upstream settings
and queue.

A L{ServiceConfig} leaves a setting at L{None} to take heimdall's
top-level one (L{ServiceConfig.resolved}); the top-level C{backends} and
C{strategy} are the service named C{default} (L{default_service}), so a
config without C{services} keeps its meaning.  Read from JSON, a
service's C{timeouts} and C{upstream} are merged key by key over the
top-level sections; its C{health} is a whole section of its own.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Tuple

import attrs

from heimdall.config.fields import duration, instance_of, integer, tuple_from_list, validator
from heimdall.config.health import HealthConfig, parse_health
from heimdall.config.model import (
    BackendConfig,
    Config,
    StrategyConfig,
    TimeoutsConfig,
    UpstreamConfig,
    check_backends,
    check_retry_on,
    parse_backends,
    parse_strategy,
    strategy_from_name,
)
from heimdall.config.reader import ReadError, build, entries, join, read_object, structure
from heimdall.config.tls import BackendTlsConfig, backend_tls_field
from heimdall.errors import ConfigError

__all__ = [
    "DEFAULT_SERVICE",
    "INHERITED",
    "QueueConfig",
    "SERVICE_TIMEOUTS",
    "ServiceConfig",
    "default_service",
    "parse_services",
    "service_configs",
]

#: The name of the service made of the top-level backends and strategy.
DEFAULT_SERVICE = "default"

#: The timeouts a service may set; the others belong to the listener.
SERVICE_TIMEOUTS = tuple(
    name
    for name in ("connect", "response", "idle_upstream", "upstream_read", "request", "tunnel_idle")
    if name in attrs.fields_dict(TimeoutsConfig)
)

#: The settings a service takes from the top level when it leaves them at None.
INHERITED = ("strategy", "health", "retries", "retry_on", "timeouts", "upstream")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@attrs.frozen
class QueueConfig:
    """
    Where a request waits when every eligible backend of its service is
    at its C{max_connections}: at most C{size} requests (0: no queue, such
    a request gets 503 at once), each for at most C{timeout}, first come
    first served.  A full queue or a timeout answers 503 with Retry-After.
    """

    size: int = attrs.field(default=0, validator=validator(integer(0, 1000000)))
    timeout: float = duration(5.0)


def _optional(cls, what):
    return attrs.validators.optional(validator(instance_of(cls, what)))


@attrs.frozen
class ServiceConfig:
    """
    One service.  L{None} takes the top-level setting.

    @ivar backends: its backends (the same URL may be in several services).
    @ivar queue: its request queue (L{QueueConfig}).
    @ivar tls: TLS to its https backends (L{BackendTlsConfig}), or None.
    """

    backends: Tuple[BackendConfig, ...] = attrs.field(
        default=(), converter=tuple_from_list, validator=check_backends
    )
    strategy: Optional[StrategyConfig] = attrs.field(
        default=None, converter=strategy_from_name, validator=_optional(StrategyConfig, "a strategy name or a StrategyConfig")
    )
    health: Optional[HealthConfig] = attrs.field(default=None, validator=_optional(HealthConfig, "a HealthConfig"))
    retries: Optional[int] = attrs.field(
        default=None, validator=attrs.validators.optional(validator(integer(0, 10)))
    )
    retry_on: Optional[Tuple[str, ...]] = attrs.field(
        default=None, converter=tuple_from_list, validator=attrs.validators.optional(check_retry_on)
    )
    timeouts: Optional[TimeoutsConfig] = attrs.field(
        default=None, validator=_optional(TimeoutsConfig, "a TimeoutsConfig")
    )
    upstream: Optional[UpstreamConfig] = attrs.field(
        default=None, validator=_optional(UpstreamConfig, "an UpstreamConfig")
    )
    queue: QueueConfig = attrs.field(factory=QueueConfig, validator=validator(instance_of(QueueConfig, "a QueueConfig")))
    #: TLS to its https:// backends (each backend's own C{tls} overrides it
    #: key by key); not inherited: the top-level C{tls} is TLS termination.
    tls: Optional[BackendTlsConfig] = backend_tls_field()

    def resolved(self, config: Config) -> "ServiceConfig":
        """
        A copy with every L{None} replaced by C{config}'s top-level setting.
        """
        return attrs.evolve(
            self, **{name: getattr(config, name) for name in INHERITED if getattr(self, name) is None}
        )


def default_service(config: Config) -> ServiceConfig:
    """
    The C{default} service: C{services.default} if the config has one
    (with the top-level backends if it has none), else the top-level
    backends and strategy.
    """
    explicit = config.services.get(DEFAULT_SERVICE)
    if explicit is not None:
        if not explicit.backends:
            explicit = attrs.evolve(explicit, backends=config.backends)
        return explicit.resolved(config)
    return ServiceConfig(backends=config.backends, strategy=config.strategy).resolved(config)


def service_configs(config: Config) -> "dict[str, ServiceConfig]":
    """
    Every service of C{config}, resolved, C{default} first.
    """
    services = {DEFAULT_SERVICE: default_service(config)}
    for name, service in config.services.items():
        if name != DEFAULT_SERVICE:
            services[name] = service.resolved(config)
    return services


def check_service_name(name: object, path: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(path, "a service name is 1-64 letters, digits, _ . - (starting with a letter or digit)")


# --- From JSON -----------------------------------------------------------------

_KEYS = tuple(attrs.fields_dict(ServiceConfig))


def _merged(cls, data: object, path: str, base, known) -> object:
    values = read_object(data, path, known, comments=True)
    return build(cls, values, path, base=base)


def _parse_service(data: object, path: str, config: Config) -> ServiceConfig:
    if not isinstance(data, Mapping):
        raise ReadError(path, 'must be an object like {"backends": ["http://127.0.0.1:8081"]}')
    values: dict = {}
    for key, value, key_path in entries(data, path, _KEYS):
        if key == "backends":
            value = parse_backends(value, key_path)
        elif key == "strategy":
            value = parse_strategy(value, key_path)
        elif key == "health":
            value = parse_health(value, key_path)
        elif key == "timeouts":
            if isinstance(value, Mapping):
                for name in value:
                    if name in attrs.fields_dict(TimeoutsConfig) and name not in SERVICE_TIMEOUTS:
                        raise ConfigError(
                            join(key_path, name), "applies to the listener: set it in the top-level timeouts"
                        )
            value = _merged(TimeoutsConfig, value, key_path, config.timeouts, SERVICE_TIMEOUTS)
        elif key == "upstream":
            value = _merged(UpstreamConfig, value, key_path, config.upstream, attrs.fields_dict(UpstreamConfig))
        elif key == "queue":
            value = structure(QueueConfig, value, key_path)
        elif key == "tls":
            value = structure(BackendTlsConfig, value, key_path)
        values[key] = value
    return build(ServiceConfig, values, path)


def parse_services(data: object, path: str, config: Config) -> Mapping[str, ServiceConfig]:
    """
    The C{services} object from JSON, with C{config}'s top-level sections
    as the base of each service's C{timeouts} and C{upstream}.
    """
    if not isinstance(data, Mapping):
        raise ReadError(path, 'must be an object of service names to services, like {"api": {"backends": [...]}}')
    duplicates = getattr(data, "duplicate_keys", frozenset())
    services = {}
    for name, value in data.items():
        if isinstance(name, str) and name.startswith("_"):
            continue
        name_path = join(path, str(name))
        check_service_name(name, name_path)
        if name in duplicates:
            raise ReadError(name_path, "duplicate key")
        services[name] = _parse_service(value, name_path, config)
    if DEFAULT_SERVICE in services and config.backends and services[DEFAULT_SERVICE].backends:
        raise ConfigError(
            join(join(path, DEFAULT_SERVICE), "backends"),
            "give the default backends at the top level or in services.default, not both",
        )
    return services
