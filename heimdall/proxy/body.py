"""
L{RequestBody}: the body of one client request, streamed from the client
to an upstream connection (an L{IRequestBodyConsumer}) as it arrives.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["BODY_HIGH_WATER", "RequestBody"]

# Buffered body bytes (before an upstream connection is attached) above
# which the client is paused.
BODY_HIGH_WATER = 256 * 1024


@implementer(IPushProducer)
class RequestBody:
    """
    The body of one client request, as it arrives.

    Until a consumer is attached (an L{IRequestBodyConsumer}: an upstream
    connection), arriving bytes are buffered and the client is paused
    above L{BODY_HIGH_WATER}.  Once attached, bytes go
    straight through, and the consumer's transport pauses the client when
    it cannot keep up.  L{replayable} says whether no byte has been handed
    to any consumer yet, i.e. whether the request may be sent elsewhere.

    Its C{timer} (an L{heimdall.proxy.timeouts.ExchangeTimer}, set by the
    exchange) hears of each piece, of the end, and of heimdall pausing
    the client (then the client is not waited on).
    """

    timer = None

    def __init__(self, length: Optional[int], client_transport=None) -> None:
        self.length = length  # None: chunked, length unknown
        self.received = 0
        self.complete = False
        self.replayable = True
        self._chunks: List[bytes] = []
        self._buffered = 0
        self._consumer = None
        self._consumer_transport = None
        self._on_sent: Optional[Callable[[], None]] = None
        self._client_transport = client_transport
        self._client_paused = False

    @classmethod
    def from_content(cls, content) -> "RequestBody":
        """
        A complete body from a file-like C{request.content} (a request that a
        plain C{Site} already read in full).
        """
        body = cls(None)
        content.seek(0, 0)
        while True:
            data = content.read(65536)
            if not data:
                break
            body.feed(data)
        body.length = body.received
        body.finish()
        return body

    # -- from the client side -----------------------------------------------

    def feed(self, data: bytes) -> None:
        timer = self.timer
        if timer is not None:
            timer.body_piece()
        self.received += len(data)
        if self._consumer is not None:
            self._consumer.write_body(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self.pauseProducing()

    def finish(self) -> None:
        self.complete = True
        if self.timer is not None:
            self.timer.body_done()
        if self._consumer is not None:
            self._consumer.end_body()
            self._sent()

    # -- to the upstream side -----------------------------------------------------

    def attach(self, consumer, on_sent: Callable[[], None]) -> None:
        """
        Send the body to C{consumer}; C{on_sent()} is called once the whole
        body has been handed over (at once if it already is).
        """
        self._consumer = consumer
        self._on_sent = on_sent
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if chunks or self.received:
            self.replayable = False
        for data in chunks:
            consumer.write_body(data)
        if self.complete:
            consumer.end_body()
            self._sent()
            return
        self.replayable = False  # from now on bytes go straight upstream
        transport = getattr(consumer, "transport", None)
        if transport is not None:
            self._consumer_transport = transport
            transport.registerProducer(self, True)
        self.resumeProducing()

    def detach(self) -> None:
        """
        Stop sending to the consumer (the exchange ended or failed).
        """
        self._unregister()
        self._consumer = None
        self._on_sent = None
        self.resumeProducing()

    @property
    def nothing_forwarded(self) -> bool:
        """
        Whether no byte of the body has gone to a consumer (the backend).
        """
        return self._consumer is None or self.received == 0

    def _sent(self) -> None:
        self._unregister()
        on_sent, self._on_sent = self._on_sent, None
        self.resumeProducing()
        if on_sent is not None:
            on_sent()

    def _unregister(self) -> None:
        transport, self._consumer_transport = self._consumer_transport, None
        if transport is not None and not getattr(transport, "disconnected", False):
            transport.unregisterProducer()

    # -- IPushProducer: the upstream transport pauses the client through us ----

    def pauseProducing(self) -> None:
        if not self._client_paused and self._client_transport is not None:
            self._client_paused = True
            self._client_transport.pauseProducing()
            if self.timer is not None:
                self.timer.body_paused()

    def resumeProducing(self) -> None:
        if self._client_paused:
            self._client_paused = False
            self._client_transport.resumeProducing()
            if self.timer is not None and not self.complete:
                self.timer.body_resumed()

    def stopProducing(self) -> None:
        self.detach()
