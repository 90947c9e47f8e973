"""
The graceful shutdown: what heimdall does between SIGTERM (or SIGINT, or
C{stopService}) and the stop of its other parts.

  1. It stops listening on the proxy and TLS ports: a new connection is
     refused (the kernel answers RST), so a load balancer or client in
     front moves to another instance at once.
  2. The sites drain (L{heimdall.proxy.connections.ClientConnections}):
     idle keep-alive connections are closed, busy ones close after their
     response.
  3. It waits until every client connection has closed, for at most
     C{grace} seconds (C{timeouts.shutdown_grace}); then, or at once when
     L{GracefulShutdown.cut_short} is called (a second SIGTERM), it aborts
     what is left: requests still running and WebSocket tunnels.

Then the composition root stops the rest (the manager, upstream
connections, spawned servers).  The manager port and the health checks
run on during the grace, as HAProxy's stats do during a soft stop.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from heimdall.proxy.connections import ClientConnections

__all__ = ["GracefulShutdown"]

_log = Logger()


@attrs.define(eq=False)
class GracefulShutdown:
    """
    Drains a set of listening ports and their sites' client connections.

    @ivar clock: an C{IReactorTime} (the grace timer).
    @ivar grace: seconds requests in flight may run on (0: none).
    """

    clock: Any
    grace: float
    _end: Optional[defer.Deferred] = attrs.field(default=None, init=False)
    _cut: bool = attrs.field(default=False, init=False)

    def cut_short(self) -> None:
        """
        End the grace now (a second SIGTERM): what is still running is
        aborted.  Before the drain started, the drain will not wait.
        """
        self._cut = True
        end = self._end
        if end is not None and not end.called:
            end.callback("cut short")

    @defer.inlineCallbacks
    def drain(self, ports: Iterable[Any], connections: Iterable[ClientConnections]):
        """
        Stop listening on C{ports} (None entries are skipped), drain
        C{connections} and wait for them as the module docstring says.

        @return: a Deferred that fires with how it ended: C{"drained"},
            C{"grace over"} or C{"cut short"}.
        """
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports if p is not None])
        sites: List[ClientConnections] = list(connections)
        for site in sites:
            site.drain()
        busy = sum(site.busy() for site in sites)
        started = self.clock.seconds()
        if busy:
            _log.info(
                "shutting down: no new connections; waiting up to {grace}s for {busy} busy connection(s)",
                grace=self.grace, busy=busy,
            )  # fmt: skip
        how = yield self._wait(sites)
        if how == "drained":
            if busy:
                _log.info("shutdown: every request finished in {s:.2f}s", s=self.clock.seconds() - started)
            return how
        left = sum(len(site) for site in sites)
        _log.info("shutdown: {how}, closing {left} connection(s) still open", how=how, left=left)
        for site in sites:
            site.abort_all()
        return how

    def _wait(self, sites: List[ClientConnections]) -> defer.Deferred:
        end = self._end = defer.Deferred()
        if self._cut:
            end.callback("cut short")
            return end

        def finish(how: str) -> None:
            if not end.called:
                end.callback(how)

        timer = self.clock.callLater(self.grace, finish, "grace over")
        empty = defer.gatherResults([site.when_empty() for site in sites])
        empty.addCallback(lambda _: finish("drained"))

        def cleanup(how: str) -> str:
            if timer.active():
                timer.cancel()
            return how

        return end.addCallback(cleanup)
