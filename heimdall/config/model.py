"""
heimdall's configuration: a JSON file loaded into frozen attrs values.

L{load_config} reads a file, L{parse_config} validates an already-parsed
mapping; both return a L{Config}.  Every value class can also be built in
code (C{Config()} is the default configuration), and every field has a
validator, so a bad value fails the same way whichever route it took.

Errors are L{ConfigError}s whose C{path} names the field and whose
C{problem} says what is wrong, e.g. C{timeouts.connect: must be a duration
like "500ms", "2s" or "1m", or a number of seconds}.  Only the first error
is reported, looking at keys in document order.  Built in code, a value
fails with the field name alone as its path (C{connect: ...}).

The rules, in short:

  - Types are strict: C{true} is not a number, C{"3"} is not a number,
    C{3.0} is not an integer.  Only fields that take units (durations and
    sizes) accept strings: see L{parse_duration} and L{parse_size}.
  - Unknown keys are errors, with a did-you-mean suggestion when one is
    close.  A key that appears twice in one object is an error too.
  - Comments: any key starting with C{_} (C{"_comment"}, C{"_note"}, ...)
    is ignored in every object whose keys heimdall defines, and the
    top-level object may also carry C{"$schema"} for editors.
  - C{health} and C{alerts} are parsed by L{heimdall.config.health}, with
    the same rules, into L{HealthConfig} and L{AlertsConfig}.

The module is split in three: this one (the values, L{parse_config},
L{load_config}), L{heimdall.config.fields} (durations, sizes, endpoints,
field checks) and L{heimdall.config.reader} (the strict JSON reader).

Mappings held by these values (L{StrategyConfig.options}) are read-only C{MappingProxyType}s over private copies of
plain C{dict}s and C{list}s: a caller changing its own data afterwards does
not change the config, and nobody can change it through the config.
"""

from __future__ import annotations

import ipaddress
import json
import random
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

import attrs

from heimdall.config.fields import (
    DURATION_PROBLEM,
    ENDPOINT_TYPES,
    SIZE_PROBLEM,
    IPNetwork,
    boolean,
    duration,
    endpoint_field,
    instance_of,
    integer,
    ip_networks,
    mapping,
    one_of,
    parse_duration,
    parse_endpoint,
    parse_size,
    read_only_mapping,
    section,
    size,
    text,
    tuple_from_list,
    validator,
)
from heimdall.config.health import AlertsConfig, HealthConfig, parse_alerts, parse_health
from heimdall.config.manager import ManagerConfig, RestartConfig
from heimdall.config.reader import FROM_JSON, build, entries, join, json_type, loads, structure, suggestion
from heimdall.config.tls import BackendTlsConfig, TlsConfig, backend_tls_field
from heimdall.errors import ConfigError, UnknownStrategy
from heimdall.pool.pool import Backend
from heimdall.proxy.retry_budget import RETRY_ON_CHOICES as RETRY_ON

__all__ = [
    "DURATION_PROBLEM",
    "ENDPOINT_TYPES",
    "SIZE_PROBLEM",
    "AccessLogConfig",
    "AlertsConfig",
    "BackendConfig",
    "Config",
    "HealthConfig",
    "ConfigError",
    "ForwardedConfig",
    "LimitsConfig",
    "LogConfig",
    "ManagerConfig",
    "RestartConfig",
    "StrategyConfig",
    "TimeoutsConfig",
    "TlsConfig",
    "UpstreamConfig",
    "check_backends",
    "check_retry_on",
    "config_from_bytes",
    "load_config",
    "parse_backends",
    "parse_config",
    "parse_duration",
    "parse_endpoint",
    "parse_size",
    "parse_strategy",
    "read_config_bytes",
    "strategy_from_name",
]

def check_retry_on(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, 'must be a list of "5xx" and "timeout"')
    for index, item in enumerate(value):
        problem = one_of(*RETRY_ON)(item)
        if problem:
            raise ConfigError(f"{attribute.name}[{index}]", problem)


@attrs.frozen
class TimeoutsConfig:
    """
    Timeouts, in seconds, all greater than 0 (shutdown_grace may be 0,
    C{request} 0 is off).

    @ivar connect: to open a connection to a backend.
    @ivar response: from sending a request upstream to the first byte of
        the response.
    @ivar idle_upstream: how long an idle pooled upstream connection is kept.
    @ivar client_header: a client must finish sending its request line and
        headers within this.
    @ivar client_idle: how long an idle keep-alive client connection is kept.
    @ivar tunnel_idle: an Upgrade tunnel (WebSocket) with no byte either
        way for this long is closed.
    @ivar shutdown_grace: on SIGTERM or SIGINT, how long requests in
        flight may run on before their connections are closed (0: none).
    @ivar upstream_read: the longest gap between two reads of a response
        body, after its head (nginx C{proxy_read_timeout}); then the
        client connection is aborted (a truncated response), the upstream
        one closed, and it counts as a passive health failure.
    @ivar client_write: the longest a client may leave heimdall unable to
        write to it (its socket full) before both connections close; a
        slow reader that keeps reading is fine (nginx C{send_timeout}).
    @ivar client_body: the longest gap between two pieces of a request
        body; then 408 if no body byte went upstream yet, else both
        connections are aborted (nginx C{client_body_timeout}).
    @ivar request: the longest a whole request may take, from its head to
        the end of its response (504 before a response head, else the
        client is cut off); 0, the default, is no limit.
    See L{heimdall.proxy.timeouts}.
    """

    connect: float = duration(5.0)
    response: float = duration(60.0)
    idle_upstream: float = duration(30.0)
    client_header: float = duration(10.0)
    client_idle: float = duration(75.0)
    tunnel_idle: float = duration(3600.0)
    shutdown_grace: float = duration(10.0, allow_zero=True)
    upstream_read: float = duration(60.0)
    client_write: float = duration(60.0)
    client_body: float = duration(30.0)
    request: float = duration(0.0, allow_zero=True)


@attrs.frozen
class LimitsConfig:
    """
    Request size limits, in bytes, and client connection limits.

    @ivar max_header_bytes: request line plus headers.
    @ivar max_uri_bytes: the request target; at most C{max_header_bytes}.
    @ivar max_body_bytes: the request body; 0 means unlimited.
    @ivar max_connections: client connections open at once, on every
        listener together; at the limit heimdall stops accepting (new
        connections wait in the kernel's backlog, as with HAProxy's
        C{maxconn}); 0 means unlimited.
    @ivar max_connections_per_client: connections one source address may
        hold at once; one more gets 429 with C{Retry-After: 1} and is
        closed.  The TCP peer's address (not a trusted proxy's forwarded
        one); 0, the default, means unlimited.
    See L{heimdall.proxy.limits}.
    """

    max_header_bytes: int = size(32 * 1024)
    max_uri_bytes: int = size(8 * 1024)
    max_body_bytes: int = size(100 * 1024 * 1024, allow_zero=True)
    max_connections: int = attrs.field(default=10000, validator=validator(integer(0, 10000000)))
    max_connections_per_client: int = attrs.field(default=0, validator=validator(integer(0, 10000000)))

    def __attrs_post_init__(self) -> None:
        if self.max_uri_bytes > self.max_header_bytes:
            raise ConfigError(
                "max_uri_bytes",
                f"must not exceed max_header_bytes ({self.max_header_bytes})",
            )


@attrs.frozen
class UpstreamConfig:
    """
    The upstream connection pool.

    @ivar max_idle_per_backend: idle keep-alive connections kept per backend.
    """

    max_idle_per_backend: int = attrs.field(default=256, validator=validator(integer(1, 10000)))


def _check_networks(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, "must be a list of IP networks")
    for index, network in enumerate(value):
        if not isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise ConfigError(
                f"{attribute.name}[{index}]",
                'must be an IP network like "10.0.0.0/8" or an IP address',
            )


@attrs.frozen
class ForwardedConfig:
    """
    Which peers' C{Forwarded}/C{X-Forwarded-*} headers are believed.

    @ivar trusted_proxies: networks; given as CIDR strings or addresses
        (host bits are ignored: C{10.1.2.3/8} is C{10.0.0.0/8}).
    """

    trusted_proxies: Tuple[IPNetwork, ...] = attrs.field(default=(), converter=ip_networks, validator=_check_networks)

    def is_trusted(self, address: str) -> bool:
        """
        Whether C{address} (a peer's IP address as text) is in a trusted
        network.  An IPv4-mapped IPv6 address counts as its IPv4 address.
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.trusted_proxies)


@attrs.frozen
class AccessLogConfig:
    """
    The access log: one line per request, to C{path} (C{-} for stdout).
    """

    enabled: bool = attrs.field(default=True, validator=validator(boolean))
    format: str = attrs.field(default="text", validator=validator(one_of("text", "json")))
    path: str = attrs.field(default="-", validator=validator(text))


@attrs.frozen
class LogConfig:
    """
    heimdall's own log, to C{path} (C{-} for stdout).
    """

    format: str = attrs.field(default="text", validator=validator(one_of("text", "json")))
    path: str = attrs.field(default="-", validator=validator(text))
    level: str = attrs.field(default="info", validator=validator(one_of("debug", "info", "warn", "error")))


@attrs.frozen
class StrategyConfig:
    """
    A strategy by name, with its options.

    Built in code, only the types are checked; L{parse_config} also checks
    the name and options against the default strategy registry, and the
    registry checks them again when the strategy is built.

    @ivar options: a read-only mapping (see the module docstring).
    """

    name: str = attrs.field(default="round_robin", validator=validator(text))
    options: Mapping[str, Any] = attrs.field(
        factory=dict, converter=read_only_mapping, validator=validator(mapping), hash=False
    )


@attrs.frozen
class BackendConfig:
    """
    A backend from the config.  A backup backend gets requests only when
    no other backend of its service is eligible; C{max_connections} limits
    its requests in flight (0: no limit; the others wait in the service's
    queue).  C{tls} (an C{https://} backend only) overrides its service's
    (L{BackendTlsConfig}).
    """

    backend: Backend = attrs.field(validator=validator(instance_of(Backend, "a heimdall.pool.pool.Backend")))
    backup: bool = attrs.field(default=False, validator=validator(boolean))
    max_connections: int = attrs.field(default=0, validator=validator(integer(0, 1000000)))
    tls: Optional[BackendTlsConfig] = backend_tls_field()

    def __attrs_post_init__(self) -> None:
        if self.tls is not None and self.backend.scheme != "https":
            raise ConfigError("tls", f"applies to https:// backends only, not {self.backend.url}")

    @classmethod
    def from_url(cls, url: str, weight: int = 1, backup: bool = False) -> "BackendConfig":
        """
        @raise ValueError: if C{url} or C{weight} is not valid.
        """
        return cls(Backend.from_url(url, weight), backup)


def check_backends(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, "must be a list of backends")
    seen = {}
    for index, item in enumerate(value):
        if not isinstance(item, BackendConfig):
            raise ConfigError(f"{attribute.name}[{index}]", "must be a BackendConfig")
        first = seen.setdefault(item.backend.id, index)
        if first != index:
            raise ConfigError(f"{attribute.name}[{index}].url", f"duplicate of {attribute.name}[{first}]")


def strategy_from_name(value):
    return StrategyConfig(value) if isinstance(value, str) and value else value


def _check_services(instance, attribute, value) -> None:
    from heimdall.config.services import ServiceConfig, check_service_name

    for name, service in value.items():
        check_service_name(name, f"services.{name}")
        if not isinstance(service, ServiceConfig):
            raise ConfigError(f"services.{name}", "must be a ServiceConfig")


def _check_routes(instance, attribute, value) -> None:
    from heimdall.config.routes import RouteConfig

    if not isinstance(value, tuple):
        raise ConfigError("routes", "must be a list of routes")
    for index, route in enumerate(value):
        if not isinstance(route, RouteConfig):
            raise ConfigError(f"routes[{index}]", "must be a RouteConfig")


@attrs.frozen
class Config:
    """
    heimdall's whole configuration.  C{Config()} is the default one: listen
    on 127.0.0.1:8080, round robin, no backends, manager on 127.0.0.1:9090.

    @ivar listen: the proxy's Twisted server endpoint string.
    @ivar tls: TLS termination on a second port (L{heimdall.config.tls}).
    @ivar h2c: also speak HTTP/2 on the plain C{listen} port to clients
        that open with the HTTP/2 preface (h2c with prior knowledge, as
        C{curl --http2-prior-knowledge}); HTTP/1.1 clients are unaffected.
        The plain port's counterpart of C{tls.http2}; C{Upgrade: h2c} is
        never honoured.
    @ivar backends: the backends to start with.
    @ivar spawn: how many demo backends heimdall starts itself at start-up,
        on ports from C{manager.base_port}.
    @ivar retries: extra attempts on another backend for a request that
        provably did not reach a backend.
    @ivar health: the health-check settings (L{heimdall.config.health}).
    @ivar alerts: the alert settings (L{heimdall.config.health}).
    """

    listen: str = endpoint_field("tcp:8080:interface=127.0.0.1")
    strategy: StrategyConfig = attrs.field(
        factory=StrategyConfig,
        converter=strategy_from_name,
        validator=validator(instance_of(StrategyConfig, "a strategy name or a StrategyConfig")),
        metadata={FROM_JSON: lambda value, path: parse_strategy(value, path)},
    )
    backends: Tuple[BackendConfig, ...] = attrs.field(
        default=(),
        converter=tuple_from_list,
        validator=check_backends,
        metadata={FROM_JSON: lambda value, path: parse_backends(value, path)},
    )
    spawn: int = attrs.field(default=0, validator=validator(integer(0, 64)))
    manager: ManagerConfig = section(ManagerConfig, "a ManagerConfig")
    timeouts: TimeoutsConfig = section(TimeoutsConfig, "a TimeoutsConfig")
    limits: LimitsConfig = section(LimitsConfig, "a LimitsConfig")
    retries: int = attrs.field(default=2, validator=validator(integer(0, 10)))
    retry_on: Tuple[str, ...] = attrs.field(default=(), converter=tuple_from_list, validator=check_retry_on)
    upstream: UpstreamConfig = section(UpstreamConfig, "an UpstreamConfig")
    forwarded: ForwardedConfig = section(ForwardedConfig, "a ForwardedConfig")
    access_log: AccessLogConfig = section(AccessLogConfig, "an AccessLogConfig")
    log: LogConfig = section(LogConfig, "a LogConfig")
    health: HealthConfig = attrs.field(
        factory=HealthConfig,
        validator=validator(instance_of(HealthConfig, "a HealthConfig")),
        metadata={FROM_JSON: lambda value, path: parse_health(value, path)},
    )
    alerts: AlertsConfig = attrs.field(
        factory=AlertsConfig,
        validator=validator(instance_of(AlertsConfig, "an AlertsConfig")),
        metadata={FROM_JSON: lambda value, path: parse_alerts(value, path)},
    )
    # Read from JSON after the rest (parse_config): a service's sections
    # are merged over the top-level ones.  See heimdall.config.services.
    services: Mapping[str, Any] = attrs.field(
        factory=dict, converter=lambda value: MappingProxyType(dict(value)), validator=_check_services, hash=False
    )
    routes: Tuple[Any, ...] = attrs.field(default=(), converter=tuple_from_list, validator=_check_routes)
    tls: TlsConfig = section(TlsConfig, "a TlsConfig")
    h2c: bool = attrs.field(default=False, validator=validator(boolean))

    def __attrs_post_init__(self) -> None:
        # Spawned backends take consecutive ports from manager.base_port.
        if self.spawn > self.manager.port_range:
            raise ConfigError("spawn", f"must not exceed manager.port_range ({self.manager.port_range})")
        from heimdall.config.routes import check_route_services

        check_route_services(self.routes, ("default",) + tuple(n for n in self.services if n != "default"))

    def with_overrides(self, listen: Optional[str] = None, manager_listen: Optional[str] = None) -> "Config":
        """
        A copy with the listening addresses given on the command line
        (C{--listen}, C{--manager-listen}) instead of the configured ones.

        @raise ConfigError: naming the option, for an invalid endpoint.
        """
        changes: dict = {}
        if listen is not None:
            changes["listen"] = _override_endpoint("--listen", listen)
        if manager_listen is not None:
            changes["manager"] = attrs.evolve(
                self.manager, listen=_override_endpoint("--manager-listen", manager_listen)
            )
        return attrs.evolve(self, **changes)


def _override_endpoint(option: str, value: str) -> str:
    try:
        return parse_endpoint(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(option, str(e)) from None



# --- From JSON -----------------------------------------------------------------


def parse_strategy(data: object, path: str) -> StrategyConfig:
    from twisted.internet.task import Clock

    from heimdall.strategies.registry import default_registry

    if isinstance(data, str):
        name, name_path, options = data, path, {}
    elif isinstance(data, Mapping):
        options = {}
        duplicates = getattr(data, "duplicate_keys", frozenset())
        for key, value in data.items():
            if isinstance(key, str) and key.startswith("_"):
                continue
            if key in duplicates:
                raise ConfigError(join(path, str(key)), "duplicate key")
            if key != "name":
                options[key] = value
        if "name" not in data:
            raise ConfigError(f"{path}.name", "is required")
        name, name_path = data["name"], f"{path}.name"
    else:
        raise ConfigError(path, 'must be a strategy name or an object like {"name": "round_robin"}')
    if not isinstance(name, str) or not name:
        raise ConfigError(name_path, "must be a non-empty string")
    registry = default_registry()
    try:
        registry.get(name)
    except UnknownStrategy as e:
        known = sorted(e.known)
        raise ConfigError(
            name_path,
            f"unknown strategy {name!r}; known strategies: {', '.join(known)}{suggestion(name, known)}",
        ) from None
    # Building the strategy once is how its options get checked; a seeded
    # random and a fake clock keep that free of side effects.
    try:
        registry.create(name, options, random=random.Random(0), clock=Clock())
    except ConfigError as e:  # StrategyOptionError included
        raise ConfigError(join(path, e.path), e.problem) from None
    except (TypeError, ValueError) as e:  # a factory that did not say which option
        raise ConfigError(path, f"invalid options for {name!r}: {e}") from None
    return StrategyConfig(name, options)


def parse_backends(data: object, path: str) -> Tuple[BackendConfig, ...]:
    if not isinstance(data, (list, tuple)):
        raise ConfigError(path, "must be a list of backend URLs or objects")
    backends = []
    seen = {}
    for index, item in enumerate(data):
        item_path = f"{path}[{index}]"
        backend = _parse_backend(item, item_path)
        first = seen.setdefault(backend.backend.id, index)
        if first != index:
            raise ConfigError(f"{item_path}.url", f"duplicate of {path}[{first}]")
        backends.append(backend)
    return tuple(backends)


def _backend_from_url(url: object, path: str) -> Backend:
    try:
        return Backend.from_url(url)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(path, str(e)) from None


def _parse_backend(data: object, path: str) -> BackendConfig:
    if isinstance(data, str):
        return BackendConfig(_backend_from_url(data, f"{path}.url"))
    if not isinstance(data, Mapping):
        raise ConfigError(path, 'must be a URL string or an object like {"url": "http://127.0.0.1:8081"}')
    backend: Optional[Backend] = None
    weight, backup, limit, tls = 1, False, 0, None
    for key, value, key_path in entries(data, path, ("url", "weight", "backup", "max_connections", "tls")):
        problem = None
        if key == "tls":
            tls = structure(BackendTlsConfig, value, key_path)
        elif key == "url":
            backend = _backend_from_url(value, key_path)
        elif key == "weight":
            problem = integer(0, 1000)(value)
            weight = value
        elif key == "max_connections":
            problem = integer(0, 1000000)(value)
            limit = value
        else:
            problem = boolean(value)
            backup = value
        if problem is not None:
            raise ConfigError(key_path, problem)
    if backend is None:
        raise ConfigError(f"{path}.url", "is required")
    return build(BackendConfig, {"backend": attrs.evolve(backend, weight=weight), "backup": backup,
                                 "max_connections": limit, "tls": tls}, path)


def parse_config(data: object, source: str = "config") -> Config:
    """
    Validate already-parsed configuration data (a mapping, as from
    C{json.load}) and return a L{Config}.

    @param source: names the data in an error about the data as a whole.
    @raise ConfigError: for the first problem found, in document order.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(source, f"must be a JSON object, not {json_type(data)}")
    from heimdall.config.routes import parse_routes
    from heimdall.config.services import parse_services

    # services and routes last: a service's sections are merged over the
    # top-level ones, and routes name services.
    later = ("services", "routes")
    config = structure(Config, data, "", also_ignored=("$schema",) + later)
    duplicates = getattr(data, "duplicate_keys", frozenset())
    changes = {}
    for key in later:
        if key in duplicates:
            raise ConfigError(key, "duplicate key")
    if "services" in data:
        changes["services"] = parse_services(data["services"], "services", config)
    if "routes" in data:
        changes["routes"] = parse_routes(data["routes"], "routes")
    if not changes:
        return config
    return build(Config, changes, "", base=config)


def load_config(path: str) -> Config:
    """
    Read, parse and validate the JSON config file at C{path}.

    An unreadable file or invalid JSON is a L{ConfigError} whose path is
    the file's (with the line and column for JSON); a problem in a field
    names the field only, and callers that report it add the file's name.
    """
    return config_from_bytes(read_config_bytes(path), path)


def read_config_bytes(path: str) -> bytes:
    """
    The config file's bytes; L{ConfigError} naming the file if it cannot be read.
    """
    try:
        with open(path, "rb") as config_file:
            return config_file.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read the file: {e.strerror or e}") from None


def config_from_bytes(data: bytes, path: str) -> Config:
    """
    The config file's content C{data} (read from C{path}), parsed and
    validated as L{load_config} does (a reload hashes the same bytes).
    """
    try:
        # utf-8-sig: tolerate the byte order mark some editors write.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not valid UTF-8 (at byte {e.start})") from None
    try:
        parsed = loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return parse_config(parsed, source=path)
