"""
The readiness check of a freshly spawned server: its first health check,
made with the one HTTP probe (L{heimdall.health.probes}).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater

from heimdall.errors import HeimdallError
from heimdall.health.probes import HttpProbe, probe_agent
from heimdall.manager.spawner import SpawnedServer

__all__ = ["HttpReadyCheck", "NotReady"]


class NotReady(HeimdallError):
    """
    A spawned server exited, or did not answer 2xx in time.
    """


@attrs.define(eq=False)
class HttpReadyCheck:
    """
    Waits until a freshly spawned server answers C{GET path} with a 2xx.
    Polls every C{interval} seconds for at most C{timeout} seconds, over a
    non-persistent connection pool (no connection is left behind).

    @ivar reactor: connects (L{IReactorTCP}) and keeps the time.
    """

    reactor: Any
    path: str = "/health"
    timeout: float = 10.0
    interval: float = 0.05
    attempt_timeout: float = 2.0

    def __call__(self, server: SpawnedServer) -> Deferred:
        return ensureDeferred(self._check(server))

    async def _check(self, server: SpawnedServer) -> None:
        probe = HttpProbe(probe_agent(self.reactor, connect_timeout=self.attempt_timeout))
        url = f"{server.url}{self.path}".encode("ascii")
        deadline = self.reactor.seconds() + self.timeout
        problem = "no answer yet"
        while True:
            if not server.running:
                raise NotReady(f"exited with status {server.exit_code} before GET {self.path} answered")
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:
                raise NotReady(f"GET {self.path} did not answer 2xx within {self.timeout:g} s ({problem})")
            try:
                attempt = probe.fetch(url)
                attempt.addTimeout(min(remaining, self.attempt_timeout), self.reactor)
                answer = await attempt
                if 200 <= answer.code < 300:
                    return
                problem = f"last status {answer.code}"
            except Exception as e:  # refused, reset, timed out: try again
                problem = f"last error: {type(e).__name__}"
            await deferLater(self.reactor, self.interval, lambda: None)
