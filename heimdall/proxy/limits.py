"""
Connection limits on the proxy's listening ports (the C{limits} section):
L{ConnectionLimits} counts the client connections of every listener.

  - C{max_connections} (global): at the limit heimdall stops accepting: its
    listening ports stop reading (C{stopReading}), so new connections wait
    in the kernel's backlog, as with HAProxy's C{maxconn}; below it again,
    the ports read again.  Twisted accepts up to C{numberAccepts}
    connections per read of a port; near the limit that number is cut to
    the room left, so a burst does not go over.
  - C{max_connections_per_client} (per source address, 0: off): a client
    already holding that many gets C{429 Too Many Requests} with
    C{Retry-After: 1}, and the connection is closed.  The address is the
    TCP peer's: a trusted proxy's forwarded addresses are not used here (it
    is decided at accept, before any header, and one proxy carries many
    clients).  On the TLS port the 429 is sent inside TLS.

L{ConnectionLimits.wrap} wraps the site (inside TLS on the TLS port): each
connection is counted when its protocol is built and uncounted when it is
lost, with no wrapper between the transport and the protocol (nothing per
read).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import attrs
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from zope.interface import implementer

__all__ = ["ConnectionLimits", "LimitedFactory", "TOO_MANY_REQUESTS"]

_REFUSAL_BODY = b"too many connections from this address\n"
#: The answer to a client over its connection limit.
TOO_MANY_REQUESTS = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)

#: How long a refused connection is kept (reading and dropping what the
#: client sends) for the client to read the 429 and close first: closing
#: with unread bytes would reset the connection and could lose the 429.
REFUSAL_LINGER = 1.0


@attrs.define(eq=False)
class ConnectionLimits:
    """
    The client connections of every listener of one heimdall.

    @ivar max_connections: 0: no limit.
    @ivar max_per_client: 0: no limit.
    @ivar current: connections open now.
    @ivar refused_per_client: connections answered 429.
    @ivar accept_pauses: how many times accepting stopped at the limit.
    """

    max_connections: int
    max_per_client: int
    clock: Any
    current: int = 0
    refused_per_client: int = 0
    accept_pauses: int = 0
    paused: bool = False
    _per_client: Dict[str, int] = attrs.field(factory=dict)
    _ports: List[Any] = attrs.field(factory=list)
    _clamp_call: Any = None

    def wrap(self, factory: Any) -> "LimitedFactory":
        """
        C{factory} (a site) with its connections counted and limited.
        """
        return LimitedFactory(factory, self)

    def add_port(self, port: Any) -> None:
        """
        A listening port to pause at the limit (it reads C{wrap}'s factory).
        """
        self._ports.append(port)
        self._clamp()
        if self.paused:
            port.stopReading()

    def remove_port(self, port: Any) -> None:
        """
        A port that stops listening: never paused or resumed again.
        """
        if port in self._ports:
            self._ports.remove(port)

    def close(self) -> None:
        """
        Forget the ports and cancel the pending clamp (heimdall stops).
        """
        self._ports.clear()
        call, self._clamp_call = self._clamp_call, None
        if call is not None and call.active():
            call.cancel()

    # -- connections ------------------------------------------------------------

    def build(self, factory: Any, addr: Any) -> Optional[Any]:
        """
        The protocol for a new connection from C{addr}: C{factory}'s,
        counted, or a refusal (429) for a client over its limit.
        """
        host = getattr(addr, "host", None)
        per_client = self.max_per_client
        if per_client and host is not None:
            held = self._per_client.get(host, 0)
            if held >= per_client:
                self.refused_per_client += 1
                return _Refusal(self.clock)
            self._per_client[host] = held + 1
        protocol = factory.buildProtocol(addr)
        if protocol is None:
            self._forget(host)
            return None
        self.current += 1
        lost = protocol.connectionLost

        def connection_lost(reason: Any) -> None:
            try:
                lost(reason)
            finally:
                self._closed(host)

        protocol.connectionLost = connection_lost
        limit = self.max_connections
        if limit:
            room = limit - self.current
            if room <= 0:
                self._pause()
            elif self._clamp_call is None and any(p.numberAccepts > room for p in self._ports):
                # After the port's read (which resets numberAccepts).
                self._clamp_call = self.clock.callLater(0, self._clamp)
        return protocol

    def _forget(self, host: Optional[str]) -> None:
        if self.max_per_client and host is not None:
            held = self._per_client.get(host, 0) - 1
            if held > 0:
                self._per_client[host] = held
            else:
                self._per_client.pop(host, None)

    def _closed(self, host: Optional[str]) -> None:
        self.current -= 1
        self._forget(host)
        if self.paused and self.current < self.max_connections:
            self._resume()

    # -- the ports -------------------------------------------------------------------

    def _pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.accept_pauses += 1
        for port in self._ports:
            port.stopReading()

    def _resume(self) -> None:
        self.paused = False
        self._clamp()
        for port in self._ports:
            if not getattr(port, "disconnecting", False):
                port.startReading()

    def _clamp(self) -> None:
        """
        Let no port accept more connections in one read than there is room for.
        """
        self._clamp_call = None
        if not self.max_connections:
            return
        room = max(1, self.max_connections - self.current)
        for port in self._ports:
            if getattr(port, "numberAccepts", 0) > room:
                port.numberAccepts = room


class LimitedFactory:
    """
    A server factory counted by L{ConnectionLimits}; the rest is the
    wrapped factory's.
    """

    noisy = False

    def __init__(self, wrapped: Any, limits: ConnectionLimits) -> None:
        self.wrapped = wrapped
        self.limits = limits

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if prefix is not None else type(self.wrapped).__name__

    def buildProtocol(self, addr: Any) -> Optional[Any]:
        return self.limits.build(self.wrapped, addr)

    def __getattr__(self, name: str) -> Any:
        # The site's attributes (resource, reactor, ...) for whoever reads
        # them through the port's factory.
        return getattr(self.wrapped, name)


@implementer(IHandshakeListener)
class _Refusal(Protocol):
    """
    A connection over its client's limit: 429, then closed once the client
    closes or after L{REFUSAL_LINGER}.  Over TCP the 429 goes at once, then
    a FIN, and what the client sends is read and dropped; inside TLS it
    goes once the handshake is done, then the TLS close (TLS has no
    half-close).
    """

    _timer = None

    def __init__(self, clock: Any) -> None:
        self.clock = clock

    def connectionMade(self) -> None:
        self._timer = self.clock.callLater(REFUSAL_LINGER, self.transport.abortConnection)
        # A socket of its own (not the TLS wrapper, which says it provides
        # ITCPTransport as the socket below it does).
        if isinstance(self.transport, FileDescriptor):
            self.transport.write(TOO_MANY_REQUESTS)
            self.transport.loseWriteConnection()

    def handshakeCompleted(self) -> None:
        # Not from inside the TLS protocol's handshake step, which goes on
        # using the TLS connection a close would tear down.
        self.clock.callLater(0, self._answer_and_close)

    def _answer_and_close(self) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(TOO_MANY_REQUESTS)
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
