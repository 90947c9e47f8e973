"""
C{GET /events}: the live feed (L{heimdall.observe.live.LiveFeed}) as a
server-sent events stream, one L{EventStream} per client.

The stream is the request's push producer: when the client's socket
buffer is full, Twisted pauses it and the feed queues for it (bounded, see
L{heimdall.observe.live.Subscription}); when the client reads again it is
resumed and the queue is written out.  A client whose queue overflows is
disconnected at once (aborted: a graceful close would wait for it to
read).  The socket's kernel send buffer is capped at L{SEND_BUFFER} bytes
too, so a client that does not read is found within seconds, not after
megabytes of kernel buffers: an event stream needs little bandwidth.

Usable from a shell::

    curl -N -H "Authorization: Bearer $TOKEN" http://127.0.0.1:9090/events
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from heimdall.observe.live import LiveFeed, Subscription

__all__ = ["SEND_BUFFER", "EventStream", "event_streams"]

_log = Logger()

#: The kernel send buffer of an event stream's socket, in bytes.
SEND_BUFFER = 32 * 1024
#: Sent first: how long a browser's EventSource waits before reconnecting.
_PREAMBLE = b"retry: 2000\n\n"


@implementer(IPushProducer)
class EventStream:
    """
    One client's C{GET /events}: the HTTP side of a L{Subscription}.
    """

    def __init__(self, feed: LiveFeed, request: Any) -> None:
        self.feed = feed
        self.request = request
        self.subscription: Optional[Subscription] = None

    def start(self) -> None:
        request = self.request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # Reverse proxies in front (nginx) must not buffer the stream.
        request.setHeader(b"x-accel-buffering", b"no")
        self._cap_send_buffer()
        request.write(_PREAMBLE)
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._gone)
        self.subscription = self.feed.subscribe(self._write, self._ended)
        if getattr(request.channel, "_waitingForTransport", False):
            self.subscription.pause()  # already full before we registered

    def _cap_send_buffer(self) -> None:
        transport = getattr(self.request.channel, "transport", None)
        get_handle = getattr(transport, "getHandle", None)
        if get_handle is None:
            return
        try:
            get_handle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except (OSError, AttributeError):
            pass  # not a socket (a test transport): Twisted's own buffer still bounds it

    def _write(self, message: bytes) -> None:
        self.request.write(message)

    def _ended(self, reason: str, abort: bool) -> None:
        request = self.request
        request.unregisterProducer()
        if abort:
            _log.info("event stream of {client} dropped: {reason}", client=request.getClientAddress(), reason=reason)
            transport = getattr(request.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
        elif not request.finished:
            request.finish()

    def _gone(self, result: Any) -> None:
        if self.subscription is not None:
            self.subscription.close()

    # IPushProducer: the transport's pause and resume.

    def pauseProducing(self) -> None:
        if self.subscription is not None:
            self.subscription.pause()

    def resumeProducing(self) -> None:
        if self.subscription is not None:
            self.subscription.resume()

    def stopProducing(self) -> None:
        if self.subscription is not None:
            self.subscription.close()


def event_streams(feed: LiveFeed):
    """
    What L{heimdall.manager.api.ManagerApi} calls to serve C{GET /events}:
    starts an L{EventStream} on a request.
    """

    def open_stream(request: Any) -> EventStream:
        stream = EventStream(feed, request)
        stream.start()
        return stream

    return open_stream
