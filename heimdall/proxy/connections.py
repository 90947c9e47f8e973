"""
The open client connections of a site, and what a graceful shutdown
does with them (see L{heimdall.lifecycle.shutdown}).

A connection is idle when it has no request under way: an HTTP/1.1
channel with no request (not even a head begun) and no Upgrade tunnel,
an HTTP/2 connection with no open stream.  Once the site drains:

  - idle connections are closed at once (an HTTP/2 one with a GOAWAY);
  - busy HTTP/1.1 connections lose keep-alive: each closes after the
    response to its request (its channel asks L{ClientConnections.draining}
    when it decides persistence);
  - an HTTP/2 connection is closed when its last stream is done;
  - what is left when the grace ends is aborted (L{abort_all}): requests
    still running, tunnels.
"""

from __future__ import annotations

from typing import Any, List, Set

from twisted.internet import defer

__all__ = ["ClientConnections", "is_idle"]


def is_idle(protocol: Any) -> bool:
    """
    Whether a client connection's protocol has no request under way.
    """
    streams = getattr(protocol, "streams", None)
    if streams is not None:  # an HTTP/2 connection
        return not streams
    return not protocol.requests and protocol.tunnel is None


def _close(protocol: Any) -> None:
    conn = getattr(protocol, "conn", None)
    if conn is not None and getattr(protocol, "streams", None) is not None:
        # HTTP/2: a GOAWAY first, so the client knows nothing was lost.
        conn.close_connection()
        protocol.transport.write(conn.data_to_send())
        protocol.transport.loseConnection()
    else:
        protocol.loseConnection()


class ClientConnections:
    """
    The client connections open on one site.

    @ivar draining: the site is shutting down (see the module docstring).
    """

    def __init__(self) -> None:
        self._open: Set[Any] = set()
        self.draining = False
        self._waiters: List[defer.Deferred] = []

    def __len__(self) -> int:
        return len(self._open)

    def add(self, protocol: Any) -> None:
        """
        A connection was made (its protocol).
        """
        self._open.add(protocol)

    def replace(self, old: Any, new: Any) -> None:
        """
        The connection of C{old} is now run by C{new} (HTTP/2 took over).
        """
        self._open.discard(old)
        self._open.add(new)

    def discard(self, protocol: Any) -> None:
        """
        A connection was lost.
        """
        self._open.discard(protocol)
        if not self._open and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def request_done(self, protocol: Any) -> None:
        """
        A request on C{protocol} ended (HTTP/2: a stream): close it if it
        is now idle and the site drains.
        """
        if self.draining and protocol in self._open and is_idle(protocol):
            _close(protocol)

    def drain(self) -> None:
        """
        Close the idle connections and end keep-alive on the others.
        """
        self.draining = True
        for protocol in list(self._open):
            if is_idle(protocol):
                _close(protocol)
            elif getattr(protocol, "streams", None) is None:
                protocol.persistent = False

    def busy(self) -> int:
        """
        How many connections have a request under way.
        """
        return sum(1 for protocol in self._open if not is_idle(protocol))

    def when_empty(self) -> defer.Deferred:
        """
        A Deferred that fires when no connection is left open.
        """
        if not self._open:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def abort_all(self) -> None:
        """
        Abort every connection still open (the grace is over).
        """
        for protocol in list(self._open):
            transport = protocol.transport
            if transport is not None:
                transport.abortConnection()
