"""
The route table: the config's routes compiled for cheap lookups, as one
immutable value (a router swaps it by reference on reload).

Routes are tried in order and the first whose every match key holds wins.
A lookup does not scan the table:

  - routes are bucketed by host: exact hosts in a dict, wildcards
    (C{*.example.com}) in a dict by their suffix, looked up once per dot
    of the request's host, and routes without a host in a bucket of their
    own;
  - in a bucket, routes are indexed by C{path_prefix} (C{""} for none) in a
    dict, looked up once per distinct prefix length in that bucket;
  - the candidates found (each list in table order) are merged in table
    order, and the rest of each candidate's keys (regex, methods, headers,
    query) are checked until one holds.

Paths are compared as the client sent them, with only the unreserved
characters (letters, digits, C{-._~}) percent-decoded: C{/%61dmin} is
C{/admin}, while C{%2F} stays C{%2F}.  Hosts are compared without the port,
in lower case, without a trailing dot.
"""

from __future__ import annotations

import heapq
import re
from typing import Dict, List, Optional, Sequence, Tuple

import attrs
from zope.interface import implementer

from heimdall.config.routes import HeaderRewriteConfig, RouteConfig
from heimdall.interfaces import IRequestRewrite

__all__ = ["CompiledRoute", "Rewrite", "RouteTable", "match_path", "request_host"]

PROXY, REDIRECT, RESPOND = "proxy", "redirect", "respond"

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _decode_unreserved(match) -> bytes:
    byte = int(match.group(1), 16)
    return bytes((byte,)) if byte in _UNRESERVED else match.group(0).upper()


def match_path(path: bytes) -> bytes:
    """
    C{path} as routes see it: unreserved characters percent-decoded.
    """
    return _PERCENT.sub(_decode_unreserved, path) if b"%" in path else path


def request_host(value: Optional[bytes]) -> bytes:
    """
    A Host header's host as routes compare it: without the port, lower
    case, no trailing dot (C{b""} without a Host).
    """
    if not value:
        return b""
    value = value.strip().lower()
    if value.startswith(b"["):
        end = value.find(b"]")
        return value[: end + 1] if end > 0 else value
    colon = value.rfind(b":")
    if colon >= 0:
        value = value[:colon]
    return value.rstrip(b".")


def _pairs(mapping) -> Tuple[Tuple[bytes, bytes], ...]:
    return tuple((name.encode("ascii"), value.encode("ascii")) for name, value in mapping.items())


@implementer(IRequestRewrite)
@attrs.frozen
class Rewrite:
    """
    A route's rewrites, as bytes, ready for the exchange (L{IRequestRewrite}).
    """

    strip: bytes = b""
    add: bytes = b""
    host: Optional[bytes] = None
    request_remove: frozenset = frozenset()
    request_set: Tuple[Tuple[bytes, bytes], ...] = ()
    request_add: Tuple[Tuple[bytes, bytes], ...] = ()
    response_remove: Tuple[bytes, ...] = ()
    response_set: Tuple[Tuple[bytes, bytes], ...] = ()
    response_add: Tuple[Tuple[bytes, bytes], ...] = ()

    @classmethod
    def from_route(cls, route: RouteConfig) -> Optional["Rewrite"]:
        """
        The rewrite of a C{service} route, or L{None} if it changes nothing.
        """
        request: HeaderRewriteConfig = route.request_headers
        response: HeaderRewriteConfig = route.response_headers
        rewrite = cls(
            strip=route.match.path_prefix.encode("ascii") if route.strip_prefix else b"",
            add=(route.add_prefix or "").encode("ascii"),
            host=route.set_host.encode("ascii") if route.set_host else None,
            # A name that is set is removed first, so "set" replaces it.
            request_remove=frozenset(n.lower().encode("ascii") for n in tuple(request.remove) + tuple(request.set)),
            request_set=_pairs(request.set),
            request_add=_pairs(request.add),
            response_remove=tuple(n.encode("ascii") for n in response.remove),
            response_set=_pairs(response.set),
            response_add=_pairs(response.add),
        )
        return None if rewrite == cls() else rewrite

    def path(self, path: bytes) -> bytes:
        strip = self.strip
        if strip and path.startswith(strip):
            path = path[len(strip):]
            if not path.startswith(b"/"):
                path = b"/" + path
        if self.add:
            path = self.add + path
        return path

    def request_headers(self, headers: List[Tuple[bytes, bytes]]) -> List[Tuple[bytes, bytes]]:
        remove = self.request_remove
        if remove:
            headers = [(name, value) for name, value in headers if name.lower() not in remove]
        headers.extend(self.request_set)
        headers.extend(self.request_add)
        return headers

    def response_headers(self, headers) -> None:
        for name in self.response_remove:
            headers.removeHeader(name)
        for name, value in self.response_set:
            headers.setRawHeaders(name, [value])
        for name, value in self.response_add:
            headers.addRawHeader(name, value)


class CompiledRoute:
    """
    One route, compiled: its position, its action and the keys left to
    check once the host and prefix indexes chose it as a candidate.
    """

    __slots__ = (
        "index", "config", "action", "service", "rewrite", "prefix", "regex", "methods", "headers", "query",
        "has_rest", "respond_type", "respond_body",
    )

    def __init__(self, index: int, config: RouteConfig) -> None:
        match = config.match
        self.index = index
        self.config = config
        self.action = PROXY if config.service is not None else REDIRECT if config.redirect is not None else RESPOND
        self.service = config.service
        self.rewrite = Rewrite.from_route(config) if config.service is not None else None
        self.prefix = match.path_prefix.encode("ascii") if match.path_prefix else b""
        self.regex = re.compile(match.path_regex) if match.path_regex else None
        self.methods = frozenset(m.encode("ascii") for m in match.methods) or None
        headers = []
        for name, expected in match.headers.items():
            if isinstance(expected, str):
                headers.append((name.encode("ascii"), expected.encode("latin-1"), None))
            else:
                headers.append((name.encode("ascii"), None, re.compile(expected["regex"])))
        self.headers = tuple(headers)
        self.query = tuple((n.encode("utf-8"), v.encode("utf-8")) for n, v in match.query.items())
        self.has_rest = bool(self.regex or self.methods or self.headers or self.query)
        # A respond route's answer, encoded once.
        respond = config.respond if self.action is RESPOND else None
        self.respond_type = respond.content_type.encode("latin-1") if respond is not None else None
        self.respond_body = respond.body.encode("utf-8") if respond is not None else None

    def __lt__(self, other: "CompiledRoute") -> bool:
        return self.index < other.index

    def rest_matches(self, request, path: bytes) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return False
        if self.regex is not None and self.regex.search(path.decode("latin-1")) is None:
            return False
        if self.headers:
            raw = request.requestHeaders
            for name, exact, regex in self.headers:
                values = raw.getRawHeaders(name)
                if not values:
                    return False
                if exact is not None:
                    if exact not in values:
                        return False
                elif not any(regex.search(value.decode("latin-1")) for value in values):
                    return False
        if self.query:
            args = request.args or {}
            for name, value in self.query:
                if value not in args.get(name, ()):
                    return False
        return True


class _Bucket:
    """
    The routes of one host key, indexed by path prefix.
    """

    __slots__ = ("by_prefix", "lengths")

    def __init__(self) -> None:
        self.by_prefix: Dict[bytes, List[CompiledRoute]] = {}
        self.lengths: Tuple[int, ...] = ()

    def add(self, route: CompiledRoute) -> None:
        self.by_prefix.setdefault(route.prefix, []).append(route)
        self.lengths = tuple(sorted({len(prefix) for prefix in self.by_prefix}))

    def collect(self, path: bytes, into: list) -> None:
        by_prefix = self.by_prefix
        size = len(path)
        for length in self.lengths:
            if length > size:
                break
            found = by_prefix.get(path[:length])
            if found is not None:
                into.append(found)


@attrs.frozen(eq=False)
class RouteTable:
    """
    The compiled routes (build one with L{compile}); immutable.
    """

    routes: Tuple[CompiledRoute, ...]
    _exact: Dict[bytes, _Bucket]
    _wildcard: Dict[bytes, _Bucket]
    _any: _Bucket

    @classmethod
    def compile(cls, routes: Sequence[RouteConfig]) -> "RouteTable":
        compiled = tuple(CompiledRoute(index, route) for index, route in enumerate(routes))
        exact: Dict[bytes, _Bucket] = {}
        wildcard: Dict[bytes, _Bucket] = {}
        anywhere = _Bucket()
        for route in compiled:
            host = route.config.match.host
            if host is None:
                bucket = anywhere
            elif host.startswith("*."):
                bucket = wildcard.setdefault(host[2:].encode("ascii"), _Bucket())
            else:
                bucket = exact.setdefault(host.encode("ascii"), _Bucket())
            bucket.add(route)
        return cls(compiled, exact, wildcard, anywhere)

    def __len__(self) -> int:
        return len(self.routes)

    def lookup(self, request, host: bytes, path: bytes) -> Optional[CompiledRoute]:
        """
        The first route that takes C{request}, whose host is C{host} (see
        L{request_host}) and whose path is C{path} (see L{match_path});
        L{None} if none does.
        """
        candidates: list = []
        bucket = self._exact.get(host)
        if bucket is not None:
            bucket.collect(path, candidates)
        if self._wildcard:
            wildcard = self._wildcard
            dot = host.find(b".")
            while dot >= 0:
                bucket = wildcard.get(host[dot + 1:])
                if bucket is not None:
                    bucket.collect(path, candidates)
                dot = host.find(b".", dot + 1)
        self._any.collect(path, candidates)
        if not candidates:
            return None
        ordered = candidates[0] if len(candidates) == 1 else heapq.merge(*candidates)
        for route in ordered:
            if not route.has_rest or route.rest_matches(request, path):
                return route
        return None
