"""
Keeping spawned servers running: L{Supervisor} restarts a server that
exited on its own, on the same port, after a backoff, as its
L{RestartPolicy} says, and reports each step as a L{SupervisionEvent}.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import attrs
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from heimdall.manager.spawner import SpawnedServer, exit_code_of

__all__ = ["RestartPolicy", "SupervisionEvent", "Supervisor"]

_log = Logger()


@attrs.frozen
class RestartPolicy:
    """
    When and how fast a supervised server is restarted after it exited on
    its own.

    @ivar policy: C{"always"}, C{"on-failure"} (a non-zero status or a
        signal) or C{"never"}.
    @ivar backoff: the delay before the first restart in a row; each
        further one doubles it, up to C{max_backoff}.
    @ivar max_restarts: restarts in a row before giving up; 0: never.
    @ivar reset_after: a server that ran this long starts a new row.
    """

    policy: str = attrs.field(default="always", validator=attrs.validators.in_(("always", "on-failure", "never")))
    backoff: float = 1.0
    max_backoff: float = 30.0
    max_restarts: int = 0
    reset_after: float = 60.0

    @classmethod
    def from_config(cls, restart: Any) -> "RestartPolicy":
        """
        From a L{heimdall.config.manager.RestartConfig}.
        """
        return cls(
            policy=restart.policy,
            backoff=restart.backoff,
            max_backoff=restart.max_backoff,
            max_restarts=restart.max_restarts,
            reset_after=restart.reset_after,
        )

    def wants_restart(self, exit_code: int) -> bool:
        if self.policy == "never":
            return False
        if self.policy == "on-failure":
            return exit_code != 0
        return True

    def delay(self, restarts_in_a_row: int) -> float:
        # Capped before exponentiating: 2 ** 10000 would be a big number.
        return min(self.max_backoff, self.backoff * 2 ** min(restarts_in_a_row, 32))


@attrs.frozen
class SupervisionEvent:
    """
    Something that happened to a supervised server.

    C{kind} is one of:
      - C{exited}: it exited on its own (C{pid}, C{exit_code});
      - C{restart_scheduled}: a restart will be tried in C{delay} seconds
        (C{attempt} counts the restarts in a row, from 1);
      - C{restarted}: it runs again as C{pid};
      - C{restart_failed}: a restart did not work (C{detail});
      - C{not_restarted}: the policy says to leave it down;
      - C{gave_up}: C{max_restarts} restarts in a row failed to keep it up.
    """

    kind: str
    port: int
    at: float
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    delay: Optional[float] = None
    attempt: int = 0
    detail: str = ""


@attrs.define(eq=False)
class _Watch:
    port: int
    server: Optional[SpawnedServer]
    started_at: float
    restarts_in_a_row: int = 0
    pending: Any = None  # the IDelayedCall of a scheduled restart
    starting: Optional[Deferred] = None
    gave_up: bool = False
    stopped: bool = False


@attrs.define(eq=False)
class Supervisor:
    """
    Keeps spawned servers running: when one exits without having been
    stopped through the spawner, it is restarted on the same port after a
    backoff, as its L{RestartPolicy} says.  Each step is reported to the
    subscribers as a L{SupervisionEvent} (the manager marks the backend
    down on C{exited} and up on C{restarted}).

    @ivar spawner: reports exits (C{subscribe_exit}) and stops servers.
    @ivar start: C{start(port)} starts a server on exactly C{port} and
        fires with the L{SpawnedServer} once it is ready (the manager's
        spawn plus ready check).
    @ivar clock: schedules restarts.
    """

    spawner: Any
    start: Callable[[int], Deferred]
    policy: RestartPolicy
    clock: Any
    _watches: Dict[int, _Watch] = attrs.field(factory=dict, init=False)
    _subscribers: List[Callable[[SupervisionEvent], Any]] = attrs.field(factory=list, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.spawner.subscribe_exit(self._exited)

    # -- subscribers -----------------------------------------------------

    def subscribe(self, callback: Callable[[SupervisionEvent], Any]) -> Callable[[], None]:
        """
        Call C{callback(event)} for every L{SupervisionEvent}; returns a
        function that unsubscribes.
        """
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _emit(self, kind: str, watch: _Watch, **fields: Any) -> None:
        event = SupervisionEvent(kind, watch.port, self.clock.seconds(), **fields)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                _log.failure("supervision subscriber {callback!r} failed", callback=callback)

    # -- what is watched ---------------------------------------------------

    def watch(self, server: SpawnedServer) -> None:
        """
        Supervise C{server} (running and ready) from now on.
        """
        self._watches[server.port] = _Watch(server.port, server, self.clock.seconds())

    def watch_down(self, port: int, detail: str = "") -> None:
        """
        Supervise a port whose server could not be started: a restart is
        scheduled as if its server had just exited.
        """
        watch = _Watch(port, None, self.clock.seconds())
        self._watches[port] = watch
        self._schedule(watch)

    def is_watched(self, port: int) -> bool:
        return port in self._watches

    def describe(self, port: int) -> Optional[Dict[str, Any]]:
        """
        The supervision state of C{port}, as JSON-ready data, or None.
        """
        watch = self._watches.get(port)
        if watch is None:
            return None
        next_at = watch.pending.getTime() if watch.pending is not None and watch.pending.active() else None
        return {
            "policy": self.policy.policy,
            "restarts_in_a_row": watch.restarts_in_a_row,
            "next_restart_at": next_at,
            "restarting": watch.starting is not None,
            "gave_up": watch.gave_up,
        }

    def unwatch(self, port: int) -> Deferred:
        """
        Stop supervising C{port}: a scheduled restart is cancelled and one
        under way is stopped.  Fires once no restart is under way (the
        server itself, if running, is left for the caller to stop).
        """
        watch = self._watches.pop(port, None)
        if watch is None:
            return succeed(None)
        watch.stopped = True
        if watch.pending is not None and watch.pending.active():
            watch.pending.cancel()
        watch.pending = None
        if watch.starting is None:
            return succeed(None)
        if self.spawner.has(port):
            self.spawner.stop(port)
        settled: Deferred = Deferred()
        watch.starting.addBoth(lambda _: settled.callback(None) if not settled.called else None)
        return settled

    def close(self) -> Deferred:
        """
        Stop supervising everything (heimdall is stopping).
        """
        self._closed = True
        try:
            self.spawner.unsubscribe_exit(self._exited)
        except ValueError:
            pass
        return DeferredList([self.unwatch(port) for port in list(self._watches)], consumeErrors=True)

    # -- exits and restarts ------------------------------------------------

    def _exited(self, server: SpawnedServer, reason: Failure) -> None:
        watch = self._watches.get(server.port)
        if watch is None or watch.server is not server or self._closed:
            return
        code = server.exit_code if server.exit_code is not None else exit_code_of(reason)
        watch.server = None
        self._emit("exited", watch, pid=server.pid, exit_code=code)
        if self.clock.seconds() - watch.started_at >= self.policy.reset_after:
            watch.restarts_in_a_row = 0
        if not self.policy.wants_restart(code):
            self._emit("not_restarted", watch, exit_code=code, detail=f"restart policy is {self.policy.policy!r}")
            return
        self._schedule(watch)

    def _schedule(self, watch: _Watch) -> None:
        if self.policy.policy == "never" or watch.stopped:
            return
        if self.policy.max_restarts and watch.restarts_in_a_row >= self.policy.max_restarts:
            watch.gave_up = True
            self._emit(
                "gave_up", watch, attempt=watch.restarts_in_a_row,
                detail=f"{watch.restarts_in_a_row} restarts in a row did not keep it running",
            )
            return
        delay = self.policy.delay(watch.restarts_in_a_row)
        watch.pending = self.clock.callLater(delay, self._restart, watch)
        self._emit("restart_scheduled", watch, delay=delay, attempt=watch.restarts_in_a_row + 1)

    def _restart(self, watch: _Watch) -> None:
        watch.pending = None
        watch.restarts_in_a_row += 1
        attempt = watch.restarts_in_a_row
        try:
            starting = self.start(watch.port)
        except Exception:
            starting = fail()
        watch.starting = starting

        def started(server: SpawnedServer) -> None:
            watch.starting = None
            if watch.stopped:
                # Unwatched meanwhile: the caller stops what is left.
                return
            watch.server = server
            watch.started_at = self.clock.seconds()
            self._emit("restarted", watch, pid=server.pid, attempt=attempt)

        def failed(failure: Failure) -> None:
            watch.starting = None
            if watch.stopped:
                return
            self._emit("restart_failed", watch, attempt=attempt, detail=str(failure.value).split("\n")[0])
            self._schedule(watch)

        starting.addCallbacks(started, failed)
