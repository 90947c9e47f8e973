"""
The config's field types and checks: durations, sizes, endpoints, and the
validators and converters every config value uses, so that all sections
word their errors alike.

A check returns a problem (a string) or L{None} when the value is fine;
L{validator} turns a check into an attrs validator that raises
C{ConfigError(field name, problem)}, and the reader (L{heimdall.config.reader})
puts the path of the object in front.  A converter made with L{lenient}
converts what it can and leaves the rest for the validator to report.
The field factories (L{duration}, L{size}, L{endpoint_field}, L{section})
bundle a converter, a validator and a default.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
import types
from fractions import Fraction
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

import attrs

from heimdall.config.reader import FROM_JSON, structure, suggestion
from heimdall.errors import ConfigError

__all__ = [
    "DURATION_PROBLEM",
    "ENDPOINT_PROBLEM",
    "ENDPOINT_TYPES",
    "SIZE_PROBLEM",
    "Check",
    "IPNetwork",
    "boolean",
    "byte_count",
    "duration",
    "endpoint",
    "endpoint_field",
    "endpoint_fields",
    "endpoint_from_port",
    "instance_of",
    "integer",
    "ip_networks",
    "is_number",
    "lenient",
    "mapping",
    "one_of",
    "optional_text",
    "parse_duration",
    "parse_endpoint",
    "parse_size",
    "plain",
    "read_only_mapping",
    "regular_expression",
    "seconds",
    "section",
    "size",
    "text",
    "tuple_from_list",
    "validator",
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


def is_number(value: object) -> bool:
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
    if is_number(value):
        seconds = _as_float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(DURATION_PROBLEM)
        return seconds
    if not isinstance(value, str):
        raise TypeError(DURATION_PROBLEM)
    match = _NUMBER_WITH_UNIT.fullmatch(value)
    unit = _DURATION_UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        raise ValueError(DURATION_PROBLEM)
    return _as_float(Fraction(match.group(1)) * unit)


def _as_float(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer or fraction too large for a float
        raise ValueError(DURATION_PROBLEM) from None


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


def endpoint_fields(description: str) -> List[Tuple[Optional[str], str]]:
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

    The check is complete (without listening): the type, the first field,
    must be one of L{ENDPOINT_TYPES}; C{tcp}, C{tcp6} and C{ssl} need a
    port from 0 (any free port) to 65535, C{unix} a path; every other
    argument must be one Twisted's parser takes, and an C{ssl} endpoint's
    key and certificate files must exist and hold PEM (L{_check_fully}).

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
    fields = endpoint_fields(value)
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
    _check_fully(kind, value, arguments)
    return value


#: The address families a systemd endpoint may name (socket.AF_*).
_SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")


def _check_fully(kind: str, value: str, arguments: List[Tuple[Optional[str], str]]) -> None:
    """
    What Twisted would reject when heimdall starts, found now: the endpoint
    is built by Twisted's own parser (which does not listen), after the
    files an C{ssl} endpoint reads were checked, so that the error names
    them.  A C{systemd} endpoint is checked here instead: Twisted's parser
    looks its descriptor up at once, and it only exists under systemd.
    """
    if kind == "systemd":
        _check_systemd(arguments)
        return
    if kind == "ssl":
        _check_ssl_files(arguments)
    from twisted.internet.endpoints import serverFromString

    try:
        # Only stored by the parser, never used: nothing listens.
        serverFromString(object(), value)
    except Exception as e:  # the parsers raise whatever their conversions raise
        raise ValueError(f"not a usable {kind} endpoint: {e}") from None


def _check_systemd(arguments: List[Tuple[Optional[str], str]]) -> None:
    named = dict(arguments)
    unknown = sorted(str(key) for key in named if key not in ("domain", "index", "name"))
    if unknown or len(named) != len(arguments):
        raise ValueError('a systemd endpoint takes domain= and index= or name=, like "systemd:domain=INET:index=0"')
    if named.get("domain") not in _SYSTEMD_DOMAINS:
        raise ValueError(f"a systemd endpoint's domain must be one of {', '.join(_SYSTEMD_DOMAINS)}")
    if ("index" in named) == ("name" in named):
        raise ValueError("a systemd endpoint needs exactly one of index= and name=")
    index = named.get("index", "0")
    if not (index.isdigit() and index.isascii()):
        raise ValueError(f"a systemd endpoint's index must be a number, not {index!r}")


def _check_ssl_files(arguments: List[Tuple[Optional[str], str]]) -> None:
    # Twisted's defaults: privateKey=server.pem, certKey=the key's file.
    from heimdall.tls.certificates import load_key, load_pem_certificates

    named = {key: value for key, value in arguments if key is not None}
    key_path = named.get("privateKey", "server.pem")
    cert_path = named.get("certKey") or key_path
    try:
        load_pem_certificates(cert_path, "certKey")
        load_key(key_path, "privateKey")
    except ConfigError as e:
        raise ValueError(
            f"ssl {e.path}: {e.problem} (an ssl endpoint needs privateKey= and certKey= PEM files; "
            "the tls section is the other way to serve TLS)"
        ) from None


# --- Validators and converters ---------------------------------------------
#
# A validator raises ConfigError(attribute name [+ sub-path], problem); the
# JSON parser prefixes the path of the object the field belongs to.  Checks
# return a problem, or None when the value is fine.

Check = Callable[[Any], Optional[str]]


def validator(check: Check):
    def validate(instance, attribute, value):
        problem = check(value)
        if problem is not None:
            raise ConfigError(attribute.name, problem)

    return validate


def integer(low: int, high: int) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be an integer from {low} to {high}"
        return None

    return check


def boolean(value) -> Optional[str]:
    return None if isinstance(value, bool) else "must be true or false"


def text(value) -> Optional[str]:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def optional_text(value) -> Optional[str]:
    return None if value is None or isinstance(value, str) and value else "must be a non-empty string or null"


def one_of(*choices: str) -> Check:
    def check(value):
        if isinstance(value, str) and value in choices:
            return None
        listed = ", ".join(f'"{choice}"' for choice in choices)
        return f"must be one of {listed}{suggestion(value, choices)}"

    return check


def regular_expression(value) -> Optional[str]:
    """
    A Python regular expression, or None.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a regular expression string or null"
    try:
        re.compile(value)
    except re.error as e:
        return f"invalid regular expression: {e}"
    return None


def endpoint(value) -> Optional[str]:
    try:
        normalised = parse_endpoint(value)
    except (TypeError, ValueError) as e:
        return str(e)
    # A valid port number was already turned into a string by the converter.
    return None if normalised == value else ENDPOINT_PROBLEM


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def seconds(allow_zero: bool) -> Check:
    def check(value):
        if not is_number(value) or not _finite(value):
            return DURATION_PROBLEM
        if value < 0 or (value == 0 and not allow_zero):
            return "must not be negative" if allow_zero else "must be greater than 0"
        return None

    return check


def byte_count(allow_zero: bool) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return SIZE_PROBLEM
        if value == 0 and not allow_zero:
            return "must be greater than 0 (only max_body_bytes may be 0, meaning unlimited)"
        return None

    return check


def instance_of(cls: type, what: str) -> Check:
    return lambda value: None if isinstance(value, cls) else f"must be {what}"


def mapping(value) -> Optional[str]:
    if not isinstance(value, Mapping):
        return "must be an object"
    if not all(isinstance(key, str) for key in value):
        return "must have string keys"
    return None


def lenient(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
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


def plain(value):
    """
    A private copy of JSON-like data: mappings become dicts, lists and
    tuples are copied, anything else is shared.
    """
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)
    return value


def read_only_mapping(value):
    if isinstance(value, Mapping):
        return types.MappingProxyType(plain(value))
    return value


def tuple_from_list(value):
    return tuple(value) if isinstance(value, list) else value


def endpoint_from_port(value):
    # Only a valid port number is converted; anything else is left for the
    # validator to report.
    return _port_to_endpoint(value) if isinstance(value, int) else value


_port_to_endpoint = lenient(parse_endpoint)


def ip_networks(value):
    if not isinstance(value, (list, tuple)):
        return value
    return tuple(lenient(_ip_network)(item) if isinstance(item, str) else item for item in value)


def _ip_network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


# --- Field factories ---------------------------------------------------------

def section(cls: type, what: str):
    """
    A field holding a nested section: C{cls()} by default, parsed from a
    JSON object with the same rules as the top level.
    """
    return attrs.field(
        factory=cls,
        validator=validator(instance_of(cls, what)),
        metadata={FROM_JSON: lambda value, path: structure(cls, value, path)},
    )


def duration(default: float, allow_zero: bool = False):
    return attrs.field(
        default=default, converter=lenient(parse_duration), validator=validator(seconds(allow_zero))
    )


def size(default: int, allow_zero: bool = False):
    return attrs.field(default=default, converter=lenient(parse_size), validator=validator(byte_count(allow_zero)))


def endpoint_field(default: str):
    return attrs.field(default=default, converter=endpoint_from_port, validator=validator(endpoint))

