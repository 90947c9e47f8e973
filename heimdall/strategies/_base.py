"""
What strategies share: a factory value, option checking, the "prefer not
in avoid" rule, the client's address behind trusted proxies, and weighted
sampling.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import math
from bisect import bisect_right
from typing import (
    Any,
    Callable,
    Collection,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import attrs
from zope.interface import implementer

from heimdall.errors import NoBackendAvailable, StrategyOptionError
from heimdall.interfaces import IStrategyFactory

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@implementer(IStrategyFactory)
@attrs.frozen
class StrategyFactory:
    """
    A named strategy factory: C{build(options, random, clock)} validates
    the options (see L{Options}) and returns an L{IStrategy}.
    """

    name: str
    description: str
    build: Callable[..., Any]

    def create(self, options, random, clock):
        return self.build(Options(options), random, clock)


@attrs.define
class Options:
    """
    Strategy options being read by a factory: every option must be taken
    exactly once; C{done()} rejects the rest by name.
    """

    _raw: Mapping[str, Any]
    _taken: set = attrs.field(factory=set)

    def take(
        self, name: str, default: Any, check: Optional[Callable[[Any], Any]] = None, what: str = ""
    ) -> Any:
        """
        The value of option C{name} (or C{default}).  C{check(value)}
        returns the value to use or raises L{ValueError}/L{TypeError}, whose
        message becomes the error, prefixed by the option's name.
        """
        self._taken.add(name)
        if name not in self._raw:
            return default
        value = self._raw[name]
        if check is None:
            return value
        try:
            return check(value)
        except (TypeError, ValueError) as e:
            raise StrategyOptionError(name, str(e) or f"must be {what}") from None

    def __contains__(self, name: str) -> bool:
        """
        Whether option C{name} was given (for required options and options
        that only apply with another).
        """
        return name in self._raw

    def done(self) -> None:
        unknown = sorted(set(self._raw) - self._taken)
        if unknown:
            known = ", ".join(sorted(self._taken)) or "none"
            raise StrategyOptionError(unknown[0], f"unknown option (known options: {known})")


def first_not_avoided(candidates: Sequence[Any], start: int, avoid: Collection[Any]) -> Any:
    """
    The first of C{candidates} from index C{start} on (wrapping) that is
    not in C{avoid}; C{candidates[start]} when all are avoided.
    """
    n = len(candidates)
    if n == 0:
        raise NoBackendAvailable("no eligible backend")
    first = candidates[start % n]
    if not avoid or first not in avoid:
        return first
    for i in range(1, n):
        candidate = candidates[(start + i) % n]
        if candidate not in avoid:
            return candidate
    return first


# -- option checks: each returns the value to use or raises ValueError/TypeError


def check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("must be true or false")
    return value


def check_int(low: int, high: Optional[int] = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError("must be an integer")
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, not {value}")
        return value

    return check


def check_float(low: float, inclusive: bool = True) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError("must be a number")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if value < low or (not inclusive and value == low):
            raise ValueError(f"must be {'at least' if inclusive else 'above'} {low}, not {value}")
        return value

    return check


def check_choice(*choices: Any) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
        return value

    return check


def check_networks(value: Any) -> Tuple[IPNetwork, ...]:
    """
    A list of CIDRs (C{"10.0.0.0/8"}, C{"::1/128"}, or a bare address).
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError("must be a list of CIDRs")
    networks = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"must be a list of CIDR strings, not {item!r}")
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR") from None
    return tuple(networks)


# -- the client's address ------------------------------------------------------


def _parse_ip(text: str) -> Optional[IPAddress]:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(context: Any, trusted_proxies: Sequence[IPNetwork] = ()) -> Optional[str]:
    """
    The client's address as text, or L{None} when unknown.

    Without C{trusted_proxies}, the peer's address.  With them, and only if
    the peer is one of them, the rightmost address in X-Forwarded-For that is
    not a trusted proxy: everything to its right was appended by proxies we
    trust, everything to its left may be forged by the client.  An entry
    that is not an address stops the walk at the last good one.
    """
    peer = context.client_address
    if not peer:
        return None
    if not trusted_proxies:
        # Fast path: no parsing, only the IPv4-mapped form is folded.
        return peer[7:] if peer.startswith("::ffff:") and "." in peer else peer
    found, trusted = _classify(peer, trusted_proxies)
    if found is None:
        return peer
    if not trusted:
        return found
    forwarded = context.headers.getRawHeaders(b"x-forwarded-for") or ()
    hops = [hop for value in forwarded for hop in value.split(b",") if hop.strip()]
    for hop in reversed(hops):
        address, trusted = _classify(hop.decode("latin-1"), trusted_proxies)
        if address is None:
            break
        found = address
        if not trusted:
            break
    return found


@functools.lru_cache(maxsize=16384)
def _classify(text: str, networks: Tuple[IPNetwork, ...]) -> Tuple[Optional[str], bool]:
    """
    The canonical form of address C{text} (L{None} if it is not one) and
    whether it is in C{networks}.  Cached: parsing costs microseconds, and
    the same proxies and clients come back again and again.
    """
    ip = _parse_ip(text)
    if ip is None:
        return None, False
    return str(ip), any(ip.version == net.version and ip in net for net in networks)


# -- sampling ------------------------------------------------------------------


@attrs.define(eq=False)
class WeightedSampler:
    """
    Draws members with probability proportional to weight: O(1) when all
    weights are equal, O(log n) by bisection otherwise.
    """

    members: List[Any]
    weights: List[int] = attrs.field(init=False)
    _cumulative: List[int] = attrs.field(init=False)
    _total: int = attrs.field(init=False)
    _uniform: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.weights = [m.weight for m in self.members]
        self._cumulative = list(itertools.accumulate(self.weights))
        self._total = self._cumulative[-1] if self.weights else 0
        self._uniform = len(set(self.weights)) <= 1

    def rebuilt(self, members) -> "WeightedSampler":
        """
        A sampler for C{members}: this one if neither the members nor their
        weights changed (rebuilds must stay cheap and idempotent), else new.
        """
        members = list(members)
        if members == self.members and [m.weight for m in members] == self.weights:
            return self
        return WeightedSampler(members)

    def sample(self, random: Any) -> Any:
        members = self.members
        if not members:
            raise NoBackendAvailable("no eligible backend")
        if self._uniform:
            return members[int(random.random() * len(members))]
        index = bisect_right(self._cumulative, random.random() * self._total)
        return members[min(index, len(members) - 1)]

    def sample_not_avoided(self, random: Any, avoid: Collection[Any], tries: int = 4) -> Any:
        """
        A weighted draw that is not in C{avoid} if one exists: a few draws,
        then the first member not avoided from a random start (only reached
        when most members are avoided).
        """
        chosen = self.sample(random)
        if not avoid or chosen not in avoid:
            return chosen
        for _ in range(tries):
            chosen = self.sample(random)
            if chosen not in avoid:
                return chosen
        return first_not_avoided(self.members, int(random.random() * len(self.members)), avoid)


# -- lowest score, random tie-break ----------------------------------------------

_INFINITY = float("inf")


def lowest_score(
    scores: List[Any],
    members: Sequence[Any],
    random: Any,
    avoid: Collection[Any] = (),
    index: Optional[Mapping[Any, int]] = None,
) -> Any:
    """
    The member with the lowest score (C{scores[i]} is C{members[i]}'s),
    uniformly at random among ties, preferring members not in C{avoid}
    (C{index} maps a member to its position).  C{scores} is consumed.

    The work is done by C{min}, C{count} and C{index}, which loop in C: the
    only Python-level loop is bounded by n/8 (rejection sampling when ties
    are many, a walk over the ties when they are few).
    """
    n = len(scores)
    if n == 0:
        raise NoBackendAvailable("no eligible backend")
    if avoid:
        kept = scores[:]
        for member in avoid:
            i = index.get(member) if index is not None else None
            if i is not None:
                scores[i] = _INFINITY
        if min(scores) == _INFINITY:  # every member avoided: ignore avoid
            scores = kept
    lowest = min(scores)
    ties = scores.count(lowest)
    if ties == 1:
        return members[scores.index(lowest)]
    if ties * 8 >= n:
        while True:  # expected at most 8 draws
            i = int(random.random() * n)
            if scores[i] == lowest:
                return members[i]
    i = -1
    for _ in range(int(random.random() * ties) + 1):
        i = scores.index(lowest, i + 1)
    return members[i]
