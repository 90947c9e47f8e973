"""
The C{routes} list of the config: frozen values, each field checked, read
from JSON with the same strict reader as the rest of the config.

A route is a L{RouteConfig}: a L{MatchConfig} (all of its keys must hold)
and one action: C{service} (proxy to that service, with the optional
rewrites C{strip_prefix}, C{add_prefix}, C{set_host}, C{request_headers},
C{response_headers}), C{redirect} (with C{status}) or C{respond}.  The
route table itself, compiled for lookups, is L{heimdall.routing.table}.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Tuple

import attrs

from heimdall.config.fields import (
    boolean,
    instance_of,
    integer,
    read_only_mapping,
    regular_expression,
    text,
    validator,
)
from heimdall.config.reader import FROM_JSON, join, read_list, structure, suggestion
from heimdall.errors import ConfigError

__all__ = [
    "HeaderRewriteConfig",
    "MatchConfig",
    "RespondConfig",
    "RouteConfig",
    "REDIRECT_STATUSES",
    "check_route_services",
    "parse_routes",
]

#: The statuses a redirect route may answer with.
REDIRECT_STATUSES = (301, 302, 303, 307, 308)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")
# Headers heimdall writes itself, or that only mean something for one hop.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"}
)


def _header_name(value) -> Optional[str]:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        return "must be a header name (letters, digits and !#$%&'*+.^_`|~-)"
    return None


def _rewritable_name(value) -> Optional[str]:
    problem = _header_name(value)
    if problem is None and value.lower() in _RESERVED_HEADERS:
        problem = f"{value} is managed by heimdall and cannot be rewritten (use set_host for Host)"
    return problem


def _header_value(value) -> Optional[str]:
    if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
        return "must be a string without CR, LF or NUL"
    if not value.isascii():
        return "must be ASCII text"
    return None


def _check_entries(name_check, value_check):
    def check(instance, attribute, value):
        if not isinstance(value, Mapping):
            raise ConfigError(attribute.name, "must be an object of header names to strings")
        for key, item in value.items():
            problem = name_check(key) or value_check(item)
            if problem:
                raise ConfigError(f"{attribute.name}.{key}", problem)

    return check


def _check_names(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, "must be a list of header names")
    for index, name in enumerate(value):
        problem = _rewritable_name(name)
        if problem:
            raise ConfigError(f"{attribute.name}[{index}]", problem)


def _names_tuple(value):
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen
class HeaderRewriteConfig:
    """
    Header changes, applied in this order: C{remove} (names), C{set}
    (replacing every value of the name), C{add} (one more value).
    """

    set: Mapping[str, str] = attrs.field(
        factory=dict, converter=read_only_mapping, validator=_check_entries(_rewritable_name, _header_value), hash=False
    )
    add: Mapping[str, str] = attrs.field(
        factory=dict, converter=read_only_mapping, validator=_check_entries(_rewritable_name, _header_value), hash=False
    )
    remove: Tuple[str, ...] = attrs.field(default=(), converter=_names_tuple, validator=_check_names)

    @property
    def is_empty(self) -> bool:
        return not (self.set or self.add or self.remove)


def _check_host(instance, attribute, value) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(attribute.name, 'must be a host name like "api.example.com" or "*.example.com"')
    lower = value.lower().rstrip(".")
    if not lower.startswith("[") and ":" in lower:
        raise ConfigError(attribute.name, "hosts are compared without the port: leave the port out")
    if not _HOST.fullmatch(lower) or "*" in lower[1:]:
        raise ConfigError(attribute.name, 'must be a host name like "api.example.com" or "*.example.com"')


def _lower_host(value):
    return value.lower().rstrip(".") if isinstance(value, str) and value.rstrip(".") else value


def _check_prefix(instance, attribute, value) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith("/") or not value.isascii() or any(
        c in value for c in " ?#\r\n\t\0"
    ):
        raise ConfigError(attribute.name, 'must be a path starting with "/" (ASCII, no spaces, "?" or "#")')


def _check_methods(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, 'must be a list of methods like ["GET", "HEAD"]')
    for index, method in enumerate(value):
        if not isinstance(method, str) or not _TOKEN.fullmatch(method):
            raise ConfigError(f"{attribute.name}[{index}]", "must be an HTTP method name")


def _upper_methods(value):
    if isinstance(value, (list, tuple)):
        return tuple(m.upper() if isinstance(m, str) else m for m in value)
    return value


def _check_header_matches(instance, attribute, value) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(attribute.name, 'must be an object of header names to a value or {"regex": "..."}')
    for name, expected in value.items():
        where = f"{attribute.name}.{name}"
        problem = _header_name(name)
        if problem:
            raise ConfigError(where, problem)
        if isinstance(expected, Mapping):
            if set(expected) != {"regex"}:
                raise ConfigError(where, 'must be a string or {"regex": "..."}')
            problem = regular_expression(expected["regex"])
            if problem:
                raise ConfigError(f"{where}.regex", problem)
        elif not isinstance(expected, str):
            raise ConfigError(where, 'must be a string or {"regex": "..."}')


def _check_query(instance, attribute, value) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(attribute.name, "must be an object of parameter names to values")
    for name, expected in value.items():
        if not isinstance(name, str) or not name or not isinstance(expected, str):
            raise ConfigError(f"{attribute.name}.{name}", "must be a string")


@attrs.frozen
class MatchConfig:
    """
    What a request must look like for a route to take it; every key given
    must hold.  C{host} is exact or C{*.example.com} (any depth below
    example.com, not example.com itself), compared without the port and
    case-insensitively; C{path_prefix} is a plain string prefix of the path;
    C{path_regex} is searched in the path (anchor it with C{^}/C{$});
    C{headers} maps a name to an exact value or C{{"regex": ...}} (searched);
    C{query} maps a parameter to a value it must have.
    """

    host: Optional[str] = attrs.field(default=None, converter=_lower_host, validator=_check_host)
    path_prefix: Optional[str] = attrs.field(default=None, validator=_check_prefix)
    path_regex: Optional[str] = attrs.field(default=None, validator=validator(regular_expression))
    methods: Tuple[str, ...] = attrs.field(default=(), converter=_upper_methods, validator=_check_methods)
    headers: Mapping[str, Any] = attrs.field(
        factory=dict, converter=read_only_mapping, validator=_check_header_matches, hash=False
    )
    query: Mapping[str, str] = attrs.field(
        factory=dict, converter=read_only_mapping, validator=_check_query, hash=False
    )


def _status(low: int, high: int):
    return validator(integer(low, high))


@attrs.frozen
class RespondConfig:
    """
    An answer heimdall gives itself, without a backend.
    """

    status: int = attrs.field(default=200, validator=_status(200, 599))
    body: str = attrs.field(default="", validator=validator(instance_of(str, "a string")))
    content_type: str = attrs.field(default="text/plain; charset=utf-8", validator=validator(text))


def _optional_text(instance, attribute, value) -> None:
    if value is not None:
        problem = text(value) or _header_value(value)
        if problem:
            raise ConfigError(attribute.name, problem)


REDIRECT_PLACEHOLDERS = ("scheme", "host", "port", "path", "query", "uri")


def _check_redirect(instance, attribute, value) -> None:
    _optional_text(instance, attribute, value)
    if value is None:
        return
    import string

    try:
        fields = [field for _, field, spec, conversion in string.Formatter().parse(value) if field is not None]
    except ValueError as e:
        raise ConfigError(attribute.name, f"is not a valid template ({e}); write {{{{ and }}}} for braces") from None
    for field in fields:
        if field not in REDIRECT_PLACEHOLDERS:
            raise ConfigError(
                attribute.name,
                f"unknown placeholder {{{field}}}; known: " + ", ".join("{%s}" % p for p in REDIRECT_PLACEHOLDERS),
            )


def _optional_prefix(instance, attribute, value) -> None:
    _check_prefix(instance, attribute, value)
    if value is not None and value.endswith("/") and value != "/":
        raise ConfigError(attribute.name, 'must not end with "/" (the path it goes before starts with one)')


def _optional_status(instance, attribute, value) -> None:
    if value is not None and value not in REDIRECT_STATUSES:
        raise ConfigError(attribute.name, f"must be one of {', '.join(map(str, REDIRECT_STATUSES))}")


def _section(cls, what: str):
    return attrs.field(
        factory=cls,
        validator=validator(instance_of(cls, what)),
        metadata={FROM_JSON: lambda value, path: structure(cls, value, path)},
    )


@attrs.frozen
class RouteConfig:
    """
    One route: a match and one action (C{service}, C{redirect} or
    C{respond}).  The rewrites apply to C{service} routes only.

    @ivar redirect: a URL template with C{{scheme}}, C{{host}} (without
        port), C{{port}}, C{{path}}, C{{query}} (without C{?}) and C{{uri}}
        (path and query); the query string is kept (appended) unless the
        template uses C{{query}} or C{{uri}} or has a C{?} of its own.
    @ivar status: the redirect's status (default 302).
    """

    match: MatchConfig = _section(MatchConfig, "a MatchConfig")
    service: Optional[str] = attrs.field(default=None, validator=_optional_text)
    strip_prefix: bool = attrs.field(default=False, validator=validator(boolean))
    add_prefix: Optional[str] = attrs.field(default=None, validator=_optional_prefix)
    set_host: Optional[str] = attrs.field(default=None, validator=_optional_text)
    request_headers: HeaderRewriteConfig = _section(HeaderRewriteConfig, "a HeaderRewriteConfig")
    response_headers: HeaderRewriteConfig = _section(HeaderRewriteConfig, "a HeaderRewriteConfig")
    redirect: Optional[str] = attrs.field(default=None, validator=_check_redirect)
    status: Optional[int] = attrs.field(default=None, validator=_optional_status)
    respond: Optional[RespondConfig] = attrs.field(
        default=None,
        validator=attrs.validators.optional(validator(instance_of(RespondConfig, "a RespondConfig"))),
        metadata={FROM_JSON: lambda value, path: structure(RespondConfig, value, path)},
    )

    def __attrs_post_init__(self) -> None:
        actions = [name for name in ("service", "redirect", "respond") if getattr(self, name) is not None]
        if len(actions) != 1:
            raise ConfigError(
                "service" if not actions else actions[1],
                'a route needs exactly one of "service", "redirect" and "respond"'
                + (f" (it has {' and '.join(actions)})" if actions else ""),
            )
        if self.status is not None and self.redirect is None:
            raise ConfigError("status", 'is the status of a "redirect" (a "respond" has its own)')
        if self.service is None:
            for name in ("strip_prefix", "add_prefix", "set_host"):
                if getattr(self, name):
                    raise ConfigError(name, 'applies to routes to a "service" only')
            for name in ("request_headers", "response_headers"):
                if not getattr(self, name).is_empty:
                    raise ConfigError(name, 'applies to routes to a "service" only')
        if self.strip_prefix and self.match.path_prefix is None:
            raise ConfigError("strip_prefix", "needs match.path_prefix (the prefix to strip)")

    @property
    def redirect_status(self) -> int:
        return self.status if self.status is not None else 302


def parse_routes(data: object, path: str = "routes") -> Tuple[RouteConfig, ...]:
    """
    The C{routes} list from JSON.

    @raise ConfigError: naming the first bad field (C{routes[2].match.host: ...}).
    """
    routes = []
    for index, item in enumerate(read_list(data, path, "must be a list of routes")):
        routes.append(structure(RouteConfig, item, f"{path}[{index}]"))
    return tuple(routes)


def check_route_services(routes: Tuple[RouteConfig, ...], services, path: str = "routes") -> None:
    """
    Every route's C{service} must be one of C{services} (names).
    """
    for index, route in enumerate(routes):
        if route.service is not None and route.service not in services:
            raise ConfigError(
                join(path, f"[{index}]") + ".service",
                f"no service {route.service!r}; services: {', '.join(services)}{suggestion(route.service, services)}",
            )
