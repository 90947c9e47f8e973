"""
L{Listener}: a listening port that a reload may move.  The new endpoint is
bound first, and only once every new port is bound and the new config is
in effect does the old port close (L{Listener.commit}); connections it
accepted stay open and finish as usual.  A new endpoint that cannot be
bound refuses the reload and the old port keeps listening.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

__all__ = ["Listener", "where"]

_log = Logger()


def where(port: Any) -> str:
    """
    A listening port's address for the log: host:port, or a UNIX socket's path.
    """
    address = port.getHost()
    if not hasattr(address, "host"):
        return str(getattr(address, "name", "?"))
    return f"{address.host}:{getattr(address, 'port', '?')}"


@attrs.define(eq=False)
class Listener:
    """
    C{factory} served on the Twisted server endpoint C{endpoint}.

    @ivar name: what it is, for the log (C{"proxy"}, C{"TLS"}).
    @ivar port: the listening port (None before L{listen} and after L{stop}).
    @ivar limits: the L{heimdall.proxy.limits.ConnectionLimits} that
        pauses its ports at C{limits.max_connections}, or None.
    """

    reactor: Any
    factory: Any
    endpoint: str
    name: str
    port: Optional[Any] = None
    limits: Optional[Any] = None

    def listen(self) -> Deferred:
        """
        Start listening on C{endpoint} (at start-up); fires with the port.
        """
        return self.bind(self.endpoint).addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.port = port
        return port

    def bind(self, endpoint: str) -> Deferred:
        """
        Listen on C{endpoint} too (a reload's first step); fires with the
        new port, or fails (the address is taken, ...).
        """
        d = serverFromString(self.reactor, endpoint).listen(self.factory)
        if self.limits is not None:
            d.addCallback(self._watched)
        return d

    def _watched(self, port: Any) -> Any:
        self.limits.add_port(port)
        return port

    def _unwatched(self, port: Any) -> Any:
        if self.limits is not None:
            self.limits.remove_port(port)
        return port

    def commit(self, port: Any, endpoint: str) -> Deferred:
        """
        C{port} (from L{bind}) is the listener from now on; the old one
        stops listening.
        """
        old, self.port, self.endpoint = self.port, port, endpoint
        _log.info("heimdall {name} listening on {where} now", name=self.name, where=where(port))
        return self._unwatched(old).stopListening() if old is not None else succeed(None)

    def abandon(self, port: Any) -> Deferred:
        """
        Close C{port} from L{bind}: the reload it was for was refused.
        """
        return self._unwatched(port).stopListening()

    def stop(self) -> Deferred:
        port, self.port = self.port, None
        return self._unwatched(port).stopListening() if port is not None else succeed(None)
