"""
Consistent hashing on a request key, with optional bounded load.

The key is one of C{ip} (the client address, X-Forwarded-For only from
C{trusted_proxies}), C{url} (the path, and the query with
C{include_query}), C{header:NAME}, C{cookie:NAME} or C{query:NAME}.  A
request without the key (no such header, an empty cookie) goes round robin.

The ring (L{heimdall.strategies.hashing.HashRing}) has virtual nodes in proportion to
weight, placed by a stable hash, so every heimdall maps a key to the same
backend and adding or removing a backend moves only about 1/N of the keys.
A pick is one stable hash and one bisection: O(log n).

With C{balance_factor} (say 1.25) a member is skipped while taking the
request would put it above C{ceil(factor x average in-flight)}, average
weighted and counting this request (HAProxy's hash-balance-factor;
Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
Loads", 2016): the key goes on clockwise to the next member with room.
Checking room needs the pool's total in flight, a scan: it is only done
when the key's own member is busy, so an idle or lightly loaded pool stays
O(log n).
"""

from __future__ import annotations

import re
from fractions import Fraction
from operator import attrgetter
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

import attrs
from zope.interface import implementer

from heimdall.errors import NoBackendAvailable, StrategyOptionError
from heimdall.strategies.hashing import DEFAULT_POINTS_PER_WEIGHT, HashRing, stable_hash
from heimdall.interfaces import IInFlightAware, IStrategy
from heimdall.strategies._base import (
    StrategyFactory,
    check_bool,
    check_float,
    check_int,
    check_networks,
    client_address,
)
from heimdall.strategies.round_robin import RoundRobin

KeyFunction = Callable[[Any], Optional[bytes]]

_in_flight = attrgetter("in_flight")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@implementer(IStrategy, IInFlightAware)
@attrs.define(eq=False)
class ConsistentHash:
    """
    @ivar key: the request's key as bytes, or L{None} when absent.
    """

    key: KeyFunction
    random: Any
    points_per_weight: int = DEFAULT_POINTS_PER_WEIGHT
    balance_factor: Optional[float] = None
    # Requests in flight on the eligible members, if the pool can say
    # (see attach_in_flight_total); else the members are summed.
    in_flight_total: Optional[Callable[[], int]] = None
    _fallback: RoundRobin = attrs.field(init=False)
    _ring: HashRing = attrs.field(init=False)
    # The ring is brought up to date on the next pick, not on every rebuild:
    # the pool rebuilds once per backend added at start-up.
    _stale: bool = attrs.field(init=False, default=False)
    _members: List = attrs.field(init=False, factory=list)
    _weights: List[int] = attrs.field(init=False, factory=list)
    # Weights as of the last rebuild: the ring's, even while a slow start ramps.
    _weight_of: Dict[Any, int] = attrs.field(init=False, factory=dict)
    _total_weight: int = attrs.field(init=False, default=0)
    # The factor as an exact ratio p/q, so capacities are integer arithmetic.
    _factor: Optional[Tuple[int, int]] = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._fallback = RoundRobin(self.random)
        self._ring = HashRing(self.points_per_weight)
        if self.balance_factor is not None:
            self._factor = Fraction(self.balance_factor).as_integer_ratio()

    def attach_in_flight_total(self, total: Callable[[], int]) -> None:
        """
        Let the pool tell the total in flight on its eligible members in
        O(1), which makes bounded-load picks O(log n) when busy too.
        """
        self.in_flight_total = total

    @property
    def ring(self) -> HashRing:
        if self._stale:
            self._ring.update(self._members)
            self._stale = False
        return self._ring

    def rebuild(self, members) -> None:
        members = list(members)
        weights = [m.weight for m in members]
        if members == self._members and weights == self._weights:
            return
        self._stale = True
        self._fallback.rebuild(members)
        self._members, self._weights, self._total_weight = members, weights, sum(weights)
        self._weight_of = dict(zip(members, weights))

    def pick(self, context, avoid: Collection = ()):
        if not self._members:
            raise NoBackendAvailable("no eligible backend")
        key = self.key(context)
        if not key:
            return self._fallback.pick(context, avoid)
        ring = self.ring
        start = ring.position(stable_hash(key))
        owner = ring.owner_at(start)
        if (not avoid or owner not in avoid) and (self._factor is None or owner.in_flight == 0):
            return owner  # the fast path: an idle owner always has room
        return self._walk(start, avoid)

    def _walk(self, start: int, avoid: Collection) -> Any:
        fallback = None
        total = None
        for member in self._ring.walk(start):
            if avoid and member in avoid:
                continue
            if self._factor is None:
                return member
            if member.in_flight == 0:
                return member
            if total is None:
                total = (
                    self.in_flight_total()
                    if self.in_flight_total is not None
                    else sum(map(_in_flight, self._members))
                )
            if self.has_room(member, total):
                return member
            if fallback is None:
                fallback = member
        # Every member is avoided or full (only possible with avoid).
        return fallback if fallback is not None else self._ring.owner_at(start)

    def has_room(self, member: Any, total_in_flight: int) -> bool:
        """
        Whether C{member} may take one more request without going above
        C{ceil(factor x (total_in_flight + 1) x weight / total weight)}.
        """
        if self._factor is None:
            return True
        p, q = self._factor
        numerator = p * (total_in_flight + 1) * self._weight_of.get(member, 1)
        capacity = -(-numerator // (q * self._total_weight))
        return member.in_flight < capacity


# -- keys ------------------------------------------------------------------------


def ip_key(trusted_proxies=()) -> KeyFunction:
    def key(context) -> Optional[bytes]:
        address = client_address(context, trusted_proxies)
        return address.encode("ascii", "replace") if address else None

    return key


def url_key(include_query: bool = False) -> KeyFunction:
    def key(context) -> Optional[bytes]:
        if include_query and context.query:
            return context.path + b"?" + context.query
        return context.path

    return key


def header_key(name: bytes) -> KeyFunction:
    def key(context) -> Optional[bytes]:
        return context.header(name)

    return key


def cookie_key(name: bytes) -> KeyFunction:
    def key(context) -> Optional[bytes]:
        cookies = context.cookies
        return cookies.get(name) if cookies else None

    return key


def query_key(name: bytes) -> KeyFunction:
    def key(context) -> Optional[bytes]:
        query = context.query
        if not query:
            return None
        for pair in query.split(b"&"):
            field, _, value = pair.partition(b"=")
            if unquote_to_bytes(field.replace(b"+", b" ")) == name:
                return unquote_to_bytes(value.replace(b"+", b" "))
        return None

    return key


KEY_SYNTAX = "ip, url, header:NAME, cookie:NAME or query:NAME"


def _check_key(value: Any) -> Tuple[str, bytes]:
    if not isinstance(value, str):
        raise TypeError(f"must be one of {KEY_SYNTAX}")
    kind, colon, name = value.partition(":")
    if kind in ("ip", "url") and not colon:
        return kind, b""
    if kind in ("header", "cookie", "query") and colon and name:
        if kind != "query" and not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not a valid {kind} name")
        return kind, name.encode("utf-8")
    raise ValueError(f"must be one of {KEY_SYNTAX}, not {value!r}")


def build_hash(options, random, key: Optional[str] = None) -> ConsistentHash:
    """
    Read the options every hash strategy shares and build one.  C{key} is
    fixed by C{ip_hash} and C{url_hash}; the C{hash} strategy reads it from
    the options.
    """
    if key is None:
        if "key" not in options:
            raise StrategyOptionError("key", f"required: one of {KEY_SYNTAX}")
        kind, name = options.take("key", None, _check_key)
    else:
        kind, name = _check_key(key)
    balance_factor = options.take("balance_factor", None, _check_factor)
    points = options.take("points_per_weight", DEFAULT_POINTS_PER_WEIGHT, check_int(1, 1000))
    for option, applies in (("trusted_proxies", "ip"), ("include_query", "url")):
        if option in options and kind != applies:
            raise StrategyOptionError(option, f"only applies to key {applies}")
    if kind == "ip":
        key_function = ip_key(options.take("trusted_proxies", (), check_networks))
    elif kind == "url":
        key_function = url_key(options.take("include_query", False, check_bool))
    elif kind == "header":
        key_function = header_key(name.lower())
    elif kind == "cookie":
        key_function = cookie_key(name)
    else:
        key_function = query_key(name)
    options.done()
    return ConsistentHash(key_function, random, points_per_weight=points, balance_factor=balance_factor)


def _check_factor(value: Any) -> Optional[float]:
    if value is None:
        return None
    return check_float(1.0, inclusive=False)(value)


factory = StrategyFactory(
    name="hash",
    description="Consistent hashing on ip, url, a header, a cookie or a query field; for cache affinity.",
    build=lambda options, random, clock: build_hash(options, random),
)
