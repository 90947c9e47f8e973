"""
The manager API: add, list, change and remove backends of a running
heimdall over HTTP, on its own port (C{manager.listen}), in the same
process and reactor as the proxy.

Two layers:

  - L{ServerManager} does the work: it owns what heimdall knows about each
    server besides the pool (spawned by heimdall or not, its process,
    whether it came from config.json), spawns and stops local servers,
    supervises them (L{heimdall.manager.spawner.Supervisor}), drains before it
    removes, and writes every change to the state file before it reports
    success;
  - L{ManagerResource} is the HTTP face: routing, bearer-token checks,
    strict parsing of queries and JSON bodies, JSON answers and errors
    C{{"error": "...", "detail": ...}}, and a log line per change naming
    who made it.

Nothing here blocks the reactor: spawning, readiness checks, draining and
state-file writes (in a thread) are all asynchronous, and a slow one never
holds up another request or the proxy.

The endpoints, their answers and errors are described in
C{heimdall/manager/openapi.json} (served at C{/openapi.json}) and docs/manager.md.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import hmac
import ipaddress
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import quote, unquote

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from heimdall import __version__
from heimdall.errors import ConfigError, HeimdallError
from heimdall.pool.pool import AdminState, Backend, BackendPool, Health, Member, is_eligible
from heimdall.manager.spawner import (
    NoFreePort,
    PortInUse,
    RestartPolicy,
    SpawnedServer,
    SpawnError,
    SupervisionEvent,
    Supervisor,
    is_port_free,
)
from heimdall.manager.statefile import ConfigChange, ServerRecord, State, StateWriter

__all__ = [
    "MAX_BODY_BYTES",
    "ROUTES",
    "Actor",
    "ApiError",
    "HttpReadyCheck",
    "ManagerResource",
    "ManagerSite",
    "Route",
    "ServerInfo",
    "ServerManager",
    "check_exposure",
    "listens_on_loopback",
    "openapi_document",
    "resolve_token",
]

_log = Logger()

#: Request bodies above this get 413.
MAX_BODY_BYTES = 64 * 1024

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# -- errors and values ---------------------------------------------------------


class ApiError(HeimdallError):
    """
    An answer other than success: C{status} with C{{"error": message,
    "detail": detail}}.
    """

    def __init__(self, status: int, message: str, detail: Any = None, headers: Sequence[Tuple[str, str]] = ()):
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = tuple(headers)
        super().__init__(f"{status} {message}")


@attrs.frozen
class Actor:
    """
    Who asked for a change: the client's address and whether it presented
    the manager's token (always False when no token is configured).
    """

    client: str
    authenticated: bool

    def __str__(self) -> str:
        return f"{self.client} ({'authenticated' if self.authenticated else 'unauthenticated'})"


@attrs.frozen
class ServerInfo:
    """
    What the manager knows about a server beyond its pool member.

    @ivar from_config: it is one of config.json's backends.
    @ivar managed: heimdall spawned it and supervises its process.
    @ivar pid: its process while one runs (managed only).
    @ivar started_at: when its process started (managed), else when it
        was registered.
    @ivar restarts: how often supervision restarted it.
    """

    id: str
    port: int
    from_config: bool = False
    managed: bool = False
    backup: bool = False
    pid: Optional[int] = None
    started_at: Optional[float] = None
    restarts: int = 0


def _iso(seconds: Optional[float]) -> Optional[str]:
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_local(host: str) -> bool:
    return host in _LOCAL_HOSTS


# -- readiness -------------------------------------------------------------------


class NotReady(HeimdallError):
    pass


def _quiet_factory_class() -> type:
    # twisted.web.client imports the reactor-free parts only; imported
    # late so that importing heimdall.manager.api stays light.
    from twisted.web.client import _HTTP11ClientFactory

    return type("QuietHTTP11ClientFactory", (_HTTP11ClientFactory,), {"noisy": False})


class _Discard(Protocol):
    def __init__(self, done: Deferred) -> None:
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


def _discard_body(response: Any) -> Deferred:
    """
    Read and drop a response body; fires when it ended.  Cancelling it
    drops the connection.
    """
    protocol = _Discard(Deferred(lambda _: protocol.transport.stopProducing()))
    response.deliverBody(protocol)
    return protocol.done


@attrs.define(eq=False)
class HttpReadyCheck:
    """
    Waits until a freshly spawned server answers C{GET path} with a 2xx:
    its first health check.  Polls every C{interval} seconds for at most
    C{timeout} seconds, with its own non-persistent connection pool (no
    connection is left behind).
    """

    reactor: Any
    path: str = "/health"
    timeout: float = 10.0
    interval: float = 0.05
    attempt_timeout: float = 2.0

    def __call__(self, server: SpawnedServer) -> Deferred:
        return ensureDeferred(self._check(server))

    async def _check(self, server: SpawnedServer) -> None:
        from twisted.internet.task import deferLater
        from twisted.web.client import Agent, HTTPConnectionPool

        # A plain Agent (treq's HTTPClient adds nothing needed here, and is
        # not installed in the PyPy environment).
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        pool._factory = _quiet_factory_class()  # no "Starting factory" log line per attempt
        agent = Agent(self.reactor, pool=pool, connectTimeout=self.attempt_timeout)
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
                attempt = agent.request(b"GET", url)
                attempt.addTimeout(min(remaining, self.attempt_timeout), self.reactor)
                response = await attempt
                reading = _discard_body(response)
                reading.addTimeout(min(max(remaining, 0.1), self.attempt_timeout), self.reactor)
                await reading
                if 200 <= response.code < 300:
                    return
                problem = f"last status {response.code}"
            except Exception as e:  # refused, reset, timed out: try again
                problem = f"last error: {type(e).__name__}"
            await deferLater(self.reactor, self.interval, lambda: None)


# -- the manager ------------------------------------------------------------------


@attrs.define(eq=False)
class ServerManager:
    """
    Adds, changes, drains and removes backends; spawns, supervises and
    stops local servers; persists every change before reporting success.

    @ivar pool: the proxy's backend pool.
    @ivar spawner: a L{heimdall.manager.spawner.ServerSpawner} (or a fake with
        C{spawn(port, avoid)}, C{stop(port)}, C{has(port)},
        C{subscribe_exit}, C{unsubscribe_exit}, C{host}, C{base_port},
        C{port_range}).
    @ivar clock: L{IReactorTime}.
    @ivar writer: writes the state file.
    @ivar drain_timeout: how long a removal waits for in-flight requests.
    @ivar ready_check: C{ready_check(server)} fires once a spawned server
        is ready beyond accepting connections (None: accepting is enough).
    @ivar config_backends: config.json's backends
        (L{heimdall.config.model.BackendConfig}).
    @ivar info: extra fields for C{GET /status} (listening addresses, ...).
    @ivar port_free: C{port_free(host, port)}, checked after a spawned
        server was stopped.
    """

    pool: BackendPool
    spawner: Any
    clock: Any
    writer: StateWriter
    drain_timeout: float = 30.0
    ready_check: Optional[Callable[[SpawnedServer], Deferred]] = None
    restart_policy: RestartPolicy = attrs.field(factory=RestartPolicy)
    config_backends: Sequence[Any] = ()
    strategy_name: str = "round_robin"
    info: Mapping[str, Any] = attrs.field(factory=dict)
    port_free: Callable[[str, int], bool] = is_port_free
    started_at: float = attrs.field(init=False, default=0.0)
    supervisor: Supervisor = attrs.field(init=False, default=None)
    _servers: Dict[str, ServerInfo] = attrs.field(init=False, factory=dict)
    _config_ids: Dict[str, Any] = attrs.field(init=False, factory=dict)
    _removing: Dict[str, Deferred] = attrs.field(init=False, factory=dict)
    # Ports promised to servers that are being started or restored.
    _reserved: Set[int] = attrs.field(init=False, factory=set)
    _waits: Set[Deferred] = attrs.field(init=False, factory=set)
    _stopping: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self.started_at = self.clock.seconds()
        self._config_ids = {entry.backend.id: entry for entry in self.config_backends}
        self.supervisor = Supervisor(
            spawner=self.spawner,
            start=lambda port: ensureDeferred(self._start(port)),
            policy=self.restart_policy,
            clock=self.clock,
        )
        self.supervisor.subscribe(self._supervision_event)

    # -- start-up --------------------------------------------------------------

    def load(self, state: Optional[State]) -> List[ServerRecord]:
        """
        Fill the pool from config.json's backends and the state file's
        changes, additions and removals.  Returns the managed servers to
        start with L{start_managed}; their ports are reserved meanwhile.
        """
        removed = set(state.config_removed) if state is not None else set()
        for entry in self.config_backends:
            backend, backup, admin = entry.backend, entry.backup, AdminState.READY
            if backend.id in removed:
                _log.info("config backend {id} stays removed (removed through the manager)", id=backend.id)
                continue
            change = state.change_for(backend.id) if state is not None else None
            if change is not None:
                if change.weight is not None:
                    backend = attrs.evolve(backend, weight=change.weight)
                if change.admin is not None:
                    admin = AdminState(change.admin)
                if change.backup is not None:
                    backup = change.backup
            self.pool.add(backend, admin)
            self._servers[backend.id] = ServerInfo(
                backend.id, backend.port, from_config=True, backup=backup, started_at=self.clock.seconds()
            )
        if state is None:
            return []
        for stale in set(removed) - set(self._config_ids):
            _log.info("state file: config backend {id} is no longer in the config; ignored", id=stale)
        to_start = []
        for record in state.servers:
            if record.id in self._servers or record.id in self._config_ids:
                _log.info("state file: {id} is in the config now; the config's entry is used", id=record.id)
                continue
            if record.managed:
                to_start.append(record)
                self._reserved.add(record.port)
                continue
            self.pool.add(record.backend, AdminState(record.admin))
            self._servers[record.id] = ServerInfo(
                record.id, record.port, backup=record.backup, started_at=self.clock.seconds()
            )
        return to_start

    async def start_managed(self, records: Sequence[ServerRecord]) -> None:
        """
        Re-spawn the state file's managed servers, each on its own port.
        One that cannot be started now is registered as down and left to
        supervision, which retries with backoff.
        """
        for record in records:
            try:
                server = await self._start(record.port)
            except Exception as e:
                self._reserved.discard(record.port)
                if self._stopping:
                    return
                problem = str(e).split("\n")[0]
                _log.warn("could not restart {url} from the state file: {problem}", url=record.url, problem=problem)
                self.pool.add(record.backend, AdminState(record.admin))
                self.pool.set_health(record.id, Health.DOWN, f"could not be started: {problem}")
                self._servers[record.id] = ServerInfo(record.id, record.port, managed=True, backup=record.backup)
                self.supervisor.watch_down(record.port, problem)
                continue
            self._reserved.discard(record.port)
            self._register_spawned(server, record.weight, record.backup, AdminState(record.admin))
            _log.info("restored spawned backend {url} (pid {pid})", url=server.url, pid=server.pid)

    async def spawn_initial(self, count: int) -> List[ServerInfo]:
        """
        Spawn config.json's C{spawn} demo backends (a first start, without
        a state file).  A failure fails the start.
        """
        spawned = []
        for _ in range(count):
            server = await self._start(None)
            spawned.append(self._register_spawned(server, 1, False))
            _log.info("spawned demo backend {url} (pid {pid})", url=server.url, pid=server.pid)
        return spawned

    # -- reading ---------------------------------------------------------------

    def servers(self) -> List[Dict[str, Any]]:
        return [self.describe(member.id) for member in self.pool.members()]

    def _info(self, member: Member) -> ServerInfo:
        known = self._servers.get(member.id)
        if known is not None:
            return known
        # Added to the pool by code other than the manager.
        return ServerInfo(member.id, member.backend.port, started_at=member.added_at)

    def find(self, port: Optional[int] = None, server_id: Optional[str] = None) -> str:
        """
        The id of the server named by C{port} and/or C{server_id}.

        @raise ApiError: 404 when there is none, 400 when a port alone
            matches several servers on different hosts.
        """
        if server_id is not None:
            member = self.pool.get(server_id)
            if member is None:
                raise ApiError(404, f"no server with id {server_id}", {"id": server_id})
            if port is not None and member.backend.port != port:
                raise ApiError(404, f"server {server_id} is not on port {port}", {"id": server_id, "port": port})
            return server_id
        matches = [member for member in self.pool.members() if member.backend.port == port]
        if len(matches) > 1:
            local = [m for m in matches if self._info(m).managed or _is_local(m.backend.host)]
            if len(local) == 1:
                return local[0].id
            raise ApiError(
                400,
                f"port {port} is used by several servers; name one with ?id=",
                {"port": port, "ids": [m.id for m in matches]},
            )
        if not matches:
            raise ApiError(404, f"no server on port {port}", {"port": port})
        return matches[0].id

    def describe(self, server_id: str) -> Dict[str, Any]:
        """
        A server as the API shows it.
        """
        member = self.pool.get(server_id)
        assert member is not None, server_id
        info = self._info(member)
        backend = member.backend
        return {
            "id": backend.id,
            "url": backend.url,
            "host": backend.host,
            "port": backend.port,
            "weight": backend.weight,
            "backup": info.backup,
            "source": "config" if info.from_config else "runtime",
            "managed": info.managed,
            "pid": info.pid if info.managed else None,
            "admin": member.admin.value,
            "health": _health(member),
            "eligible": is_eligible(member),
            "in_flight": member.in_flight,
            "requests_total": member.requests_total,
            "failures_total": member.failures_total,
            "response_time_avg": member.ttlb_avg,
            "ttfb_avg": member.ttfb_avg,
            "started_at": _iso(info.started_at if info.started_at is not None else member.added_at),
            "added_at": _iso(member.added_at),
            "restarts": info.restarts,
            "supervision": self._supervision(info),
            "removing": server_id in self._removing,
        }

    def _supervision(self, info: ServerInfo) -> Optional[Dict[str, Any]]:
        if not info.managed:
            return None
        described = self.supervisor.describe(info.port)
        if described is not None:
            described["next_restart_at"] = _iso(described["next_restart_at"])
        return described

    def status(self) -> Dict[str, Any]:
        members = self.pool.members()
        now = self.clock.seconds()

        def count(predicate) -> int:
            return sum(1 for member in members if predicate(member))

        return {
            "name": "heimdall",
            "version": __version__,
            "started_at": _iso(self.started_at),
            "uptime": round(now - self.started_at, 3),
            "strategy": self.strategy_name,
            "counts": {
                "servers": len(members),
                "managed": count(lambda m: self._info(m).managed),
                "eligible": count(is_eligible),
                "up": count(lambda m: m.health is Health.UP),
                "down": count(lambda m: m.health is Health.DOWN),
                "unknown": count(lambda m: m.health is Health.UNKNOWN),
                "ready": count(lambda m: m.admin is AdminState.READY),
                "draining": count(lambda m: m.admin is AdminState.DRAINING),
                "maintenance": count(lambda m: m.admin is AdminState.MAINTENANCE),
                "in_flight": sum(m.in_flight for m in members),
                "requests_total": sum(m.requests_total for m in members),
            },
            "spawn_ports": {
                "host": self.spawner.host,
                "first": self.spawner.base_port,
                "last": self.spawner.base_port + self.spawner.port_range - 1,
            },
            **dict(self.info),
        }

    # -- changes ---------------------------------------------------------------

    async def add_spawned(
        self, actor: Actor, port: Optional[int] = None, weight: int = 1, backup: bool = False
    ) -> Dict[str, Any]:
        """
        Spawn a server (on C{port}, or the lowest free port of the range),
        wait until it is ready, register it and persist.
        """
        self._check_running()
        if port is not None:
            first, last = self.spawner.base_port, self.spawner.base_port + self.spawner.port_range - 1
            if not first <= port <= last:
                raise ApiError(
                    400,
                    f"port {port} is outside the manager's spawn range {first}-{last}",
                    {"field": "port", "first": first, "last": last},
                )
            taken = self._registered_on(port)
            if taken is not None:
                raise ApiError(409, f"port {port} is already registered to {taken}", {"port": port, "id": taken})
        try:
            server = await self._start(port)
        except NoFreePort as e:
            raise ApiError(
                503, "no free port in the spawn range",
                {"host": e.host, "first": e.base_port, "last": e.base_port + e.port_range - 1},
            ) from None
        except PortInUse as e:
            raise ApiError(409, f"port {e.port} is in use by another process", {"port": e.port}) from None
        except SpawnError as e:
            raise ApiError(
                502, f"the server did not start: {e.problem}", {"port": e.port, "output": e.output}
            ) from None
        if self._stopping or self.pool.get(Backend.from_url(server.url).id) is not None:
            # Shutting down, or the same id was registered meanwhile.
            await self.spawner.stop(server.port)
            self._check_running()
            raise ApiError(409, f"port {server.port} was registered meanwhile", {"port": server.port})
        info = self._register_spawned(server, weight, backup)
        self._log_change("added", info.id, actor, f"spawned on port {server.port}, pid {server.pid}")
        await self._persist()
        return self.describe(info.id)

    async def add_external(self, actor: Actor, url: str, weight: int = 1, backup: bool = False) -> Dict[str, Any]:
        """
        Register a server heimdall did not start, and persist.
        """
        self._check_running()
        try:
            backend = Backend.from_url(url, weight)
        except ValueError as e:
            raise ApiError(400, f"invalid url: {e}", {"field": "url", "problem": str(e)}) from None
        if self.pool.get(backend.id) is not None:
            raise ApiError(409, f"{backend.id} is already registered", {"id": backend.id, "port": backend.port})
        if _is_local(backend.host) and (backend.port in self._reserved or self.spawner.has(backend.port)):
            raise ApiError(409, f"port {backend.port} is being used for a spawned server", {"port": backend.port})
        self.pool.add(backend)
        self._servers[backend.id] = ServerInfo(
            backend.id, backend.port, from_config=backend.id in self._config_ids, backup=backup,
            started_at=self.clock.seconds(),
        )
        self._log_change("added", backend.id, actor, f"external, weight {backend.weight}")
        await self._persist()
        return self.describe(backend.id)

    async def update(
        self,
        actor: Actor,
        server_id: str,
        weight: Optional[int] = None,
        admin: Optional[AdminState] = None,
        backup: Optional[bool] = None,
    ) -> Dict[str, Any]:
        """
        Change a server's weight, admin state or backup flag, and persist.
        """
        self._check_running()
        if server_id in self._removing:
            raise ApiError(409, f"{server_id} is being removed", {"id": server_id})
        member = self.pool.get(server_id)
        if member is None:
            raise ApiError(404, f"no server with id {server_id}", {"id": server_id})
        changes = []
        if weight is not None and weight != member.weight:
            changes.append(f"weight {member.weight} -> {weight}")
            self.pool.set_weight(server_id, weight)
        if admin is not None and admin is not member.admin:
            changes.append(f"admin {member.admin.value} -> {admin.value}")
            self.pool.set_admin(server_id, admin)
        info = self._info(member)
        if backup is not None and backup != info.backup:
            changes.append(f"backup {info.backup} -> {backup}")
            self._servers[server_id] = attrs.evolve(info, backup=backup)
        self._log_change("updated", server_id, actor, ", ".join(changes) or "no change")
        await self._persist()
        return self.describe(server_id)

    def remove(self, actor: Actor, server_id: str) -> Deferred:
        """
        Drain and remove a server: no new requests, wait for its in-flight
        ones (at most C{drain_timeout}), deregister it, stop supervising it,
        stop its process if heimdall spawned it (SIGTERM, then SIGKILL),
        check that its port is free, persist.  Fires with its last
        description plus a C{removal} report.  Removing a server that is
        already being removed joins that removal.
        """
        removal = self._removing.get(server_id)
        if removal is None:
            self._check_running()
            if self.pool.get(server_id) is None:
                raise ApiError(404, f"no server with id {server_id}", {"id": server_id})
            removal = ensureDeferred(self._remove(actor, server_id))
            if not removal.called:
                self._removing[server_id] = removal

                def done(result):
                    self._removing.pop(server_id, None)
                    return result

                removal.addBoth(done)
        return _observe(removal)

    async def _remove(self, actor: Actor, server_id: str) -> Dict[str, Any]:
        member = self.pool.get(server_id)
        assert member is not None
        info = self._info(member)
        started = self.clock.seconds()
        if member.admin is not AdminState.DRAINING:
            self.pool.set_admin(server_id, AdminState.DRAINING)
        self._log_change("draining", server_id, actor, f"{member.in_flight} in flight")
        drained = await self._wait_drained(member, self.drain_timeout)
        final = self.describe(server_id)
        self.pool.remove(server_id)
        self._servers.pop(server_id, None)
        report: Dict[str, Any] = {
            "drained": drained,
            "in_flight_left": member.in_flight,
            "waited": round(self.clock.seconds() - started, 3),
            "stopped": None,
            "port_free": None,
        }
        if info.managed:
            # Supervision first: an exit caused by our own stop must not
            # look like a crash to restart.
            await self.supervisor.unwatch(info.port)
            if self.spawner.has(info.port):
                await self.spawner.stop(info.port)
            report["stopped"] = True
            report["port_free"] = self.port_free(self.spawner.host, info.port)
            if not report["port_free"]:
                _log.warn("port {port} is still taken after its server was stopped", port=info.port)
        final.update(removing=False, pid=None, eligible=False, supervision=None)
        final["removal"] = report
        self._log_change(
            "removed", server_id, actor,
            ("drained" if drained else f"drain timed out with {member.in_flight} in flight")
            + (", process stopped" if info.managed else ""),
        )
        await self._persist()
        return final

    def _wait_drained(self, member: Member, timeout: float) -> Deferred:
        """
        Fires with True once C{member} has no request in flight, or with
        False after C{timeout} seconds.  Event-driven: it listens to the
        pool's lease releases rather than polling.
        """
        if member.in_flight <= 0:
            return succeed(True)
        unsubscribe: List[Callable[[], None]] = []
        timer: List[Any] = []

        def finish(drained: bool) -> None:
            if waiting.called:
                return
            if timer and timer[0].active():
                timer[0].cancel()
            # Unsubscribing from inside the pool's subscriber loop would
            # make it skip the next subscriber: do it on the next turn.
            if unsubscribe:
                self.clock.callLater(0, unsubscribe.pop())
            waiting.callback(drained)

        def cancel(_: Deferred) -> None:
            if timer and timer[0].active():
                timer[0].cancel()
            if unsubscribe:
                unsubscribe.pop()()

        waiting: Deferred = Deferred(cancel)

        def released(released_member: Member, outcome: Any) -> None:
            if released_member is member and member.in_flight <= 0:
                finish(True)

        unsubscribe.append(self.pool.subscribe_outcomes(released))
        timer.append(self.clock.callLater(timeout, finish, False))
        self._waits.add(waiting)
        waiting.addBoth(lambda result: (self._waits.discard(waiting), result)[1])
        return waiting

    # -- internals ----------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopping:
            raise ApiError(503, "heimdall is shutting down")

    def _registered_on(self, port: int) -> Optional[str]:
        """
        The id of a server registered on local port C{port}, if any.
        """
        if port in self._reserved:
            return f"{self.spawner.host}:{port} (being restored)"
        for member in self.pool.members():
            info = self._info(member)
            if member.backend.port == port and (info.managed or _is_local(member.backend.host)
                                                or member.backend.host == self.spawner.host):
                return member.id
        if self.spawner.has(port):
            return f"{self.spawner.host}:{port} (starting)"
        return None

    def _taken_ports(self) -> Set[int]:
        taken = set(self._reserved)
        for member in self.pool.members():
            if _is_local(member.backend.host) or member.backend.host == self.spawner.host:
                taken.add(member.backend.port)
        return taken

    async def _start(self, port: Optional[int]) -> SpawnedServer:
        """
        Spawn a server and wait for it to be ready (ready check included).
        """
        if port is None:
            server = await self.spawner.spawn(None, avoid=self._taken_ports())
        else:
            server = await self.spawner.spawn(port)
        if self.ready_check is not None:
            try:
                await self.ready_check(server)
            except Exception as e:
                if self.spawner.has(server.port):
                    await self.spawner.stop(server.port)
                raise SpawnError(server.port, f"did not pass its ready check: {e}", server.recent_output()) from None
        return server

    def _register_spawned(
        self, server: SpawnedServer, weight: int, backup: bool, admin: AdminState = AdminState.READY
    ) -> ServerInfo:
        backend = Backend.from_url(server.url, weight)
        self.pool.add(backend, admin)
        # The ready check was its first health check, and it passed.
        self.pool.set_health(backend.id, Health.UP, "ready check passed")
        info = ServerInfo(
            backend.id, server.port, managed=True, backup=backup, pid=server.pid, started_at=server.started_at
        )
        self._servers[backend.id] = info
        self.supervisor.watch(server)
        return info

    def _managed_on(self, port: int) -> Optional[ServerInfo]:
        for info in self._servers.values():
            if info.managed and info.port == port:
                return info
        return None

    def _supervision_event(self, event: SupervisionEvent) -> None:
        info = self._managed_on(event.port)
        if info is None or self.pool.get(info.id) is None:
            return
        if event.kind == "exited":
            reason = f"process exited with status {event.exit_code}"
            # Down at once: no need to wait for a health probe to notice.
            self.pool.set_health(info.id, Health.DOWN, reason)
            self._servers[info.id] = attrs.evolve(info, pid=None)
            _log.warn(
                "ALERT backend {id}: spawned process {pid} exited with status {status}",
                id=info.id, pid=event.pid, status=event.exit_code, alert="process_exited",
            )
        elif event.kind == "restart_scheduled":
            _log.info("restarting {id} in {delay:.3g} s (attempt {attempt})", id=info.id, delay=event.delay,
                      attempt=event.attempt)
        elif event.kind == "restarted":
            server = self.spawner.get(event.port) if hasattr(self.spawner, "get") else None
            self._servers[info.id] = attrs.evolve(
                info, pid=event.pid, restarts=info.restarts + 1,
                started_at=server.started_at if server is not None else event.at,
            )
            self.pool.set_health(info.id, Health.UP, f"restarted as pid {event.pid}; ready check passed")
            _log.info("backend {id} restarted as pid {pid}", id=info.id, pid=event.pid)
        elif event.kind == "restart_failed":
            self.pool.set_health(info.id, Health.DOWN, f"restart failed: {event.detail}")
            _log.warn("restart of {id} failed: {detail}", id=info.id, detail=event.detail)
        elif event.kind == "gave_up":
            self.pool.set_health(info.id, Health.DOWN, f"not restarted any more: {event.detail}")
            _log.error("ALERT backend {id}: gave up restarting it: {detail}", id=info.id, detail=event.detail,
                       alert="restart_gave_up")
        elif event.kind == "not_restarted":
            _log.warn("backend {id} is left down: {detail}", id=info.id, detail=event.detail)

    def snapshot(self) -> State:
        """
        The state file's content for the pool as it is now.
        """
        servers: List[ServerRecord] = []
        changes: List[ConfigChange] = []
        present = set()
        for member in self.pool.members():
            info = self._info(member)
            present.add(member.id)
            config_entry = self._config_ids.get(member.id)
            if config_entry is not None and not info.managed:
                change = ConfigChange(
                    member.id,
                    weight=member.weight if member.weight != config_entry.backend.weight else None,
                    admin=member.admin.value if member.admin is not AdminState.READY else None,
                    backup=info.backup if info.backup != config_entry.backup else None,
                )
                if not change.is_empty:
                    changes.append(change)
                continue
            servers.append(
                ServerRecord(
                    url=member.backend.url,
                    weight=member.weight,
                    backup=info.backup,
                    admin=member.admin.value,
                    managed=info.managed,
                )
            )
        removed = tuple(backend_id for backend_id in self._config_ids if backend_id not in present)
        return State(tuple(servers), tuple(changes), removed)

    async def _persist(self) -> None:
        try:
            await self.writer.save(self.snapshot())
        except Exception as e:
            raise ApiError(
                500,
                "the change was applied but could not be saved to the state file",
                {"state_file": self.writer.path, "problem": str(e)},
            ) from None

    def _log_change(self, action: str, server_id: str, actor: Actor, detail: str) -> None:
        _log.info(
            "manager: {action} {server_id} ({detail}) by {client} ({authentication})",
            action=action,
            server_id=server_id,
            detail=detail,
            client=actor.client,
            authentication="authenticated" if actor.authenticated else "unauthenticated",
            authenticated=actor.authenticated,
            change=action,
        )

    def stop(self) -> Deferred:
        """
        heimdall is stopping: refuse new changes, end waits for draining
        (their requests get 503), stop supervision, wait for pending state
        writes.  The spawner stops the processes afterwards.
        """
        self._stopping = True
        for waiting in list(self._waits):
            waiting.cancel()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.supervisor.close()
        await self.writer.flush()


def _health(member: Member) -> Dict[str, Any]:
    """
    A member's health as the API shows it.  The last check's fields come
    from the active health checks where they record them on the member (a
    C{last_check} with C{at}, C{result} or C{ok}, C{latency}, C{detail};
    or flat C{last_check_at}, C{last_check_result}, ... fields); null
    until a check ran.
    """
    check = getattr(member, "last_check", None)
    if check is not None:
        at, result, latency, detail = (getattr(check, name, None) for name in ("at", "result", "latency", "detail"))
        if result is None and isinstance(getattr(check, "ok", None), bool):
            result = "pass" if check.ok else "fail"
    else:
        at = getattr(member, "last_check_at", None)
        result = getattr(member, "last_check_result", None)
        latency = getattr(member, "last_check_latency", None)
        detail = getattr(member, "last_check_detail", None)
    if result is not None and not isinstance(result, (str, bool)):
        result = getattr(result, "value", str(result))
    return {
        "status": member.health.value,
        "reason": member.health_reason or None,
        "last_check_at": _iso(at) if isinstance(at, (int, float)) else at,
        "last_check_result": result,
        "last_check_latency": latency,
        "last_check_detail": detail or None,
    }


def _observe(deferred: Deferred) -> Deferred:
    """
    A new Deferred with C{deferred}'s eventual result, leaving
    C{deferred}'s own result alone for other observers.
    """
    observer: Deferred = Deferred()

    def relay(result: Any) -> Any:
        if isinstance(result, Failure):
            observer.errback(result)
            return None
        observer.callback(result)
        return result

    deferred.addBoth(relay)
    return observer


# -- access control ---------------------------------------------------------------


def resolve_token(manager_config: Any, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """
    The bearer token the manager requires: C{manager.token}, or the value
    of the environment variable C{manager.token_env}, or None.

    @raise ConfigError: C{token_env} names a variable that is not set or
        is empty.
    """
    if manager_config.token is not None:
        return manager_config.token
    if manager_config.token_env is None:
        return None
    environ = os.environ if environ is None else environ
    value = environ.get(manager_config.token_env, "")
    if not value:
        raise ConfigError(
            "manager.token_env",
            f"the environment variable {manager_config.token_env} is not set or is empty",
        )
    return value


def _endpoint_fields(description: str) -> Tuple[List[str], Dict[str, str]]:
    """
    The positional and named fields of an endpoint string (config.py's
    parser, which knows the backslash escapes).
    """
    from heimdall.config.fields import endpoint_fields as fields_of

    positional: List[str] = []
    named: Dict[str, str] = {}
    for key, value in fields_of(description):
        if key is None:
            positional.append(value)
        else:
            named[key] = value
    return positional, named


def listens_on_loopback(endpoint: str) -> bool:
    """
    Whether a server endpoint string only accepts connections from this
    machine: a TCP/SSL endpoint whose interface is a loopback address (or
    C{localhost}), or a UNIX socket.  No interface means every interface.
    """
    positional, named = _endpoint_fields(endpoint)
    kind = positional[0] if positional else ""
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False  # systemd and others: cannot tell, so assume exposed
    interface = named.get("interface")
    if interface is None:
        # tcp:PORT:INTERFACE is also accepted positionally (port first).
        interface = positional[2] if len(positional) > 2 else ""
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(manager_config: Any, token: Optional[str]) -> None:
    """
    Refuse a manager that anyone on the network could reach without a
    token.

    @raise ConfigError: naming C{manager.listen} and saying why.
    """
    if token is None and not listens_on_loopback(manager_config.listen):
        raise ConfigError(
            "manager.listen",
            f"{manager_config.listen} is not a loopback address, and no manager.token or "
            "manager.token_env is set: anyone who can reach it could change the backends. "
            "Set a token, or listen on 127.0.0.1",
        )


# -- HTTP -----------------------------------------------------------------------------


@attrs.frozen
class Route:
    """
    One endpoint: a path (C{{server}} stands for one path segment), its
    methods with a one-line summary each (for C{GET /}), and the query
    parameters it takes.
    """

    path: str
    methods: Tuple[str, ...]
    handler: str
    summaries: Tuple[str, ...]
    query: Tuple[str, ...] = ()


ROUTES: Tuple[Route, ...] = (
    Route("/", ("GET",), "index", ("this help",)),
    Route("/status", ("GET",), "status", ("version, uptime, strategy and counts",)),
    Route("/openapi.json", ("GET",), "openapi", ("the OpenAPI 3.1 description of this API",)),
    Route("/metrics", ("GET",), "metrics", ("Prometheus metrics (text exposition, or OpenMetrics on request)",)),
    Route("/servers/list", ("GET",), "list", ("every server, as a JSON array",)),
    Route("/servers/get", ("GET",), "get", ("one server: ?port=N or ?id=HOST:PORT",), ("port", "id")),
    Route(
        "/servers/add", ("POST",), "add",
        (
            "no body: spawn a server on the lowest free port and wait until it is ready; "
            '{"port": N}: spawn on that port; {"url": "http://host:port"}: register an existing server; '
            'optional "weight" (0-1000) and "backup"',
        ),
    ),
    Route(
        "/servers/remove", ("DELETE",), "remove",
        ("drain, deregister and (if spawned) stop a server: ?port=N or ?id=HOST:PORT",), ("port", "id"),
    ),
    Route(
        "/servers/update", ("POST",), "update",
        (
            'change a server (?port=N or ?id=): {"weight": N, "admin": "ready"|"draining"|"maintenance", '
            '"backup": true|false}',
        ),
        ("port", "id"),
    ),
    Route(
        "/servers/{server}", ("GET", "PATCH", "DELETE"), "server",
        (
            "one server, by id (HOST:PORT) or port",
            "change it, as POST /servers/update",
            "remove it, as DELETE /servers/remove",
        ),
    ),
)

_FIXED = {route.path: route for route in ROUTES if "{" not in route.path}
_BY_SERVER = next(route for route in ROUTES if route.path == "/servers/{server}")

_ADD_FIELDS = ("url", "port", "weight", "backup")
_UPDATE_FIELDS = ("weight", "admin", "backup")


def openapi_document() -> Dict[str, Any]:
    """
    The OpenAPI 3.1 document shipped as C{heimdall/manager/openapi.json} (a fresh
    copy each time).
    """
    return json.loads(_openapi_text())


@functools.lru_cache(maxsize=1)
def _openapi_text() -> str:
    # Read once: no file access on the reactor thread per request.
    from importlib.resources import files

    return (files("heimdall.manager") / "openapi.json").read_text(encoding="utf-8")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(field: str, problem: str) -> ApiError:
    return ApiError(400, f"{field}: {problem}", {"field": field, "problem": problem})


def _unknown_field(field: str, known: Sequence[str], where: str = "field") -> ApiError:
    close = difflib.get_close_matches(field, list(known), n=1)
    detail: Dict[str, Any] = {"field": field, "known": list(known)}
    if close:
        detail["suggestion"] = close[0]
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return ApiError(400, f"unknown {where} {field!r}{hint}", detail)


def _parse_port(text: str, field: str = "port") -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _invalid(field, "must be a port number from 1 to 65535")
    return int(text)


def _client(request: Any) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return getattr(address, "name", None) or "unix"
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ManagerRequest(server.Request):
    """
    A request whose body may not exceed L{MAX_BODY_BYTES}.  A larger one is
    answered 413 (JSON) as soon as that is known, from Content-Length
    before any of it is read or while a chunked body arrives, and the
    connection is closed; no byte over the limit is kept.
    """

    body_too_large = False
    _received = 0

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > MAX_BODY_BYTES:
            self._reject_body()
            length = 0  # nothing is kept
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > MAX_BODY_BYTES:
            self._reject_body()
            return
        super().handleContentChunk(data)

    def _reject_body(self) -> None:
        self.body_too_large = True
        body = _json_bytes(_error_payload("request body too large", {"limit": MAX_BODY_BYTES}))
        self.channel.transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.channel.transport.loseConnection()

    def process(self) -> None:
        if self.body_too_large:
            return  # already answered
        super().process()


class ManagerChannel(http.HTTPChannel):
    """
    Sends no C{100 Continue} after a L{ManagerRequest} has refused its
    body: that interim answer would follow the final one.
    """

    def _send100Continue(self) -> None:
        if self.transport is not None and not self.transport.disconnecting:
            super()._send100Continue()


class ManagerSite(server.Site):
    """
    The manager's site: L{ManagerRequest}s, no form parsing, no
    per-request access log (changes are logged by the manager).
    """

    protocol = ManagerChannel
    requestFactory = ManagerRequest
    noisy = False

    def __init__(self, resource: Resource, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)

    def log(self, request: Any) -> None:
        pass


def _error_payload(message: str, detail: Any = None) -> Dict[str, Any]:
    return {"error": message, "detail": detail}


def _json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode("utf-8")


@attrs.frozen
class RawBody:
    """
    A response that is not JSON (the metrics exposition).
    """

    body: bytes
    content_type: str


class ManagerResource(Resource):
    """
    The manager API, served at the root of its own site.

    @param manager: the L{ServerManager}.
    @param token: the bearer token every request must carry, or None.
    """

    isLeaf = True

    def __init__(self, manager: ServerManager, token: Optional[str] = None, metrics=None) -> None:
        """
        @param metrics: renders C{GET /metrics}: a callable taking the
            request's C{Accept} header and returning C{(body, content_type)}
            (see L{heimdall.observe.metrics.exposition}); without it, 404.
        """
        super().__init__()
        self.manager = manager
        self.token = token
        self.metrics = metrics

    def render(self, request: Any) -> Any:
        gone: List[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        handling = ensureDeferred(self._handle(request))

        def respond(result: Tuple[int, Any, Sequence[Tuple[str, str]]]) -> None:
            if gone:
                return
            status, payload, headers = result
            self._write(request, status, payload, headers)

        def failed(failure: Failure) -> None:
            if failure.check(ApiError):
                error = failure.value
                respond((error.status, _error_payload(error.message, error.detail), error.headers))
            elif failure.check(CancelledError):
                respond((503, _error_payload("heimdall is shutting down"), ()))
            else:
                _log.failure("manager request {method} {path} failed", failure,
                             method=request.method, path=request.uri)
                respond((500, _error_payload("internal error", str(failure.value)), ()))

        handling.addCallbacks(respond, failed)
        handling.addErrback(lambda failure: _log.failure("writing a manager response failed", failure))
        return server.NOT_DONE_YET

    @staticmethod
    def _write(request: Any, status: int, payload: Any, headers: Sequence[Tuple[str, str]]) -> None:
        if isinstance(payload, RawBody):
            body, content_type = payload.body, payload.content_type.encode("ascii")
        else:
            body, content_type = _json_bytes(payload), b"application/json"
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        for name, value in headers:
            request.setHeader(name.encode("ascii"), value.encode("utf-8"))
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()

    # -- one request ------------------------------------------------------------

    async def _handle(self, request: Any) -> Tuple[int, Any, Sequence[Tuple[str, str]]]:
        body = self._body(request)
        authenticated = self._authenticate(request)
        actor = Actor(_client(request), authenticated)
        route, server_ref = self._route(request.path)
        method = request.method.decode("ascii", "replace")
        allowed = route.methods + (("HEAD",) if "GET" in route.methods else ())
        if method not in allowed:
            raise ApiError(
                405,
                f"method {method} is not allowed on {route.path}",
                {"method": method, "allowed": list(allowed)},
                headers=[("Allow", ", ".join(allowed))],
            )
        if method == "HEAD":
            method = "GET"
        query = self._query(request, route)
        manager = self.manager
        handler = route.handler
        if handler == "index":
            return 200, self._index(), ()
        if handler == "status":
            return 200, manager.status(), ()
        if handler == "openapi":
            return 200, openapi_document(), ()
        if handler == "metrics":
            if self.metrics is None:
                raise ApiError(404, "metrics are not enabled", None)
            accept = request.getHeader(b"accept")
            body, content_type = self.metrics(accept.decode("latin-1") if accept else "")
            return 200, RawBody(body, content_type), ()
        if handler == "list":
            return 200, manager.servers(), ()
        if handler == "add":
            return await self._add(actor, body)
        if handler == "server":
            server_id = self._server_id(server_ref)
            if method == "GET":
                return 200, manager.describe(server_id), ()
            if method == "PATCH":
                return 200, await self._update(actor, server_id, body), ()
            return 200, await manager.remove(actor, server_id), ()
        server_id = manager.find(query.get("port"), query.get("id"))
        if handler == "get":
            return 200, manager.describe(server_id), ()
        if handler == "remove":
            return 200, await manager.remove(actor, server_id), ()
        return 200, await self._update(actor, server_id, body), ()

    def _body(self, request: Any) -> bytes:
        content = request.content
        if content is None:
            return b""
        content.seek(0, 2)
        size = content.tell()
        if size > MAX_BODY_BYTES or getattr(request, "body_too_large", False):
            raise ApiError(413, "request body too large", {"limit": MAX_BODY_BYTES})
        content.seek(0)
        return content.read()

    def _authenticate(self, request: Any) -> bool:
        if self.token is None:
            return False
        challenge = [("WWW-Authenticate", 'Bearer realm="heimdall manager"')]
        header = request.getHeader(b"authorization")
        if header is None:
            raise ApiError(401, "a bearer token is required", None, challenge)
        scheme, _, presented = header.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode("utf-8", "replace"), self.token.encode("utf-8")
        ):
            raise ApiError(401, "invalid bearer token", None, challenge)
        return True

    @staticmethod
    def _route(raw_path: bytes) -> Tuple[Route, Optional[bytes]]:
        path = raw_path.decode("latin-1")
        route = _FIXED.get(path)
        if route is not None:
            return route, None
        if path.startswith("/servers/"):
            rest = raw_path[len(b"/servers/"):]
            if rest and b"/" not in rest:
                return _BY_SERVER, rest
        raise ApiError(
            404, "no such endpoint", {"path": path, "endpoints": [route.path for route in ROUTES]}
        )

    def _server_id(self, reference: Optional[bytes]) -> str:
        assert reference is not None
        try:
            text = unquote(reference.decode("ascii"), errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise _invalid("server", "must be a server id (HOST:PORT) or a port number") from None
        if text.isascii() and text.isdigit():
            if len(text) > 5 or not 1 <= int(text) <= 65535:
                # A path that names no server: not found, like any other.
                raise ApiError(404, f"no server {text}", {"server": text})
            return self.manager.find(port=int(text))
        return self.manager.find(server_id=text)

    @staticmethod
    def _query(request: Any, route: Route) -> Dict[str, Any]:
        values: Dict[str, Any] = {}
        for raw_name, raw_values in (request.args or {}).items():
            name = raw_name.decode("utf-8", "replace")
            if name not in route.query:
                raise _unknown_field(name, route.query, "query parameter")
            if len(raw_values) != 1:
                raise _invalid(name, "must be given once")
            try:
                text = raw_values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid(name, "must be UTF-8 text") from None
            values[name] = _parse_port(text) if name == "port" else text
            if name == "id" and not text:
                raise _invalid("id", "must not be empty")
        if route.query and not values:
            raise ApiError(
                400, "a server is required: ?port=N or ?id=HOST:PORT", {"field": "port", "problem": "is required"}
            )
        return values

    @staticmethod
    def _json_object(body: bytes, required: bool) -> Optional[Dict[str, Any]]:
        if not body.strip():
            if required:
                raise ApiError(400, "a JSON object body is required", {"problem": "empty body"})
            return None
        try:
            data = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise ApiError(400, "malformed JSON: the body is not UTF-8", None) from None
        except _DuplicateKey as e:
            raise _invalid(str(e), "is given twice") from None
        except json.JSONDecodeError as e:
            raise ApiError(
                400, f"malformed JSON: {e.msg}", {"line": e.lineno, "column": e.colno, "problem": e.msg}
            ) from None
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"malformed JSON: {e}", None) from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", {"problem": f"got {type(data).__name__}"})
        return data

    async def _add(self, actor: Actor, body: bytes) -> Tuple[int, Any, Sequence[Tuple[str, str]]]:
        data = self._json_object(body, required=False) or {}
        for name in data:
            if name not in _ADD_FIELDS:
                raise _unknown_field(name, _ADD_FIELDS)
        weight = data.get("weight", 1)
        if not _is_int(weight) or not 0 <= weight <= 1000:
            raise _invalid("weight", "must be an integer from 0 to 1000")
        backup = data.get("backup", False)
        if not isinstance(backup, bool):
            raise _invalid("backup", "must be true or false")
        if "url" in data:
            if "port" in data:
                raise ApiError(
                    400, 'give "url" (an existing server) or "port" (spawn one), not both', {"field": "port"}
                )
            url = data["url"]
            if not isinstance(url, str):
                raise _invalid("url", 'must be a URL string like "http://10.0.0.5:8080"')
            described = await self.manager.add_external(actor, url, weight, backup)
        else:
            port = data.get("port")
            if "port" in data and (not _is_int(port) or not 1 <= port <= 65535):
                raise _invalid("port", "must be a port number from 1 to 65535")
            described = await self.manager.add_spawned(actor, port, weight, backup)
        location = "/servers/get?id=" + quote(described["id"], safe=":[]")
        return 201, described, [("Location", location)]

    async def _update(self, actor: Actor, server_id: str, body: bytes) -> Dict[str, Any]:
        data = self._json_object(body, required=True)
        assert data is not None
        for name in data:
            if name not in _UPDATE_FIELDS:
                raise _unknown_field(name, _UPDATE_FIELDS)
        if not data:
            raise ApiError(400, "nothing to change: give weight, admin or backup", {"known": list(_UPDATE_FIELDS)})
        weight = data.get("weight")
        if weight is not None and (not _is_int(weight) or not 0 <= weight <= 1000):
            raise _invalid("weight", "must be an integer from 0 to 1000")
        admin_text = data.get("admin")
        admin = None
        if admin_text is not None:
            try:
                admin = AdminState(admin_text)
            except ValueError:
                raise _invalid("admin", 'must be "ready", "draining" or "maintenance"') from None
        backup = data.get("backup")
        if backup is not None and not isinstance(backup, bool):
            raise _invalid("backup", "must be true or false")
        if "weight" in data and weight is None or "admin" in data and admin_text is None or (
            "backup" in data and backup is None
        ):
            raise ApiError(400, "fields must not be null", {"problem": "null value"})
        return await self.manager.update(actor, server_id, weight=weight, admin=admin, backup=backup)

    def _index(self) -> Dict[str, Any]:
        lines = []
        for route in ROUTES:
            for method, summary in zip(route.methods, route.summaries):
                lines.append(f"{method} {route.path} - {summary}")
        return {
            "name": "heimdall manager",
            "version": __version__,
            "endpoints": lines,
            "auth": "Authorization: Bearer TOKEN" if self.token is not None else None,
            "docs": "/openapi.json",
        }
