"""
HTTP/2 to clients: heimdall's channel behind Twisted's protocol switch, and
heimdall's request logic on an HTTP/2 stream.

Twisted serves HTTP/2 through C{twisted.web.http._GenericHTTPChannelProtocol},
a proxy that starts on an C{HTTPChannel} and swaps in an C{H2Connection}
when ALPN negotiated C{h2}.  Stock C{Site} builds it around a plain
C{HTTPChannel}; L{HeimdallChannelSwitch} builds it around a
L{HeimdallChannel} (so HTTP/1.1 keeps heimdall's limits and early
dispatch) and, on C{h2}, swaps in a L{HeimdallH2Connection}, which runs
on the site's reactor and builds L{HeimdallStreamRequest}s.  With
C{cleartext=True} it also switches to HTTP/2 on a plain port when a
client opens with the HTTP/2 preface (h2c with prior knowledge).
C{_GenericHTTPChannelProtocol} and C{H2Connection._requestReceived} are
private Twisted API: tests/proxy/test_h2.py pins what is used here.

On a stream, as on HTTP/1.1: a request with a body is dispatched when its
headers are complete and the body streams through a L{RequestBody} that
pauses the stream (its flow-control window stays shut) when the backend
does not keep up; a response streams with the upstream connection as the
stream's producer, so a slow stream pauses its own backend read only.
Over-long targets and heads get 414 and 431, an over-large body 413, as
responses on that stream; the connection and its other streams go on.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Optional

from twisted.web import http

from heimdall.proxy.body import RequestBody
from heimdall.proxy.site import HeimdallChannel, HeimdallRequest
from heimdall.proxy.timeouts import ExchangeTimer

__all__ = [
    "H2_ENABLED",
    "HeimdallChannelSwitch",
    "HeimdallStreamRequest",
    "network_transport",
    "switching_channel_factory",
    "tls_version",
]

H2_ENABLED = bool(getattr(http, "H2_ENABLED", False))
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def network_transport(request: Any) -> Any:
    """
    The transport of the connection C{request} came over (an HTTP/2
    stream has none of its own: its connection's).
    """
    channel = request.channel
    transport = channel.transport
    if transport is None:
        connection = getattr(channel, "_conn", None)
        transport = getattr(connection, "transport", None)
    return transport


_UNKNOWN = object()


def tls_version(request: Any) -> Optional[str]:
    """
    The TLS version (C{"TLSv1.3"}) the request came over, or L{None}.

    It is the connection's, so it is read once per connection and kept on
    the connection's protocol (the channel, or an HTTP/2 stream's
    connection); the later requests on it only look it up.
    """
    channel = request.channel
    owner = channel if channel.transport is not None else getattr(channel, "_conn", None)
    version = getattr(owner, "heimdall_tls_version", _UNKNOWN)
    if version is _UNKNOWN:
        version = _read_tls_version(network_transport(request))
        if owner is not None and version is not None:
            owner.heimdall_tls_version = version
    return version


def _read_tls_version(transport: Any) -> Optional[str]:
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    version = getattr(get_handle(), "get_protocol_version_name", None)
    if version is None:
        return None
    try:
        return version()
    except Exception:  # the TLS connection is gone
        return None


_STREAM_REASONS = {413: b"request body too large", 414: b"request URI too long", 431: b"request header fields too large"}


class HeimdallStreamRequest(HeimdallRequest):
    """
    A L{HeimdallRequest} whose channel is an HTTP/2 stream (C{H2Stream}):
    the site's limits, early dispatch once the stream is registered with
    its connection (L{stream_opened}), and answers on the stream instead of
    closing the connection.
    """

    _reject_code = 0
    _head_bytes = 0

    def gotLength(self, length: Optional[int]) -> None:
        self.content = BytesIO()
        limit = self.body_limit = self.channel.site.max_body_bytes  # a stream's limit is the site's
        if length is not None and limit and length > limit:
            self._reject_code = 413
            self._rejected = True
            return
        if length != 0:
            # The stream itself pauses: its window stays shut until resumed.
            self.body = RequestBody(length, self.channel)

    def exchange_timer(self) -> ExchangeTimer:
        """
        A timer of the stream's own (streams of a connection run at once),
        cancelled when the exchange ends.
        """
        site = self.channel.site
        return ExchangeTimer(site.reactor, site.client_body_timeout, site.client_write_timeout)

    def stream_opened(self) -> None:
        """
        The stream is registered with its connection: answer a request over
        the limits, or dispatch one with a body now (before its body).
        """
        stream = self.channel
        site = stream.site
        if not self._reject_code:
            path = stream.path or b""
            head = 0
            for name, values in self.requestHeaders.getAllRawHeaders():
                for value in values:
                    head += len(name) + len(value) + 4
            if len(path) > site.max_uri_bytes:
                self._reject_code = 414
            elif head + len(path) > site.max_header_bytes:
                self._reject_code = 431
        if self._reject_code:
            self._rejected = True
            self._answer_and_reset(self._reject_code)
            return
        if self.body is not None:
            self.dispatch_early(stream.command, stream.path, b"HTTP/2")

    def _answer_and_reset(self, code: int) -> None:
        """
        Answer C{code} on this stream without any resource (the rest of the
        request body, if any, is refused with a stream reset).
        """
        self.clientproto = b"HTTP/2"
        self.method = self.channel.command or b"GET"
        self.uri = self.path = self.channel.path or b"/"
        message = _STREAM_REASONS[code] + b"\n"
        self.setResponseCode(code)
        self.responseHeaders.setRawHeaders(b"Content-Type", [b"text/plain; charset=utf-8"])
        self.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(message)])
        self.write(message)
        self.finish()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._rejected:
            return
        if not self._dispatched and self.body is not None:
            # The whole body came with the head (one read): it is complete.
            self.body.finish()
        HeimdallRequest.requestReceived(self, command, path, version)

    def _body_too_large(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.body_too_large()
        elif not self.startedWriting and not self.finished:
            self._answer_and_reset(413)
        else:
            self.channel.abortConnection()

    def finish(self) -> None:
        incomplete = self.body is not None and not self.body.complete
        super(HeimdallRequest, self).finish()
        if incomplete:
            # Answered before the body ended: refuse the rest (RFC 9113 8.1).
            self.channel.abortConnection()


if H2_ENABLED:
    from twisted.web._http2 import H2Connection

    class HeimdallH2Connection(H2Connection):
        """
        Twisted's C{H2Connection} on the site's reactor, building
        L{HeimdallStreamRequest}s and telling each when its stream is open.
        """

        def _requestReceived(self, event):
            super()._requestReceived(event)
            stream = self.streams.get(event.stream_id)
            request = getattr(stream, "_request", None)
            if isinstance(request, HeimdallStreamRequest):
                request.stream_opened()

        def _requestDone(self, streamID):
            super()._requestDone(streamID)
            if self.site is not None:
                self.site.connections.request_done(self)  # a draining site closes it once idle

        def connectionLost(self, reason, _cancelTimeouts=True):
            if self.site is not None:
                self.site.connections.discard(self)
            super().connectionLost(reason, _cancelTimeouts)

else:  # pragma: no cover - without the h2 package
    HeimdallH2Connection = None


class HeimdallChannelSwitch(http._GenericHTTPChannelProtocol):
    """
    Twisted's HTTP/1.1-or-HTTP/2 switch around a L{HeimdallChannel}: HTTP/2
    when ALPN chose C{h2} or, with C{cleartext}, when the client opens
    with the HTTP/2 preface.
    """

    cleartext = False
    _sniffed = b""

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            protocol = getattr(self._channel.transport, "negotiatedProtocol", None)
            if protocol is None and self.cleartext:
                sniffed = self._sniffed + data
                if _PREFACE.startswith(sniffed[: len(_PREFACE)]) and len(sniffed) < len(_PREFACE):
                    self._sniffed = sniffed  # maybe the preface: wait for more
                    return
                self._sniffed = b""
                data = sniffed
                if sniffed.startswith(_PREFACE):
                    protocol = b"h2"
            if protocol == b"h2" and H2_ENABLED:
                self._switch_to_h2()
            self._negotiatedProtocol = protocol or b"http/1.1"
        self._channel.dataReceived(data)

    def _switch_to_h2(self) -> None:
        old = self._channel
        network_producer = old._networkProducer
        network_producer.unregisterProducer()
        old.setTimeout(None)
        old.stop_timers()
        transport = old.transport
        site = self._site
        channel = HeimdallH2Connection(site.reactor if site is not None else None)
        channel.requestFactory = HeimdallStreamRequest
        channel.site = site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        channel.callLater = self._callLater
        self._channel = channel
        channel.makeConnection(transport)
        network_producer.registerProducer(channel, True)
        old.connectionLost = lambda reason: None  # it never had a request
        if site is not None:
            site.connections.replace(old, channel)  # counted until the HTTP/2 connection is lost


def switching_channel_factory(cleartext: bool = False):
    """
    A C{Site.protocol} for heimdall's site that speaks HTTP/2 as well (see
    L{HeimdallChannelSwitch}).
    """

    def build() -> HeimdallChannelSwitch:
        switch = HeimdallChannelSwitch(HeimdallChannel())
        switch.cleartext = cleartext
        return switch

    return build
