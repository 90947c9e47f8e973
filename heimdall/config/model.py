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
  - C{health} and C{alerts} are kept as they are (they must be objects),
    for the components that read them.

Mappings held by these values (L{StrategyConfig.options}, L{Config.health},
L{Config.alerts}) are read-only C{MappingProxyType}s over private copies of
plain C{dict}s and C{list}s: a caller changing its own data afterwards does
not change the config, and nobody can change it through the config.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import math
import random
import re
import types
from fractions import Fraction
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple, Union

import attrs

from heimdall.errors import ConfigError, UnknownStrategy
from heimdall.pool.pool import Backend

__all__ = [
    "DURATION_PROBLEM",
    "ENDPOINT_TYPES",
    "SIZE_PROBLEM",
    "AccessLogConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "ForwardedConfig",
    "LimitsConfig",
    "LogConfig",
    "ManagerConfig",
    "RestartConfig",
    "StrategyConfig",
    "TimeoutsConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_endpoint",
    "parse_size",
]

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DURATION_PROBLEM = 'must be a duration like "500ms", "2s" or "1m", or a number of seconds'
SIZE_PROBLEM = 'must be a size like "10MiB" or a number of bytes'
ENDPOINT_PROBLEM = 'must be an endpoint string like "tcp:8080:interface=127.0.0.1" or a port number'

# The endpoint types a listening address may use (the first field of a
# Twisted server endpoint string), and those whose next field is a port.
ENDPOINT_TYPES = ("ssl", "systemd", "tcp", "tcp6", "unix")
_PORT_ENDPOINT_TYPES = ("ssl", "tcp", "tcp6")


# --- Values with units -----------------------------------------------------

# Fractions keep "250us" and "1.5KiB" exact until the final conversion.
_DURATION_UNITS = {
    "us": Fraction(1, 1_000_000),
    "µs": Fraction(1, 1_000_000),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}

# KB/MB/GB are decimal, KiB/MiB/GiB binary; bare k/m/g are binary, as in nginx.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}

# [0-9], not \d: \d also matches digits of other scripts, which Fraction
# would then have to make sense of.
_NUMBER_WITH_UNIT = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+) ?([a-zµ]*)", re.IGNORECASE)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_duration(value: Union[int, float, str]) -> float:
    """
    A duration in seconds, from a number of seconds (C{0}, C{2.5}) or a
    string with a unit: C{"250us"}, C{"500ms"}, C{"2s"}, C{"1.5s"}, C{"1m"},
    C{"1h"} (units are case-insensitive).  A string without a unit is
    refused, since C{"30"} could mean seconds or milliseconds.

    @raise TypeError: for anything but a number or a string (a bool too).
    @raise ValueError: for a negative, non-finite or unreadable value.
    """
    if _is_number(value):
        if not math.isfinite(value) or value < 0:
            raise ValueError(DURATION_PROBLEM)
        return float(value)
    if not isinstance(value, str):
        raise TypeError(DURATION_PROBLEM)
    match = _NUMBER_WITH_UNIT.fullmatch(value)
    unit = _DURATION_UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        raise ValueError(DURATION_PROBLEM)
    return float(Fraction(match.group(1)) * unit)


def parse_size(value: Union[int, str]) -> int:
    """
    A size in bytes, from an integer or a string: C{"512"}, C{"512B"},
    C{"16KB"} (16,000), C{"16KiB"} or C{"16k"} (16,384), and likewise
    MB/MiB/m and GB/GiB/g; units are case-insensitive.  A fraction is
    accepted when it comes to a whole number of bytes (C{"1.5KiB"}).

    @raise TypeError: for anything but an integer or a string (a bool or a
        float too).
    @raise ValueError: for a negative or unreadable value.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(SIZE_PROBLEM)
        return value
    if not isinstance(value, str):
        raise TypeError(SIZE_PROBLEM)
    match = _NUMBER_WITH_UNIT.fullmatch(value)
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        raise ValueError(SIZE_PROBLEM)
    size = Fraction(match.group(1)) * unit
    if size.denominator != 1:
        raise ValueError(SIZE_PROBLEM)
    return int(size)


# --- Endpoints -------------------------------------------------------------


def _endpoint_fields(description: str) -> List[Tuple[Optional[str], str]]:
    """
    Split a Twisted endpoint string as Twisted does: fields separated by
    C{:}, C{key=value} fields named, C{\\} escaping the next character.
    Each field is C{(None, value)} or C{(key, value)}.
    """
    fields: List[Tuple[Optional[str], str]] = []
    current: List[str] = []
    key: Optional[str] = None
    characters = iter(description)
    for character in characters:
        if character == "\\":
            current.append(next(characters, "\\"))
        elif character == ":":
            fields.append((key, "".join(current)))
            current, key = [], None
        elif character == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(character)
    fields.append((key, "".join(current)))
    return fields


def _endpoint_argument(fields, name: str, kind: str, example: str) -> str:
    positional = [value for key, value in fields if key is None]
    named = [value for key, value in fields if key == name]
    if positional and named or len(named) > 1:
        raise ValueError(f"{name} is given more than once")
    if not positional and not named:
        raise ValueError(f"a {kind} endpoint needs a {name}, like {json.dumps(example)}")
    return (positional or named)[0]


def parse_endpoint(value: Union[int, str]) -> str:
    """
    Check a listening address and return it as a Twisted server endpoint
    string.  A port number (1-65535) means C{tcp:PORT:interface=127.0.0.1}:
    heimdall listens on loopback unless told otherwise.

    The check is syntactic (the reactor is not needed): the type, the
    first field, must be one of L{ENDPOINT_TYPES}; C{tcp}, C{tcp6} and
    C{ssl} need a port from 0 (any free port) to 65535, C{unix} a path.

    @raise TypeError: for anything but a string or an integer.
    @raise ValueError: for an endpoint that cannot work.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            raise ValueError('a port number must be from 1 to 65535 (use "tcp:0" for any free port)')
        return f"tcp:{value}:interface=127.0.0.1"
    if not isinstance(value, str):
        raise TypeError(ENDPOINT_PROBLEM)
    if not value:
        raise ValueError("must not be empty")
    fields = _endpoint_fields(value)
    key, kind = fields[0]
    if key is not None or kind not in ENDPOINT_TYPES:
        hint = f' (for a port, write "tcp:{value}")' if value.isdigit() else ""
        raise ValueError(
            f"unknown endpoint type {value.split(':', 1)[0]!r}; "
            f"known types: {', '.join(ENDPOINT_TYPES)}{hint}"
        )
    arguments = fields[1:]
    if kind in _PORT_ENDPOINT_TYPES:
        port = _endpoint_argument(arguments, "port", kind, f"{kind}:8080")
        if not (port.isdigit() and port.isascii() and int(port) <= 65535):
            raise ValueError(f"port must be a number from 0 to 65535, not {port!r}")
    elif kind == "unix":
        if not _endpoint_argument(arguments, "address", kind, "unix:/run/heimdall.sock"):
            raise ValueError("a unix endpoint needs a socket path, like \"unix:/run/heimdall.sock\"")
    return value


# --- Validators and converters ---------------------------------------------
#
# A validator raises ConfigError(attribute name [+ sub-path], problem); the
# JSON parser prefixes the path of the object the field belongs to.  Checks
# return a problem, or None when the value is fine.

Check = Callable[[Any], Optional[str]]


def _validator(check: Check):
    def validate(instance, attribute, value):
        problem = check(value)
        if problem is not None:
            raise ConfigError(attribute.name, problem)

    return validate


def _suggestion(word: object, candidates: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    # Compared in lower case, so that "JSON" suggests "json".
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return f'; did you mean "{by_lower[close[0]]}"?' if close else ""


def _integer(low: int, high: int) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be an integer from {low} to {high}"
        return None

    return check


def _boolean(value) -> Optional[str]:
    return None if isinstance(value, bool) else "must be true or false"


def _text(value) -> Optional[str]:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _optional_text(value) -> Optional[str]:
    return None if value is None or isinstance(value, str) and value else "must be a non-empty string or null"


def _one_of(*choices: str) -> Check:
    def check(value):
        if isinstance(value, str) and value in choices:
            return None
        listed = ", ".join(f'"{choice}"' for choice in choices)
        return f"must be one of {listed}{_suggestion(value, choices)}"

    return check


def _endpoint(value) -> Optional[str]:
    try:
        normalised = parse_endpoint(value)
    except (TypeError, ValueError) as e:
        return str(e)
    # A valid port number was already turned into a string by the converter.
    return None if normalised == value else ENDPOINT_PROBLEM


def _seconds(allow_zero: bool) -> Check:
    def check(value):
        if not _is_number(value) or not math.isfinite(value):
            return DURATION_PROBLEM
        if value < 0 or (value == 0 and not allow_zero):
            return "must not be negative" if allow_zero else "must be greater than 0"
        return None

    return check


def _byte_count(allow_zero: bool) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return SIZE_PROBLEM
        if value == 0 and not allow_zero:
            return "must be greater than 0 (only max_body_bytes may be 0, meaning unlimited)"
        return None

    return check


def _instance_of(cls: type, what: str) -> Check:
    return lambda value: None if isinstance(value, cls) else f"must be {what}"


def _mapping(value) -> Optional[str]:
    if not isinstance(value, Mapping):
        return "must be an object"
    if not all(isinstance(key, str) for key in value):
        return "must have string keys"
    return None


def _lenient(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """
    A converter that applies C{parse} when it can and otherwise passes the
    value on unchanged, for the validator to report with the field's name.
    """

    @functools.wraps(parse)
    def convert(value):
        try:
            return parse(value)
        except (TypeError, ValueError):
            return value

    return convert


def _plain(value):
    """
    A private copy of JSON-like data: mappings become dicts, lists and
    tuples are copied, anything else is shared.
    """
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


def _read_only_mapping(value):
    if isinstance(value, Mapping):
        return types.MappingProxyType(_plain(value))
    return value


def _tuple_from_list(value):
    return tuple(value) if isinstance(value, list) else value


def _endpoint_from_port(value):
    # Only a valid port number is converted; anything else is left for the
    # validator to report.
    return _port_to_endpoint(value) if isinstance(value, int) else value


_port_to_endpoint = _lenient(parse_endpoint)


def _ip_networks(value):
    if not isinstance(value, (list, tuple)):
        return value
    return tuple(_lenient(_ip_network)(item) if isinstance(item, str) else item for item in value)


def _ip_network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


# --- Value classes -----------------------------------------------------------

# attrs metadata key: how a field's JSON value becomes its value, for fields
# whose JSON shape differs from the value's (objects and lists of objects).
_FROM_JSON = "heimdall.config.model.from_json"


def _section(cls: type, what: str):
    """
    A field holding a nested section: C{cls()} by default, parsed from a
    JSON object with the same rules as the top level.
    """
    return attrs.field(
        factory=cls,
        validator=_validator(_instance_of(cls, what)),
        metadata={_FROM_JSON: lambda value, path: _parse_object(cls, value, path)},
    )


def _duration(default: float, allow_zero: bool = False):
    return attrs.field(
        default=default, converter=_lenient(parse_duration), validator=_validator(_seconds(allow_zero))
    )


def _size(default: int, allow_zero: bool = False):
    return attrs.field(default=default, converter=_lenient(parse_size), validator=_validator(_byte_count(allow_zero)))


def _endpoint_field(default: str):
    return attrs.field(default=default, converter=_endpoint_from_port, validator=_validator(_endpoint))


def _check_command(instance, attribute, value) -> None:
    if value is None:
        return
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, 'must be a list of strings with a "{port}" placeholder, or null')
    if not value:
        raise ConfigError(attribute.name, "must not be empty (use null for the built-in demo backend)")
    for index, argument in enumerate(value):
        if not isinstance(argument, str):
            raise ConfigError(f"{attribute.name}[{index}]", "must be a string")
    if not any("{port}" in argument for argument in value):
        raise ConfigError(attribute.name, 'must contain "{port}" in at least one argument')


RETRY_ON = ("5xx", "timeout")


def _check_retry_on(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, 'must be a list of "5xx" and "timeout"')
    for index, item in enumerate(value):
        problem = _one_of(*RETRY_ON)(item)
        if problem:
            raise ConfigError(f"{attribute.name}[{index}]", problem)


def _ready_path(value) -> Optional[str]:
    if value is None or isinstance(value, str) and value.startswith("/") and " " not in value:
        return None
    return 'must be a path starting with "/" (like "/health"), or null for a TCP connect'


@attrs.frozen
class RestartConfig:
    """
    What the manager does when a server it spawned exits on its own.

    @ivar policy: C{"always"} restarts it, C{"on-failure"} only when it
        exited with a non-zero status or a signal, C{"never"} leaves it down.
    @ivar backoff: the delay before the first restart; each further
        restart in a row waits twice as long as the one before.
    @ivar max_backoff: the longest delay between two restarts.
    @ivar max_restarts: restarts in a row after which the manager gives up
        (the server stays down until removed); 0 means never give up.
    @ivar reset_after: a server that stayed up this long is healthy again:
        its next exit starts from C{backoff} and a count of 0.
    """

    policy: str = attrs.field(default="always", validator=_validator(_one_of("always", "on-failure", "never")))
    backoff: float = _duration(1.0)
    max_backoff: float = _duration(30.0)
    max_restarts: int = attrs.field(default=0, validator=_validator(_integer(0, 1000000)))
    reset_after: float = _duration(60.0)

    def __attrs_post_init__(self) -> None:
        if self.max_backoff < self.backoff:
            raise ConfigError("max_backoff", f"must not be less than backoff ({self.backoff:g} s)")


@attrs.frozen
class ManagerConfig:
    """
    The manager: its own listening address, the local backend processes
    it may spawn, and where it keeps runtime changes across restarts.

    @ivar command: the argv of a spawned backend, with C{{port}} in at
        least one argument; L{None} for the built-in demo backend.
    @ivar drain_timeout: seconds a draining backend is given to finish its
        requests; 0 removes it at once.
    @ivar token: a bearer token the manager requires, or L{None}.
    @ivar token_env: the name of an environment variable holding it.
        Only one of the two may be set.
    @ivar ready_path: a spawned server is ready once C{GET ready_path}
        answers 2xx; L{None}: once its port accepts a connection.
    @ivar ready_timeout: how long a spawned server has to become ready.
    @ivar stop_grace: seconds between SIGTERM and SIGKILL when a spawned
        server is stopped.
    @ivar restart: what happens when a spawned server exits on its own.
    """

    listen: str = _endpoint_field("tcp:9090:interface=127.0.0.1")
    base_port: int = attrs.field(default=8081, validator=_validator(_integer(1, 65535)))
    port_range: int = attrs.field(default=1000, validator=_validator(_integer(1, 10000)))
    host: str = attrs.field(default="127.0.0.1", validator=_validator(_text))
    command: Optional[Tuple[str, ...]] = attrs.field(default=None, converter=_tuple_from_list, validator=_check_command)
    drain_timeout: float = _duration(30.0, allow_zero=True)
    state_file: str = attrs.field(default="heimdall-state.json", validator=_validator(_text))
    # Kept out of repr so that logging the config does not log the secret.
    token: Optional[str] = attrs.field(default=None, validator=_validator(_optional_text), repr=False)
    token_env: Optional[str] = attrs.field(default=None, validator=_validator(_optional_text))
    ready_path: Optional[str] = attrs.field(default="/health", validator=_validator(_ready_path))
    ready_timeout: float = _duration(10.0)
    stop_grace: float = _duration(5.0, allow_zero=True)
    restart: RestartConfig = _section(RestartConfig, "a RestartConfig")

    def __attrs_post_init__(self) -> None:
        last_port = self.base_port + self.port_range - 1
        if last_port > 65535:
            raise ConfigError(
                "port_range",
                f"base_port + port_range reaches port {last_port}, beyond 65535",
            )
        if self.token is not None and self.token_env is not None:
            raise ConfigError("token_env", "set token or token_env, not both")


@attrs.frozen
class TimeoutsConfig:
    """
    Timeouts, in seconds, all greater than 0.

    @ivar connect: to open a connection to a backend.
    @ivar response: from sending a request upstream to the first byte of
        the response.
    @ivar idle_upstream: how long an idle pooled upstream connection is kept.
    @ivar client_header: a client must finish sending its request line and
        headers within this.
    @ivar client_idle: how long an idle keep-alive client connection is kept.
    """

    connect: float = _duration(5.0)
    response: float = _duration(60.0)
    idle_upstream: float = _duration(30.0)
    client_header: float = _duration(10.0)
    client_idle: float = _duration(75.0)


@attrs.frozen
class LimitsConfig:
    """
    Request size limits, in bytes.

    @ivar max_header_bytes: request line plus headers.
    @ivar max_uri_bytes: the request target; at most C{max_header_bytes}.
    @ivar max_body_bytes: the request body; 0 means unlimited.
    """

    max_header_bytes: int = _size(32 * 1024)
    max_uri_bytes: int = _size(8 * 1024)
    max_body_bytes: int = _size(100 * 1024 * 1024, allow_zero=True)

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

    max_idle_per_backend: int = attrs.field(default=256, validator=_validator(_integer(1, 10000)))


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

    trusted_proxies: Tuple[IPNetwork, ...] = attrs.field(default=(), converter=_ip_networks, validator=_check_networks)

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

    enabled: bool = attrs.field(default=True, validator=_validator(_boolean))
    format: str = attrs.field(default="text", validator=_validator(_one_of("text", "json")))
    path: str = attrs.field(default="-", validator=_validator(_text))


@attrs.frozen
class LogConfig:
    """
    heimdall's own log, to C{path} (C{-} for stdout).
    """

    format: str = attrs.field(default="text", validator=_validator(_one_of("text", "json")))
    path: str = attrs.field(default="-", validator=_validator(_text))
    level: str = attrs.field(default="info", validator=_validator(_one_of("debug", "info", "warn", "error")))


@attrs.frozen
class StrategyConfig:
    """
    A strategy by name, with its options.

    Built in code, only the types are checked; L{parse_config} also checks
    the name and options against the default strategy registry, and the
    registry checks them again when the strategy is built.

    @ivar options: a read-only mapping (see the module docstring).
    """

    name: str = attrs.field(default="round_robin", validator=_validator(_text))
    options: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_read_only_mapping, validator=_validator(_mapping), hash=False
    )


@attrs.frozen
class BackendConfig:
    """
    A backend from the config.  A backup backend gets requests only when
    no other backend is eligible.
    """

    backend: Backend = attrs.field(validator=_validator(_instance_of(Backend, "a heimdall.pool.pool.Backend")))
    backup: bool = attrs.field(default=False, validator=_validator(_boolean))

    @classmethod
    def from_url(cls, url: str, weight: int = 1, backup: bool = False) -> "BackendConfig":
        """
        @raise ValueError: if C{url} or C{weight} is not valid.
        """
        return cls(Backend.from_url(url, weight), backup)


def _check_backends(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, "must be a list of backends")
    seen = {}
    for index, item in enumerate(value):
        if not isinstance(item, BackendConfig):
            raise ConfigError(f"{attribute.name}[{index}]", "must be a BackendConfig")
        first = seen.setdefault(item.backend.id, index)
        if first != index:
            raise ConfigError(f"{attribute.name}[{index}].url", f"duplicate of {attribute.name}[{first}]")


def _strategy_from_name(value):
    return StrategyConfig(value) if isinstance(value, str) and value else value


@attrs.frozen
class Config:
    """
    heimdall's whole configuration.  C{Config()} is the default one: listen
    on 127.0.0.1:8080, round robin, no backends, manager on 127.0.0.1:9090.

    @ivar listen: the proxy's Twisted server endpoint string.
    @ivar backends: the backends to start with.
    @ivar spawn: how many demo backends heimdall starts itself at start-up,
        on ports from C{manager.base_port}.
    @ivar retries: extra attempts on another backend for a request that
        provably did not reach a backend.
    @ivar health: the health-check settings, as given (read-only mapping).
    @ivar alerts: the alert settings, as given (read-only mapping).
    """

    listen: str = _endpoint_field("tcp:8080:interface=127.0.0.1")
    strategy: StrategyConfig = attrs.field(
        factory=StrategyConfig,
        converter=_strategy_from_name,
        validator=_validator(_instance_of(StrategyConfig, "a strategy name or a StrategyConfig")),
        metadata={_FROM_JSON: lambda value, path: _parse_strategy(value, path)},
    )
    backends: Tuple[BackendConfig, ...] = attrs.field(
        default=(),
        converter=_tuple_from_list,
        validator=_check_backends,
        metadata={_FROM_JSON: lambda value, path: _parse_backends(value, path)},
    )
    spawn: int = attrs.field(default=0, validator=_validator(_integer(0, 64)))
    manager: ManagerConfig = _section(ManagerConfig, "a ManagerConfig")
    timeouts: TimeoutsConfig = _section(TimeoutsConfig, "a TimeoutsConfig")
    limits: LimitsConfig = _section(LimitsConfig, "a LimitsConfig")
    retries: int = attrs.field(default=2, validator=_validator(_integer(0, 10)))
    retry_on: Tuple[str, ...] = attrs.field(default=(), converter=_tuple_from_list, validator=_check_retry_on)
    upstream: UpstreamConfig = _section(UpstreamConfig, "an UpstreamConfig")
    forwarded: ForwardedConfig = _section(ForwardedConfig, "a ForwardedConfig")
    access_log: AccessLogConfig = _section(AccessLogConfig, "an AccessLogConfig")
    log: LogConfig = _section(LogConfig, "a LogConfig")
    health: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_read_only_mapping, validator=_validator(_mapping), hash=False
    )
    alerts: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_read_only_mapping, validator=_validator(_mapping), hash=False
    )

    def __attrs_post_init__(self) -> None:
        # Spawned backends take consecutive ports from manager.base_port.
        if self.spawn > self.manager.port_range:
            raise ConfigError("spawn", f"must not exceed manager.port_range ({self.manager.port_range})")

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


class _JSONObject(dict):
    """
    A JSON object that remembers which keys appeared more than once (the
    json module keeps the last value silently).
    """

    duplicate_keys: frozenset = frozenset()

    @classmethod
    def from_pairs(cls, pairs: List[Tuple[str, Any]]) -> "_JSONObject":
        result = cls(pairs)
        if len(result) != len(pairs):
            seen: set = set()
            duplicates = set()
            for key, _ in pairs:
                (duplicates if key in seen else seen).add(key)
            result.duplicate_keys = frozenset(duplicates)
        return result


def _join(path: str, child: str) -> str:
    if not path:
        return child
    return f"{path}{child}" if child.startswith("[") else f"{path}.{child}"


def _json_type(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    return "null" if value is None else type(value).__name__


def _keys(data: Mapping, path: str, known: Iterable[str], top_level: bool = False):
    """
    The C{(key, value, key path)} of C{data} in document order, without
    comments; unknown and duplicate keys are errors.
    """
    known = list(known)
    duplicates = getattr(data, "duplicate_keys", frozenset())
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(path, f"keys must be strings, not {key!r}")
        if key.startswith("_") or (top_level and key == "$schema"):
            continue
        key_path = _join(path, key)
        if key not in known:
            close = _suggestion(key, known)
            raise ConfigError(key_path, f"unknown key{close}" if close else f"unknown key; known keys: {', '.join(known)}")
        if key in duplicates:
            raise ConfigError(key_path, "duplicate key")
        yield key, value, key_path


def _parse_object(cls: type, data: object, path: str, top_level: bool = False):
    """
    Build C{cls} from a JSON object whose keys are its field names,
    reporting the first problem in document order with its full path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(path, "must be an object")
    fields = attrs.fields_dict(cls)
    values = {}
    for key, value, key_path in _keys(data, path, fields, top_level):
        field = fields[key]
        from_json = field.metadata.get(_FROM_JSON)
        if from_json is not None:
            value = from_json(value, key_path)
        if field.converter is not None:
            value = field.converter(value)
        # Check each field as it comes, so the first error in the document
        # is the one reported.
        if field.validator is not None:
            try:
                field.validator(None, field, value)
            except ConfigError as e:
                raise ConfigError(_join(path, e.path), e.problem) from None
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as e:  # a rule between fields
        raise ConfigError(_join(path, e.path), e.problem) from None


def _parse_strategy(data: object, path: str) -> StrategyConfig:
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
                raise ConfigError(_join(path, str(key)), "duplicate key")
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
            f"unknown strategy {name!r}; known strategies: {', '.join(known)}{_suggestion(name, known)}",
        ) from None
    # Building the strategy once is how its options get checked; a seeded
    # random and a fake clock keep that free of side effects.
    try:
        registry.create(name, options, random=random.Random(0), clock=Clock())
    except ConfigError as e:  # StrategyOptionError included
        raise ConfigError(_join(path, e.path), e.problem) from None
    except (TypeError, ValueError) as e:  # a factory that did not say which option
        raise ConfigError(path, f"invalid options for {name!r}: {e}") from None
    return StrategyConfig(name, options)


def _parse_backends(data: object, path: str) -> Tuple[BackendConfig, ...]:
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
    weight, backup = 1, False
    for key, value, key_path in _keys(data, path, ("url", "weight", "backup")):
        problem = None
        if key == "url":
            backend = _backend_from_url(value, key_path)
        elif key == "weight":
            problem = _integer(0, 1000)(value)
            weight = value
        else:
            problem = _boolean(value)
            backup = value
        if problem is not None:
            raise ConfigError(key_path, problem)
    if backend is None:
        raise ConfigError(f"{path}.url", "is required")
    return BackendConfig(attrs.evolve(backend, weight=weight), backup)


def parse_config(data: object, source: str = "config") -> Config:
    """
    Validate already-parsed configuration data (a mapping, as from
    C{json.load}) and return a L{Config}.

    @param source: names the data in an error about the data as a whole.
    @raise ConfigError: for the first problem found, in document order.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(source, f"must be a JSON object, not {_json_type(data)}")
    return _parse_object(Config, data, "", top_level=True)


def load_config(path: str) -> Config:
    """
    Read, parse and validate the JSON config file at C{path}.

    An unreadable file or invalid JSON is a L{ConfigError} whose path is
    the file's (with the line and column for JSON); a problem in a field
    names the field only, and callers that report it add the file's name.
    """
    try:
        # utf-8-sig: tolerate the byte order mark some editors write.
        with open(path, encoding="utf-8-sig") as config_file:
            text = config_file.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read the file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not valid UTF-8 (at byte {e.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_JSONObject.from_pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return parse_config(data, source=path)
