"""
Upgrade tunnels (WebSocket and other protocols) over HTTP/1.1.

A client request with C{Connection: upgrade} and an C{Upgrade} header (not
C{h2c}: heimdall does not switch its upstream connections to HTTP/2) and no
body goes to the backend with C{Connection: Upgrade} and that C{Upgrade},
plus its end-to-end headers (C{Sec-WebSocket-*} among them), on a fresh
or idle pooled connection.  If the backend answers 101, heimdall forwards
the 101 and from then on a L{Tunnel} copies bytes both ways:

  - backpressure both ways: each side's transport has the other side's
    reader registered as its producer, so a slow reader pauses reading
    from the other side, never buffers without bound;
  - when either side closes, the other is closed after its pending bytes;
  - C{tunnel_idle} seconds without a byte either way close both;
  - the tunnel's upstream connection is never returned to the pool;
  - the access log line is written when the tunnel closes (status 101,
    duration, bytes each way), and L{TunnelStats} counts open tunnels and
    bytes for the metrics.

Any other answer is an ordinary response on an ordinary connection.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import attrs
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from heimdall.proxy.headers import connection_tokens

__all__ = ["Tunnel", "TunnelStats", "switching_head", "upgrade_token"]

_H2C = b"h2c"


def upgrade_token(request: Any) -> Optional[bytes]:
    """
    The C{Upgrade} value to forward for C{request}, or L{None} when it is
    not an upgrade request heimdall tunnels: HTTP/1.1, C{Connection:
    upgrade}, an C{Upgrade} header, no body; C{h2c} is dropped from it.
    """
    if request.clientproto != b"HTTP/1.1":
        return None
    headers = request.requestHeaders
    upgrade = headers.getRawHeaders(b"upgrade")
    if not upgrade:
        return None
    if b"upgrade" not in connection_tokens(headers.getRawHeaders(b"connection", ())):
        return None
    if headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding"):
        return None
    protocols = [p.strip() for value in upgrade for p in value.split(b",") if p.strip()]
    protocols = [p for p in protocols if p.lower() != _H2C]
    return b", ".join(protocols) if protocols else None


def switching_head(reason: bytes, headers: Any, upgrade: bytes) -> bytes:
    """
    The 101 head for the client: the backend's end-to-end headers (a
    L{Headers}), then C{Connection: Upgrade} and the backend's C{Upgrade}.
    """
    lines = [b"HTTP/1.1 101 " + (reason or b"Switching Protocols")]
    for name, values in headers.getAllRawHeaders():
        for value in values:
            lines.append(name + b": " + value)
    lines.append(b"Connection: Upgrade")
    lines.append(b"Upgrade: " + upgrade)
    return b"\r\n".join(lines) + b"\r\n\r\n"


@attrs.define(eq=False)
class TunnelStats:
    """
    Tunnels open now, opened in all, and the bytes relayed each way
    (C{upstream}: client to backend).  Read by the metrics at scrape time.
    """

    open: int = 0
    opened: int = 0
    bytes_upstream: int = 0
    bytes_downstream: int = 0


@implementer(IPushProducer)
class _Reader:
    """
    Pauses and resumes reading from one side's transport; registered as
    the producer of the other side's transport.  Closing is the tunnel's
    business, so C{stopProducing} does nothing.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class Tunnel:
    """
    Bytes both ways between a client connection and an upstream connection
    that both left HTTP behind.

    @param client: the client's channel (a L{HeimdallChannel}; see its
        C{hand_over}).
    @param upstream: the L{UpstreamConnection} that got the 101.
    @param on_closed: called once with this tunnel when both sides are gone.
    """

    def __init__(
        self,
        client: Any,
        upstream: Any,
        stats: TunnelStats,
        clock: Any,
        idle_timeout: float,
        on_closed: Callable[["Tunnel"], None],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.stats = stats
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.on_closed = on_closed
        self.started_at = clock.seconds()
        self.bytes_upstream = 0
        self.bytes_downstream = 0
        self.closing = False
        self.timed_out = False
        self._sides_open = 2
        self._last = self.started_at
        self._idle_call = None

    def start(self, head: bytes, client_buffered: bytes, upstream_rest: bytes) -> None:
        """
        Write the 101 C{head} to the client and start copying; bytes either
        side sent early are delivered first.
        """
        client_transport = self.client.transport
        upstream_transport = self.upstream.transport
        self.stats.open += 1
        self.stats.opened += 1
        buffered = self.client.hand_over(self)
        client_transport.write(head)
        client_transport.registerProducer(_Reader(upstream_transport), True)
        upstream_transport.registerProducer(_Reader(client_transport), True)
        self.upstream.attach_tunnel(self)
        client_transport.resumeProducing()  # the channel may have paused it
        if self.idle_timeout:
            self._idle_call = self.clock.callLater(self.idle_timeout, self._check_idle)
        if client_buffered or buffered:
            self.client_data(client_buffered + buffered)
        if upstream_rest:
            self.upstream_data(upstream_rest)

    # -- bytes -------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self.closing:
            return
        self._last = self.clock.seconds()
        self.bytes_upstream += len(data)
        self.stats.bytes_upstream += len(data)
        self.upstream.transport.write(data)

    def upstream_data(self, data: bytes) -> None:
        if self.closing:
            return
        self._last = self.clock.seconds()
        self.bytes_downstream += len(data)
        self.stats.bytes_downstream += len(data)
        self.client.transport.write(data)

    # -- closing -------------------------------------------------------------------

    def client_lost(self, reason: Any = None) -> None:
        self._side_lost(self.upstream.transport)

    def upstream_lost(self, reason: Any = None) -> None:
        self._side_lost(self.client.transport)

    def _side_lost(self, other_transport: Any) -> None:
        self._sides_open -= 1
        if not self.closing:
            self.closing = True
            # The other side gets what it was sent, then a close.
            other_transport.unregisterProducer()
            other_transport.loseConnection()
        if self._sides_open == 0:
            self._finish()

    def _check_idle(self) -> None:
        self._idle_call = None
        if self._sides_open == 0:
            return
        left = self._last + self.idle_timeout - self.clock.seconds()
        if left > 0 and not self.closing:
            self._idle_call = self.clock.callLater(left, self._check_idle)
            return
        # Idle, or closing and the other side does not read what is left.
        self.timed_out = not self.closing
        self.closing = True
        self.client.transport.abortConnection()
        self.upstream.transport.abortConnection()

    def _finish(self) -> None:
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()
        self.stats.open -= 1
        self.on_closed(self)

    @property
    def duration(self) -> float:
        return self.clock.seconds() - self.started_at
