"""
Sticky round robin: round robin for a new client, then the same backend for
the same client for as long as that backend is eligible.

With C{key: cookie} (the default) the client carries its pin in a cookie
that heimdall sets.  The value is an HMAC-SHA256 of the backend's id under
C{secret}, truncated to 128 bits: it does not reveal the backend's address,
and a client cannot forge one to reach a backend it was never sent to.  A
cookie naming no eligible backend (gone, down, draining, or forged) is
ignored: the client is re-pinned by round robin and, through
L{IResponseObserver.response_started}, gets a new cookie.  Give every
heimdall of a fleet the same C{secret} so that their cookies agree; without
one, each process makes its own, and cookies do not survive a restart.

With C{key: ip} the pin is kept in heimdall, per client address (behind
C{trusted_proxies}, from X-Forwarded-For), for up to C{max_clients}
addresses, least recently seen forgotten first, and for C{max_age} seconds
of inactivity when set.

A pick is a dictionary lookup, or a round robin step: O(1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from typing import Any, Collection, Dict, Optional, Tuple, Union

import attrs
from zope.interface import implementer

from heimdall.errors import StrategyOptionError
from heimdall.interfaces import IResponseObserver, IStrategy
from heimdall.strategies._base import (
    StrategyFactory,
    check_bool,
    check_choice,
    check_int,
    check_networks,
    client_address,
)
from heimdall.strategies.round_robin import RoundRobin

DEFAULT_COOKIE = "heimdall_sticky"
DEFAULT_MAX_CLIENTS = 100_000

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PATH = re.compile(r"^/[\x21-\x3a\x3c-\x7e]*$")  # printable, no ';' or space

_process_secret: Optional[bytes] = None


def process_secret() -> bytes:
    """
    A secret made once per process from the operating system's CSPRNG.  Not
    from the injected L{random.Random}: a seeded or predictable secret would
    let clients forge cookies.
    """
    global _process_secret
    if _process_secret is None:
        _process_secret = secrets.token_bytes(32)
    return _process_secret


def cookie_token(secret: bytes, backend_id: str) -> bytes:
    """
    The cookie value that pins to C{backend_id}.
    """
    mac = hmac.new(secret, b"heimdall-sticky-v1\0" + backend_id.encode("utf-8"), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:16]).rstrip(b"=")


@attrs.frozen
class CookieSettings:
    """
    The attributes of the sticky cookie.  C{secure} is C{True}, C{False} or
    C{"auto"} (only on requests that came over TLS).
    """

    name: bytes = DEFAULT_COOKIE.encode("ascii")
    max_age: Optional[int] = None
    path: bytes = b"/"
    secure: Union[bool, str] = "auto"
    http_only: bool = True
    same_site: Optional[str] = "Lax"

    def header(self, token: bytes, secure_request: bool) -> bytes:
        """
        The C{Set-Cookie} value for C{token}.
        """
        parts = [self.name + b"=" + token, b"Path=" + self.path]
        if self.max_age is not None:
            parts.append(b"Max-Age=%d" % (self.max_age,))
        if self.secure is True or (self.secure == "auto" and secure_request):
            parts.append(b"Secure")
        if self.http_only:
            parts.append(b"HttpOnly")
        if self.same_site is not None:
            parts.append(b"SameSite=" + self.same_site.encode("ascii"))
        return b"; ".join(parts)


@implementer(IStrategy, IResponseObserver)
@attrs.define(eq=False)
class StickyCookie:
    random: Any
    secret: bytes = attrs.field(repr=False)  # never in logs
    cookie: CookieSettings = attrs.field(factory=CookieSettings)
    _round_robin: RoundRobin = attrs.field(init=False)
    _by_token: Dict[bytes, Any] = attrs.field(init=False, factory=dict)
    _tokens: Dict[str, bytes] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._round_robin = RoundRobin(self.random)

    def token(self, backend_id: str) -> bytes:
        token = self._tokens.get(backend_id)
        if token is None:
            token = self._tokens[backend_id] = cookie_token(self.secret, backend_id)
        return token

    def rebuild(self, members) -> None:
        members = list(members)
        self._round_robin.rebuild(members)
        # Tokens of members no longer eligible are forgotten (bounded
        # memory); response_started recomputes one if it needs it.
        self._tokens = {m.id: self.token(m.id) for m in members}
        self._by_token = {self._tokens[m.id]: m for m in members}

    def pick(self, context, avoid: Collection = ()):
        cookies = context.cookies
        if cookies:
            pinned = self._by_token.get(cookies.get(self.cookie.name))
            if pinned is not None and not (avoid and pinned in avoid):
                return pinned
        return self._round_robin.pick(context, avoid)

    def response_started(self, context, member, request) -> None:
        token = self.token(member.id)
        cookies = context.cookies
        if cookies and hmac.compare_digest(cookies.get(self.cookie.name, b""), token):
            return  # the client already holds a valid cookie for this member
        request.responseHeaders.addRawHeader(b"Set-Cookie", self.cookie.header(token, context.secure))


@implementer(IStrategy)
@attrs.define(eq=False)
class StickyIp:
    random: Any
    clock: Any
    trusted_proxies: Tuple = ()
    max_age: Optional[float] = None
    max_clients: int = DEFAULT_MAX_CLIENTS
    _round_robin: RoundRobin = attrs.field(init=False)
    _by_id: Dict[str, Any] = attrs.field(init=False, factory=dict)
    # address -> (backend id, last seen), least recently seen first
    _pins: "OrderedDict[str, Tuple[str, float]]" = attrs.field(init=False, factory=OrderedDict)

    def __attrs_post_init__(self) -> None:
        self._round_robin = RoundRobin(self.random)

    def rebuild(self, members) -> None:
        members = list(members)
        self._round_robin.rebuild(members)
        # Pins hold ids, not members: a pin to a backend that is gone is
        # simply not found, and found again if the backend comes back.
        self._by_id = {m.id: m for m in members}

    def pick(self, context, avoid: Collection = ()):
        address = client_address(context, self.trusted_proxies)
        if address is None:
            return self._round_robin.pick(context, avoid)
        now = self.clock.seconds()
        pins = self._pins
        if self.max_age is not None:
            while pins and now - next(iter(pins.values()))[1] > self.max_age:
                pins.popitem(last=False)
        pin = pins.get(address)
        if pin is not None:
            pinned = self._by_id.get(pin[0])
            if pinned is not None and not (avoid and pinned in avoid):
                pins[address] = (pin[0], now)
                pins.move_to_end(address)
                return pinned
        chosen = self._round_robin.pick(context, avoid)
        pins[address] = (chosen.id, now)
        pins.move_to_end(address)
        if len(pins) > self.max_clients:
            pins.popitem(last=False)
        return chosen

    def pinned(self, address: str) -> Optional[str]:
        """
        The backend id C{address} is pinned to, if any (for tests and the
        manager).
        """
        pin = self._pins.get(address)
        return pin[0] if pin is not None else None


def _check_name(value: Any) -> bytes:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError("must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)")
    return value.encode("ascii")


def _check_path(value: Any) -> bytes:
    if not isinstance(value, str) or not _PATH.match(value):
        raise ValueError("must be a path starting with / without spaces, ';' or control characters")
    return value.encode("ascii")


def _check_secure(value: Any) -> Union[bool, str]:
    if value is True or value is False or value == "auto":
        return value
    raise ValueError("must be true, false or \"auto\"")


def _check_same_site(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str) and value.capitalize() in ("Lax", "Strict", "None"):
        return value.capitalize()
    raise ValueError("must be \"Lax\", \"Strict\", \"None\" or null")


def _check_secret(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("must be a string")
    secret = value.encode("utf-8")
    if len(secret) < 16:
        raise ValueError("must be at least 16 characters (use a long random string)")
    return secret


def _check_max_age(value: Any) -> Optional[int]:
    if value is None:
        return None
    return check_int(0)(value)


_COOKIE_ONLY = ("cookie", "path", "secure", "http_only", "same_site", "secret")
_IP_ONLY = ("trusted_proxies", "max_clients")


def _build(options, random, clock):
    key = options.take("key", "cookie", check_choice("cookie", "ip"))
    for name in _COOKIE_ONLY if key == "ip" else _IP_ONLY:
        if name in options:
            raise StrategyOptionError(name, f"only applies to key {'cookie' if key == 'ip' else 'ip'}")
    max_age = options.take("max_age", None, _check_max_age)
    if key == "ip":
        trusted = options.take("trusted_proxies", (), check_networks)
        max_clients = options.take("max_clients", DEFAULT_MAX_CLIENTS, check_int(1))
        options.done()
        return StickyIp(random, clock, trusted, max_age=max_age, max_clients=max_clients)
    settings = CookieSettings(
        name=options.take("cookie", DEFAULT_COOKIE.encode("ascii"), _check_name),
        max_age=max_age,
        path=options.take("path", b"/", _check_path),
        secure=options.take("secure", "auto", _check_secure),
        http_only=options.take("http_only", True, check_bool),
        same_site=options.take("same_site", "Lax", _check_same_site),
    )
    if settings.same_site == "None" and settings.secure is False:
        raise StrategyOptionError(
            "same_site", '"None" needs secure true or "auto" (browsers refuse it otherwise)'
        )
    secret = options.take("secret", None, _check_secret)
    options.done()
    return StickyCookie(random, secret if secret is not None else process_secret(), settings)


factory = StrategyFactory(
    name="sticky_round_robin",
    description="Round robin, then the same backend per client (signed cookie or address); for stateful backends.",
    build=_build,
)
