"""
Header rewriting between client and backend: hop-by-hop removal (RFC 9110
7.6.1) and the forwarding headers (X-Forwarded-*, Via).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, List, Optional, Sequence, Tuple

from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers

HeaderList = List[Tuple[bytes, bytes]]

# Lower-cased.  "Proxy-Connection" is not standard but clients still send
# it; "Keep-Alive" and "Trailer(s)" only mean something for one hop.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Set by heimdall itself on the way up; a client's copies are replaced (or
# extended, from a trusted proxy).
_FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via", b"forwarded"}
)

# Framing headers heimdall writes itself from the body it actually sends;
# "Expect: 100-continue" was already answered by heimdall's own HTTP server.
_REQUEST_FRAMING = frozenset({b"content-length", b"expect", b"host"})


def connection_tokens(values: Iterable[bytes]) -> frozenset:
    """
    The header names listed in C{Connection:} values, lower-cased.
    """
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def end_to_end(headers: Sequence[Tuple[bytes, bytes]]) -> HeaderList:
    """
    C{headers} (name, value) pairs without the hop-by-hop ones, including
    every header named in C{Connection:}.  Order and repeats are kept.
    """
    named = connection_tokens(v for n, v in headers if n.lower() == b"connection")
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    return [(n, v) for n, v in headers if n.lower() not in drop]


def _parse_ip(text: bytes) -> Optional[ipaddress._BaseAddress]:
    try:
        return ipaddress.ip_address(text.strip().decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def is_trusted(address: Optional[str], trusted: Sequence) -> bool:
    """
    Whether C{address} (a peer IP string) is in one of the C{trusted}
    networks.
    """
    if not trusted or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def upstream_request_headers(
    raw_headers: Iterable[Tuple[bytes, Sequence[bytes]]],
    client_address: Optional[str],
    secure: bool,
    client_version: bytes,
    trusted_proxies: Sequence = (),
) -> HeaderList:
    """
    The headers to send upstream for a client request whose headers are
    C{raw_headers} (as from C{Headers.getAllRawHeaders()}).

      - Hop-by-hop headers and those named in C{Connection:} are dropped;
        so are Content-Length and Expect (the upstream client writes its
        own framing) and Host (the caller sends the client's Host first).
      - X-Forwarded-For gets the client address appended; X-Forwarded-Proto
        and X-Forwarded-Host are set.  A client's own X-Forwarded-* and Via
        are kept (and extended) only when the client is a trusted proxy,
        as Caddy does; otherwise they are replaced, so that nobody can
        spoof an address to a backend that trusts heimdall.
      - Via gets C{1.1 heimdall} (the client's HTTP version) appended.
    """
    pairs: HeaderList = []
    for name, values in raw_headers:
        for value in values:
            pairs.append((name, value))
    pairs = end_to_end(pairs)

    trusted = is_trusted(client_address, trusted_proxies)
    kept: HeaderList = []
    xff: List[bytes] = []
    proto: Optional[bytes] = None
    fwd_host: Optional[bytes] = None
    via: List[bytes] = []
    host: Optional[bytes] = None
    for name, value in pairs:
        lower = name.lower()
        if lower == b"host":
            if host is None:
                host = value
            continue
        if lower in _REQUEST_FRAMING:
            continue
        if lower in _FORWARDING:
            if trusted:
                if lower == b"x-forwarded-for":
                    xff.append(value)
                elif lower == b"x-forwarded-proto" and proto is None:
                    proto = value
                elif lower == b"x-forwarded-host" and fwd_host is None:
                    fwd_host = value
                elif lower == b"via":
                    via.append(value)
                elif lower == b"forwarded":
                    kept.append((name, value))
            continue
        kept.append((name, value))

    if client_address:
        xff.append(client_address.encode("ascii", "replace"))
    if xff:
        kept.append((b"X-Forwarded-For", b", ".join(xff)))
    kept.append((b"X-Forwarded-Proto", proto or (b"https" if secure else b"http")))
    if fwd_host or host:
        kept.append((b"X-Forwarded-Host", fwd_host or host))
    version = client_version.split(b"/", 1)[-1] if client_version else b"1.1"
    via.append(version + b" heimdall")
    kept.append((b"Via", b", ".join(via)))
    return kept


def client_from_forwarded_for(
    peer: Optional[str], xff_values: Sequence[bytes], trusted: Sequence
) -> Optional[str]:
    """
    The original client address: the rightmost X-Forwarded-For address that
    is not a trusted proxy, walking back from C{peer}.  Without trusted
    proxies, C{peer} itself.
    """
    if not is_trusted(peer, trusted):
        return peer
    addresses: List[bytes] = []
    for value in xff_values:
        addresses.extend(part for part in value.split(b",") if part.strip())
    current = peer
    for raw in reversed(addresses):
        ip = _parse_ip(raw)
        if ip is None:
            return current
        current = str(ip)
        if not any(ip in network for network in trusted):
            return current
    return current


try:
    from twisted.web.http_headers import _nameEncoder

    _canonical_name = _nameEncoder.encode
except ImportError:  # pragma: no cover - a future Twisted without it
    def _canonical_name(name: bytes) -> bytes:
        return b"-".join(part.capitalize() for part in name.split(b"-"))


def response_headers(headers) -> Headers:
    """
    The client-side L{Headers} for an upstream response head: hop-by-hop
    headers (and those named in Connection) removed, order and repeats
    kept, and a Date added if the backend sent none (RFC 9110 6.6.1).

    Values are stored without Twisted's per-value sanitising: the upstream
    parser already refused any head with a bare CR or LF, and this runs
    for every response.
    """
    named = None
    result: dict = {}
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == b"connection":
                named = connection_tokens([value]) | (named or frozenset())
            continue
        canonical = _canonical_name(name)
        values = result.get(canonical)
        if values is None:
            result[canonical] = [value]
        else:
            values.append(value)
    if named:
        for canonical in [c for c in result if c.lower() in named]:
            del result[canonical]
    if b"Date" not in result:
        result[b"Date"] = [datetimeToString()]
    out = Headers()
    out._rawHeaders = result
    return out
