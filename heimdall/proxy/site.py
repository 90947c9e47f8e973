"""
The client-facing HTTP server: a C{twisted.web.server.Site} whose channel
and request enforce heimdall's limits and stream request bodies.

Stock C{twisted.web} reads a whole request body before it calls
C{render()}, and answers 400 (or just closes) for oversized heads.  Here:

  - a request line longer than C{max_uri_bytes} gets 414, a head longer
    than C{max_header_bytes} gets 431, and a client that has not sent a
    complete head within C{header_timeout} gets 408; all three close;
  - a request with a body is dispatched to its resource as soon as its
    head is complete, and the body arrives through a
    L{heimdall.proxy.body.RequestBody} as the client sends it (so a proxy
    can stream it upstream);
  - a body over C{max_body_bytes} gets 413, from Content-Length before
    any of it is read, or while streaming;
  - framing is strict where RFC 9112 says so (L{framing_problem}): an
    HTTP/1.1 request without Host, any request with two Host lines or a
    Host that is not a valid host (userinfo, spaces, ...), and a chunk size
    of more than 16 hex digits get 400 before anything reaches a backend;
  - a line may end in a bare LF (RFC 9112 2.2): it is read as a CRLF
    (the request goes upstream with clean CRLFs, as heimdall writes every
    head itself), rather than waiting for a CR that never comes.

Resources that are not heimdall's still work under this site: when a
request's body has been fully received, C{request.content} holds it as
usual... except for early-dispatched requests, whose body is only in
C{request.body}.  That is why only L{heimdall.proxy.resource.BalancerResource}
should be served by a L{HeimdallSite}; mount other resources on a plain
C{Site}, where the balancer works too (buffering bodies).
"""

from __future__ import annotations

from io import BytesIO
from typing import Optional

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError, unquote

from heimdall.config.model import LimitsConfig, TimeoutsConfig
from heimdall.proxy.body import RequestBody
from heimdall.proxy.connections import ClientConnections
from heimdall.proxy.timeouts import ExchangeTimer

__all__ = ["HeimdallChannel", "HeimdallRequest", "HeimdallSite", "RequestBody", "framing_problem"]

# The defaults of every limit and timeout are the config's.
_LIMITS = LimitsConfig()
_TIMEOUTS = TimeoutsConfig()

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}

# RFC 3986 host and port characters: unreserved, pct-encoded, sub-delims,
# ":" and the brackets of an IP literal.  Not "@" (userinfo), "/", spaces.
_HOST_CHARS = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    b"-._~%!$&'()*+,;=:[]"
)
#: A chunk size is at most 16 hex digits (64 bits): more overflows.
MAX_CHUNK_SIZE_DIGITS = 16


def framing_problem(hosts, version: bytes) -> Optional[bytes]:
    """
    Why a request with these Host values (C{None}: no Host line) and this
    HTTP version must get 400 (RFC 9112 3.2), or L{None}.
    """
    if hosts is None:
        return b"Host header required" if version == b"HTTP/1.1" else None
    if len(hosts) > 1:
        return b"more than one Host header"
    if hosts[0].translate(None, _HOST_CHARS):
        return b"invalid Host header"
    return None


class _StrictChunkedDecoder(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder, refusing a chunk size of more than
    L{MAX_CHUNK_SIZE_DIGITS} hex digits (Twisted takes up to 1 KiB of them)
    and chunk lines that end in a bare LF (Twisted waits for more).
    """

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        size = bytes(self._buffer[: MAX_CHUNK_SIZE_DIGITS + 1])
        for end in (b";", b"\r", b"\n", b" ", b"\t"):
            cut = size.find(end)
            if cut >= 0:
                size = size[:cut]
        if len(size) > MAX_CHUNK_SIZE_DIGITS:
            raise _MalformedChunkedDataError("chunk size of more than 16 hex digits")
        self._refuse_bare_lf()
        return super()._dataReceived_CHUNK_LENGTH()

    def _dataReceived_TRAILER(self) -> bool:
        self._refuse_bare_lf()
        return super()._dataReceived_TRAILER()

    def _refuse_bare_lf(self) -> None:
        # Chunk lines end in CRLF (RFC 9112 7.1; the bare-LF leniency of 2.2
        # is for the head): Twisted would wait for a CR that never comes.
        lf = self._buffer.find(b"\n")
        if lf >= 0 and self._buffer[lf - 1 : lf] != b"\r":
            raise _MalformedChunkedDataError("chunk line ends in a bare LF")


def _plain_response(code: int, message: bytes) -> bytes:
    body = message + b"\n"
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (code, _REASONS[code]),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n",
            body,
        ]
    )


class HeimdallRequest(server.Request):
    """
    A request that is dispatched when its head is complete if it has a body
    (see L{HeimdallChannel.allHeadersReceived}), exposes that body as
    C{self.body} (a L{RequestBody}, or L{None} without a body), and enforces
    the body size limit.
    """

    body: Optional[RequestBody] = None
    #: The body size limit (0: none), the channel's, set by L{gotLength}
    #: (which comes before any body byte) so that a chunk only reads it.
    body_limit = 0
    _dispatched = False
    _rejected = False

    def gotLength(self, length: Optional[int]) -> None:
        # No BytesIO/tempfile for the body: it streams through self.body.
        self.content = BytesIO()
        limit = self.body_limit = self.channel.max_body_bytes
        if length is not None and limit and length > limit:
            self._rejected = True
            self.channel.reject(413, b"request body too large")
            return
        if length != 0:
            self.body = RequestBody(length, self.channel.transport)

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected or self.body is None:
            return
        limit = self.body_limit
        if limit and self.body.received + len(data) > limit:
            self._rejected = True
            self._body_too_large()
            return
        self.body.feed(data)

    def _body_too_large(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.body_too_large()
        elif not self.startedWriting and not self.finished:
            self.channel.reject(413, b"request body too large")
        else:
            self.channel.transport.abortConnection()

    def dispatch_early(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Process this request now, while its body is still arriving.
        """
        self._dispatched = True
        server.Request.requestReceived(self, command, path, version)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._dispatched:
            # The channel read the last body byte.
            if self.body is not None and not self._rejected:
                self.body.finish()
            return
        server.Request.requestReceived(self, command, path, version)

    #: The L{IClientExchange} serving this request, while it does.
    exchange = None

    def exchange_timer(self) -> ExchangeTimer:
        """
        The timer of the exchange serving this request: its connection's
        (one for all the requests of an HTTP/1.1 connection).
        """
        return self.channel.exchange_timer()

    def process(self) -> None:
        """
        C{server.Request.process} without its per-request C{Server} and
        C{Date} defaults: the proxy forwards the backend's (and adds Date
        when a backend sends none), so formatting them here was wasted.
        """
        self.site = self.channel.site
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            resource = self.site.getResourceFor(self)
            self.render(resource)
        except BaseException:
            self.processingFailed(Failure())

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        exchange = self.exchange
        if exchange is not None and not self.finished:
            exchange.client_lost(reason)

    def finish(self) -> None:
        if self.body is not None and not self.body.complete:
            # Answered before the whole body arrived: the rest of the body
            # cannot be told from the next request, so close afterwards.
            self.channel.persistent = False
            self.channel.abandon_body()
        super().finish()


class HeimdallChannel(http.HTTPChannel):
    """
    An C{HTTPChannel} with heimdall's limits and early dispatch.  Its
    settings come from the L{HeimdallSite} (C{self.site}).
    """

    # Lines end in LF, an optional CR before it is dropped (lineReceived):
    # RFC 9112 2.2 lets a server take a bare LF as a line end.
    delimiter = b"\n"

    max_uri_bytes = _LIMITS.max_uri_bytes
    max_header_bytes = _LIMITS.max_header_bytes
    max_body_bytes = _LIMITS.max_body_bytes
    header_timeout = _TIMEOUTS.client_header

    _in_head = False
    _head_bytes = 0
    _rejected = False
    _body_abandoned = False

    # Timers.  The header deadline and the idle timeout are each one lazy
    # DelayedCall per connection: arming only records a time, and the call
    # re-arms itself for what is left when it fires early.  A callLater and
    # a cancel per request cost a measurable share of the proxy's CPU.
    _head_started: Optional[float] = None
    _header_call = None
    _idle_last = 0.0
    _idle_call = None
    _exchange_timer: Optional[ExchangeTimer] = None

    def connectionMade(self) -> None:
        site = self.site
        self._seconds = site.reactor.seconds
        self.max_uri_bytes = site.max_uri_bytes
        self.max_header_bytes = site.max_header_bytes
        self.max_body_bytes = site.max_body_bytes
        self.header_timeout = site.header_timeout
        # Line-length and total-size limits of the stock channel answer 400
        # or just close; keep them above ours so that ours answer first.
        self.MAX_LENGTH = self.max_header_bytes
        self.totalHeadersSize = self.max_header_bytes + 4096
        super().connectionMade()
        self._arm_header_timer()
        site.connections.add(self)

    def checkPersistence(self, request, version) -> bool:
        # No keep-alive once the site drains (a graceful shutdown).
        return super().checkPersistence(request, version) and not self.site.connections.draining

    def uncount(self) -> None:
        """
        This connection is no longer open (once; also for HTTP/2, whose
        connection takes over from this channel: L{proxy.h2}).
        """
        self.site.connections.discard(self)

    #: The tunnel this connection was handed over to (see L{hand_over}).
    tunnel = None

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.client_data(data)
            return
        if self._rejected:
            return
        if self._head_started is None and not self._in_body():
            self._arm_header_timer()
        super().dataReceived(data)

    def _in_body(self) -> bool:
        return not self.line_mode or self._handlingRequest

    def lineReceived(self, line: bytes) -> None:
        if self._rejected:
            return
        if line[-1:] == b"\r":
            line = line[:-1]
        if b"\r" in line:
            # A bare CR (RFC 9112 2.2): invalid, whatever Twisted's version
            # would make of it.
            self._respondToBadRequestAndDisconnect()
            return
        if not self._in_head:
            if not line:
                return super().lineReceived(line)  # tolerated empty line
            self._in_head = True
            self._head_bytes = 0
            parts = line.split(b" ")
            if len(parts) == 3 and len(parts[1]) > self.max_uri_bytes:
                self.reject(414, b"request URI too long")
                return
        self._head_bytes += len(line) + 2
        if self._head_bytes > self.max_header_bytes:
            self.reject(431, b"request header fields too large")
            return
        if not line:
            self._in_head = False
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_head:
            self.reject(431, b"request header fields too large")
        else:
            self.reject(414, b"request URI too long")

    def allHeadersReceived(self) -> None:
        self._cancel_header_timer()
        problem = framing_problem(self.requests[-1].requestHeaders.getRawHeaders(b"host"), self._version)
        if problem is not None:
            self.reject(400, problem)
            return
        super().allHeadersReceived()
        if self._rejected or self.transport.disconnecting:
            return
        request = self.requests[-1]
        if self.length != 0 and isinstance(request, HeimdallRequest):
            request.dispatch_early(self._command, self._path, self._version)

    def _send100Continue(self) -> None:
        if not self._rejected and not self.transport.disconnecting:
            super()._send100Continue()

    def rawDataReceived(self, data: bytes) -> None:
        if self._body_abandoned or self._rejected:
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if not self.requests or self._body_abandoned or self._rejected:
            return
        super().allContentReceived()

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if ok and type(decoder) is _ChunkedTransferDecoder:
            self._transferDecoder = _StrictChunkedDecoder(decoder.dataCallback, decoder.finishCallback)
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        # A malformed header line or chunk: the request being proxied (its
        # head may be on its way upstream) must stop before more of it goes.
        request = self.requests[-1] if self.requests else None
        exchange = getattr(request, "exchange", None)
        if exchange is not None:
            exchange.client_lost(Failure(ConnectionDone("malformed request")), 400)
            if request.startedWriting:
                # A response is under way: a 400 cannot follow it.
                self._rejected = True
                self.transport.abortConnection()
                return
        self._rejected = True
        self._cancel_header_timer()
        super()._respondToBadRequestAndDisconnect()

    def abandon_body(self) -> None:
        """
        The current request was answered before its body ended: ignore the
        rest of the body (the connection closes after the response).
        """
        self._body_abandoned = True

    def reject(self, code: int, message: bytes) -> None:
        """
        Answer C{code} without involving any resource, and close.
        """
        if self._rejected:
            return
        self._rejected = True
        self._cancel_header_timer()
        self.transport.write(_plain_response(code, message))
        self.loseConnection()

    def _arm_header_timer(self) -> None:
        if not self.header_timeout:
            return
        self._head_started = self._seconds()
        if self._header_call is None:
            self._header_call = self.callLater(self.header_timeout, self._check_header_deadline)

    def _cancel_header_timer(self) -> None:
        self._head_started = None  # the lazy call sees this and stops

    def _check_header_deadline(self) -> None:
        self._header_call = None
        if self._head_started is None or self._rejected:
            return
        left = self._head_started + self.header_timeout - self._seconds()
        if left > 0:
            self._header_call = self.callLater(left, self._check_header_deadline)
        else:
            self.site.header_timeouts += 1
            self.reject(408, b"request head not received in time")

    # TimeoutMixin's idle timeout, made lazy the same way.

    def setTimeout(self, period):
        previous = self.timeOut
        self.timeOut = period
        if period is not None:
            self._idle_last = self._seconds()
            if self._idle_call is None:
                self._idle_call = self.callLater(period, self._check_idle)
        return previous

    def resetTimeout(self) -> None:
        self._idle_last = self._seconds()

    def _check_idle(self) -> None:
        self._idle_call = None
        if self.timeOut is None or self.transport is None or self.transport.disconnecting:
            return
        left = self._idle_last + self.timeOut - self._seconds()
        if left > 0:
            self._idle_call = self.callLater(left, self._check_idle)
        else:
            self.timeoutConnection()

    def exchange_timer(self) -> ExchangeTimer:
        """
        The L{ExchangeTimer} of this connection's requests, one at a time
        (HTTP/1.1 serves them in order): its call outlives each request.
        """
        timer = self._exchange_timer
        if timer is None:
            site = self.site
            timer = self._exchange_timer = ExchangeTimer(
                site.reactor, site.client_body_timeout, site.client_write_timeout, reusable=True
            )
        return timer

    def stop_timers(self) -> None:
        """
        Cancel the header, idle and exchange timers (the connection closed,
        or now belongs to another protocol: HTTP/2, a tunnel).
        """
        if self._exchange_timer is not None:
            self._exchange_timer.cancel()
        self._head_started = None
        for name in ("_header_call", "_idle_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def hand_over(self, tunnel) -> bytes:
        """
        The connection leaves HTTP (an upgrade got 101): from now on its
        bytes go to C{tunnel.client_data} and its end to
        C{tunnel.client_lost}; the channel stops being the transport's
        producer, and its timers stop.  Returns the bytes the client sent
        after the request, which the channel had buffered.
        """
        self.stop_timers()
        self.timeOut = None
        self.tunnel = tunnel
        self._networkProducer.unregisterProducer()
        buffered, self._dataBuffer = b"".join(self._dataBuffer), []
        return buffered

    def connectionLost(self, reason) -> None:
        self.uncount()
        self.stop_timers()
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.client_lost(reason)
        super().connectionLost(reason)


class HeimdallSite(server.Site):
    """
    The proxy's site.  Twisted's per-request access log is off (heimdall
    writes its own); form bodies are never parsed.

    The limits and timeouts come from C{limits} and C{timeouts} (the
    config's values; their defaults are the config's defaults); a keyword
    such as C{max_body_bytes=1000} overrides one of them.
    """

    protocol = HeimdallChannel
    requestFactory = HeimdallRequest
    noisy = False
    @property
    def open_connections(self) -> int:
        """
        Client connections open now (HTTP/1.x and HTTP/2, tunnels included).
        """
        return len(self.connections)
    #: Clients that got 408 for a head not received within header_timeout.
    header_timeouts = 0

    def __init__(
        self,
        resource,
        *,
        limits: LimitsConfig = _LIMITS,
        timeouts: TimeoutsConfig = _TIMEOUTS,
        max_uri_bytes: Optional[int] = None,
        max_header_bytes: Optional[int] = None,
        max_body_bytes: Optional[int] = None,
        header_timeout: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        client_body_timeout: Optional[float] = None,
        client_write_timeout: Optional[float] = None,
        reactor=None,
    ) -> None:
        super().__init__(
            resource,
            timeout=timeouts.client_idle if idle_timeout is None else idle_timeout,
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        self.max_uri_bytes = limits.max_uri_bytes if max_uri_bytes is None else max_uri_bytes
        self.max_header_bytes = limits.max_header_bytes if max_header_bytes is None else max_header_bytes
        self.max_body_bytes = limits.max_body_bytes if max_body_bytes is None else max_body_bytes
        self.header_timeout = timeouts.client_header if header_timeout is None else header_timeout
        #: The open client connections (a graceful shutdown drains them).
        self.connections = ClientConnections()
        # The exchanges' client-side waits (heimdall.proxy.timeouts).
        self.client_body_timeout = timeouts.client_body if client_body_timeout is None else client_body_timeout
        self.client_write_timeout = timeouts.client_write if client_write_timeout is None else client_write_timeout

    def configure(self, limits: LimitsConfig, timeouts: TimeoutsConfig) -> None:
        """
        New limits and client timeouts (a reload): connections accepted
        from now on take them; open ones keep what they started with.
        """
        self.max_uri_bytes, self.max_header_bytes = limits.max_uri_bytes, limits.max_header_bytes
        self.max_body_bytes, self.header_timeout, self.timeout = (
            limits.max_body_bytes, timeouts.client_header, timeouts.client_idle
        )
        self.client_body_timeout, self.client_write_timeout = timeouts.client_body, timeouts.client_write

    def log(self, request) -> None:
        pass
