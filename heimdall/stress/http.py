"""
The HTTP/1.1 of the load generator: the request, built once as bytes and
sent as is on every connection, and L{ResponseReader}, a small strict
response parser that keeps only what the report needs (status, one header,
framing, size).

Why not Twisted's HTTP client or Agent: the generator must be several times
faster than the proxy it measures.  A request here is one C{send} of
prebuilt bytes and one C{recv}, and the parser looks at the response head
with a few C{bytes.find} calls.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import attrs

MAX_HEAD = 64 * 1024
_NO_BODY = frozenset({204, 304})


class ProtocolError(Exception):
    """
    The response cannot be read as HTTP/1.1 (counted as a C{protocol} error).
    """


@attrs.frozen
class Target:
    """
    Where the load goes: C{http://host:port/path?query}.
    """

    host: str
    port: int
    target: str  # path and query, as sent on the request line

    @classmethod
    def from_url(cls, url: str) -> "Target":
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(host=parts.hostname, port=port, target=target)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


def build_request(
    target: Target,
    method: str = "GET",
    headers: Sequence[Tuple[str, str]] = (),
    body: Optional[bytes] = None,
    keep_alive: bool = True,
) -> bytes:
    """
    The whole request, head and body, as bytes.  Headers given override
    the defaults (Host, User-Agent, Accept) by name.
    """
    given = {name.lower() for name, _ in headers}
    lines: List[str] = [f"{method} {target.target} HTTP/1.1"]
    defaults = [("Host", target.host_header), ("User-Agent", "heimdall-stress"), ("Accept", "*/*")]
    for name, value in defaults:
        if name.lower() not in given:
            lines.append(f"{name}: {value}")
    for name, value in headers:
        if "\r" in name + value or "\n" in name + value or ":" in name:
            raise ValueError(f"invalid header {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    if body is not None and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}")
    elif body is None and method in ("POST", "PUT", "PATCH") and "content-length" not in given:
        lines.append("Content-Length: 0")
    if not keep_alive and "connection" not in given:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def parse_header_arg(text: str) -> Tuple[str, str]:
    """
    C{"Name: value"} from the command line.
    """
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"a header must look like 'Name: value', not {text!r}")
    return name.strip(), value.strip()


# Reader states.
_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DONE = range(5)


class ResponseReader:
    """
    Reads one response at a time from the bytes of a connection.

    L{feed} returns True when the response is complete; then C{status},
    C{backend} (the value of the tracked header, or None), C{close}
    (whether the server will close or wants the connection closed) and
    C{body_bytes} are set.  L{eof} tells whether the connection's end
    completes the response (a body delimited by the close).  Anything
    malformed raises L{ProtocolError}.
    """

    __slots__ = (
        "_chunk_data",
        "backend",
        "body_bytes",
        "buffer",
        "close",
        "head_request",
        "header_key",
        "remaining",
        "state",
        "status",
    )

    def __init__(self, header: Optional[str] = "X-Backend", head_request: bool = False) -> None:
        self.header_key = (b"\r\n" + header.lower().encode("latin-1") + b":") if header else None
        self.head_request = head_request
        self.reset()

    def reset(self) -> None:
        self.state = _HEAD
        self.buffer = b""
        self.status = 0
        self.backend: Optional[str] = None
        self.close = False
        self.remaining = 0
        self.body_bytes = 0
        self._chunk_data = False

    @property
    def started(self) -> bool:
        """
        Whether any byte of the current response arrived.
        """
        return self.state != _HEAD or bool(self.buffer)

    def feed(self, data: bytes) -> bool:
        state = self.state
        if state == _LENGTH:
            # The common case first: the rest of a body of known length.
            remaining = self.remaining - len(data)
            self.body_bytes += len(data)
            if remaining > 0:
                self.remaining = remaining
                return False
            if remaining < 0:
                raise ProtocolError("more data than the Content-Length")
            self.state = _DONE
            return True
        if state == _HEAD:
            return self._feed_head(data)
        if state == _CHUNKED:
            return self._feed_chunked(data)
        if state == _UNTIL_CLOSE:
            self.body_bytes += len(data)
            return False
        raise ProtocolError("data after the end of the response")

    def eof(self) -> bool:
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
            return True
        return False

    def _feed_head(self, data: bytes) -> bool:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError("response head too large")
            self.buffer = buffer
            return False
        head = buffer[:end]
        rest = buffer[end + 4 :]
        self.buffer = b""
        if head[:7] != b"HTTP/1." or head[8:9] != b" ":
            raise ProtocolError(f"bad status line {head[:40]!r}")
        try:
            status = int(head[9:12])
        except ValueError:
            raise ProtocolError(f"bad status line {head[:40]!r}") from None
        if 100 <= status < 200 and status != 101:
            # Interim response (100 Continue): the real one follows.
            return self._feed_head(rest) if rest else False
        self.status = status
        lower = head.lower()
        # Three finds in C, and a value parsed only when its header is
        # there: this runs once per response.
        connection = lower.find(b"\r\nconnection:")
        if head[7:8] == b"0":
            # HTTP/1.0 closes unless it says keep-alive.
            self.close = connection < 0 or b"keep-alive" not in _header_value(lower, b"\r\nconnection:")
        else:
            self.close = connection >= 0 and b"close" in _header_value(lower, b"\r\nconnection:")
        key = self.header_key
        if key is not None:
            start = lower.find(key)
            if start >= 0:
                start += len(key)
                stop = head.find(b"\r\n", start)
                self.backend = head[start : stop if stop >= 0 else len(head)].strip().decode("latin-1")
        if self.head_request or status in _NO_BODY:
            self.state = _DONE
            if rest:
                raise ProtocolError("body bytes after a response without a body")
            return True
        if lower.find(b"\r\ntransfer-encoding:") >= 0 and b"chunked" in _header_value(
            lower, b"\r\ntransfer-encoding:"
        ):
            self.state = _CHUNKED
            self.remaining = -1
            return self._feed_chunked(rest) if rest else False
        start = lower.find(b"\r\ncontent-length:")
        if start >= 0:
            stop = lower.find(b"\r\n", start + 17)
            raw = lower[start + 17 : stop if stop >= 0 else len(lower)]
            if lower.find(b"\r\ncontent-length:", start + 17) >= 0:
                raw = _header_value(lower, b"\r\ncontent-length:")  # repeated: must agree
                values = {v.strip() for v in raw.split(b",")}
                if len(values) != 1:
                    raise ProtocolError("conflicting Content-Length values")
                raw = values.pop()
            try:
                remaining = int(raw)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {raw!r}") from None
            if remaining < 0:
                raise ProtocolError(f"bad Content-Length {raw!r}")
            extra = len(rest)
            if extra >= remaining:
                if extra > remaining:
                    raise ProtocolError("more data than the Content-Length")
                self.body_bytes = extra
                self.state = _DONE
                return True
            self.remaining = remaining - extra
            self.body_bytes = extra
            self.state = _LENGTH
            return False
        self.state = _UNTIL_CLOSE
        self.close = True
        self.body_bytes += len(rest)
        return False

    def _feed_chunked(self, data: bytes) -> bool:
        buffer = self.buffer + data if self.buffer else data
        position = 0
        size = len(buffer)
        while True:
            if self.remaining > 0:
                # Inside a chunk's data.
                take = min(self.remaining, size - position)
                position += take
                self.body_bytes += take
                self.remaining -= take
                if self.remaining > 0:
                    self.buffer = b""
                    return False
                self.remaining = -2  # expect the CRLF after the data
            if self.remaining == -2:
                if size - position < 2:
                    self.buffer = buffer[position:]
                    return False
                if buffer[position : position + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                position += 2
                self.remaining = -1
            if self.remaining == -1:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    if size - position > 1024:
                        raise ProtocolError("chunk size line too long")
                    self.buffer = buffer[position:]
                    return False
                raw = buffer[position:line_end].split(b";", 1)[0].strip()
                try:
                    chunk = int(raw, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {raw[:20]!r}") from None
                position = line_end + 2
                if chunk == 0:
                    self.remaining = -3  # trailers
                else:
                    self.remaining = chunk
                    continue
            if self.remaining == -3:
                # Trailer section: lines until an empty one.
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    self.buffer = buffer[position:]
                    return False
                if line_end == position:
                    if line_end + 2 != size:
                        raise ProtocolError("data after the end of a chunked response")
                    self.state = _DONE
                    self.buffer = b""
                    return True
                position = line_end + 2


def _header_value(lower_head: bytes, key: bytes) -> Optional[bytes]:
    """
    The (lower-cased) value of the header C{key} (C{b"\\r\\nname:"}),
    the values of repeated ones joined with commas; None if absent.
    """
    start = lower_head.find(key)
    if start < 0:
        return None
    values = []
    while start >= 0:
        start += len(key)
        stop = lower_head.find(b"\r\n", start)
        values.append(lower_head[start : stop if stop >= 0 else len(lower_head)].strip())
        start = lower_head.find(key, start)
    return b",".join(values)
