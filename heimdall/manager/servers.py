"""
The server manager's domain: what heimdall knows about each server besides
its pool member (spawned by heimdall or not, its process, whether it came
from config.json), and every change made to them.

L{ServerManager} adds, changes, drains and removes backends; spawns, stops
and supervises local servers (L{heimdall.manager.supervisor.Supervisor});
and writes every change to the state file before it reports success.  It
speaks no HTTP: a refusal is a L{heimdall.errors.ManagerError} (not found,
conflict, invalid change, ...) carrying a message and JSON-ready detail,
which the API (L{heimdall.manager.api}) turns into a status and a body.

Nothing here blocks the reactor: spawning, readiness checks, draining and
state-file writes (in a thread) are all asynchronous.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from heimdall import __version__
from heimdall.clock import iso_timestamp
from heimdall.errors import (
    AmbiguousServer,
    InvalidChange,
    ManagerStopping,
    NoSpawnPort,
    ServerConflict,
    ServerDidNotStart,
    ServerNotFound,
    StateNotSaved,
)
from heimdall.manager.deferreds import observe
from heimdall.manager.draining import wait_drained
from heimdall.manager.spawner import NoFreePort, PortInUse, SpawnedServer, SpawnError, is_port_free
from heimdall.manager.overlay import MemberSpec, overlay, snapshot_state
from heimdall.manager.statefile import ServerRecord, State, StateWriter
from heimdall.manager.supervisor import RestartPolicy, SupervisionEvent, Supervisor
from heimdall.pool.pool import AdminState, Backend, BackendPool, Health, Member, is_eligible

__all__ = ["Actor", "ServerInfo", "ServerManager"]

_log = Logger()

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


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

def _is_local(host: str) -> bool:
    return host in _LOCAL_HOSTS


@attrs.define(eq=False)
class ServerManager:
    """
    Adds, changes, drains and removes backends; spawns, supervises and
    stops local servers; persists every change before reporting success.

    Refusals are domain errors (L{heimdall.errors}): L{ServerNotFound},
    L{AmbiguousServer}, L{InvalidChange}, L{ServerConflict},
    L{NoSpawnPort}, L{ServerDidNotStart}, L{ManagerStopping} (shutting
    down) and L{StateNotSaved} (applied, not persisted).

    @ivar pool: the proxy's backend pool.
    @ivar spawner: a L{heimdall.manager.spawner.ServerSpawner} (or a fake with C{spawn(port, avoid)},
        C{stop(port)}, C{has(port)}, C{subscribe_exit}, C{unsubscribe_exit}, C{host}, C{base_port}, C{port_range}).
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
    #: The strategy set at runtime ({"name": ..., options}), kept in the state file; None: the config's.
    strategy_override: Optional[Mapping[str, Any]] = None
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
    #: Ids a reload removes once its new members had their first check:
    #: already out of the state file (L{snapshot}).
    leaving: Set[str] = attrs.field(init=False, factory=set)
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

    def load(self, state: Optional[State], checking: bool = False) -> List[ServerRecord]:
        """
        Fill the pool from config.json's backends and the state file's
        changes, additions and removals (L{overlay}).  Returns the managed
        servers to start with L{start_managed}; their ports are reserved
        meanwhile.  C{checking}: see L{add_member}.
        """
        layered = overlay(self.config_backends, state)
        for spec in layered.members:
            self.add_member(spec, checking)
        self._reserved.update(record.port for record in layered.to_start)
        return list(layered.to_start)

    def add_member(self, spec: MemberSpec, checking: bool = False) -> None:
        """
        Add C{spec} to the pool (at start-up and on reload); with
        C{checking}, it gets no request before its first active check.
        """
        self.pool.add(spec.backend, spec.admin, spec.backup, spec.max_connections, checking=checking)
        self._servers[spec.id] = ServerInfo(spec.id, spec.backend.port, from_config=spec.from_config,
                                            backup=spec.backup, started_at=self.clock.seconds())

    def set_config_backends(self, backends: Sequence[Any]) -> None:
        """
        config.json's backends are now C{backends} (a reload): the state
        file records changes against them from now on.
        """
        self.config_backends = tuple(backends)
        self._config_ids = {entry.backend.id: entry for entry in self.config_backends}
        for server_id, info in list(self._servers.items()):
            self._servers[server_id] = attrs.evolve(info, from_config=server_id in self._config_ids)

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
                self.pool.add(record.backend, AdminState(record.admin), record.backup, record.max_connections)
                self.pool.set_health(record.id, Health.DOWN, f"could not be started: {problem}")
                self._servers[record.id] = ServerInfo(record.id, record.port, managed=True, backup=record.backup)
                self.supervisor.watch_down(record.port, problem)
                continue
            self._reserved.discard(record.port)
            self._register_spawned(
                server, record.weight, record.backup, AdminState(record.admin), record.max_connections
            )
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

        @raise ServerNotFound: there is none.
        @raise AmbiguousServer: a port alone matches several servers on
            different hosts.
        """
        if server_id is not None:
            member = self.pool.get(server_id)
            if member is None:
                raise ServerNotFound(f"no server with id {server_id}", {"id": server_id})
            if port is not None and member.backend.port != port:
                raise ServerNotFound(f"server {server_id} is not on port {port}", {"id": server_id, "port": port})
            return server_id
        matches = [member for member in self.pool.members() if member.backend.port == port]
        if len(matches) > 1:
            local = [m for m in matches if self._info(m).managed or _is_local(m.backend.host)]
            if len(local) == 1:
                return local[0].id
            raise AmbiguousServer(
                f"port {port} is used by several servers; name one with ?id=",
                {"port": port, "ids": [m.id for m in matches]},
            )
        if not matches:
            raise ServerNotFound(f"no server on port {port}", {"port": port})
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
            "max_connections": member.max_connections,
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
            "started_at": iso_timestamp(info.started_at if info.started_at is not None else member.added_at),
            "added_at": iso_timestamp(member.added_at),
            "restarts": info.restarts,
            "supervision": self._supervision(info),
            "removing": server_id in self._removing,
        }

    def _supervision(self, info: ServerInfo) -> Optional[Dict[str, Any]]:
        if not info.managed:
            return None
        described = self.supervisor.describe(info.port)
        if described is not None:
            described["next_restart_at"] = iso_timestamp(described["next_restart_at"])
        return described

    def status(self) -> Dict[str, Any]:
        members = self.pool.members()
        now = self.clock.seconds()

        def count(predicate) -> int:
            return sum(1 for member in members if predicate(member))

        return {
            "name": "heimdall",
            "version": __version__,
            "started_at": iso_timestamp(self.started_at),
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
                raise InvalidChange(
                    f"port {port} is outside the manager's spawn range {first}-{last}",
                    {"field": "port", "first": first, "last": last},
                )
            taken = self._registered_on(port)
            if taken is not None:
                raise ServerConflict(f"port {port} is already registered to {taken}", {"port": port, "id": taken})
        try:
            server = await self._start(port)
        except NoFreePort as e:
            raise NoSpawnPort(
                "no free port in the spawn range",
                {"host": e.host, "first": e.base_port, "last": e.base_port + e.port_range - 1},
            ) from None
        except PortInUse as e:
            raise ServerConflict(f"port {e.port} is in use by another process", {"port": e.port}) from None
        except SpawnError as e:
            raise ServerDidNotStart(
                f"the server did not start: {e.problem}", {"port": e.port, "output": e.output}
            ) from None
        if self._stopping or self.pool.get(Backend.from_url(server.url).id) is not None:
            # Shutting down, or the same id was registered meanwhile.
            await self.spawner.stop(server.port)
            self._check_running()
            raise ServerConflict(f"port {server.port} was registered meanwhile", {"port": server.port})
        info = self._register_spawned(server, weight, backup)
        self.log_change("added", info.id, actor, f"spawned on port {server.port}, pid {server.pid}")
        await self.persist()
        return self.describe(info.id)

    async def add_external(self, actor: Actor, url: str, weight: int = 1, backup: bool = False) -> Dict[str, Any]:
        """
        Register a server heimdall did not start, and persist.
        """
        self._check_running()
        try:
            backend = Backend.from_url(url, weight)
        except ValueError as e:
            raise InvalidChange(f"invalid url: {e}", {"field": "url", "problem": str(e)}) from None
        if self.pool.get(backend.id) is not None:
            raise ServerConflict(f"{backend.id} is already registered", {"id": backend.id, "port": backend.port})
        if _is_local(backend.host) and (backend.port in self._reserved or self.spawner.has(backend.port)):
            raise ServerConflict(f"port {backend.port} is being used for a spawned server", {"port": backend.port})
        self.pool.add(backend, backup=backup)
        self._servers[backend.id] = ServerInfo(
            backend.id, backend.port, from_config=backend.id in self._config_ids, backup=backup,
            started_at=self.clock.seconds(),
        )
        self.log_change("added", backend.id, actor, f"external, weight {backend.weight}")
        await self.persist()
        return self.describe(backend.id)

    async def update(
        self,
        actor: Actor,
        server_id: str,
        weight: Optional[int] = None,
        admin: Optional[AdminState] = None,
        backup: Optional[bool] = None,
        max_connections: Optional[int] = None,
    ) -> Dict[str, Any]:
        """
        Change a server's weight, admin state, backup flag or connection
        limit, and persist.
        """
        self._check_running()
        if server_id in self._removing:
            raise ServerConflict(f"{server_id} is being removed", {"id": server_id})
        member = self.pool.get(server_id)
        if member is None:
            raise ServerNotFound(f"no server with id {server_id}", {"id": server_id})
        changes = []
        if weight is not None and weight != member.backend.weight:
            changes.append(f"weight {member.backend.weight} -> {weight}")
            self.pool.set_weight(server_id, weight)
        if admin is not None and admin is not member.admin:
            changes.append(f"admin {member.admin.value} -> {admin.value}")
            self.pool.set_admin(server_id, admin)
        info = self._info(member)
        if backup is not None and backup != info.backup:
            changes.append(f"backup {info.backup} -> {backup}")
            self._servers[server_id] = attrs.evolve(info, backup=backup)
            self.pool.set_backup(server_id, backup)
        if max_connections is not None and max_connections != member.max_connections:
            changes.append(f"max_connections {member.max_connections} -> {max_connections}")
            self.pool.set_max_connections(server_id, max_connections)
        self.log_change("updated", server_id, actor, ", ".join(changes) or "no change")
        await self.persist()
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
                raise ServerNotFound(f"no server with id {server_id}", {"id": server_id})
            removal = ensureDeferred(self._remove(actor, server_id))
            if not removal.called:
                self._removing[server_id] = removal

                def done(result):
                    self._removing.pop(server_id, None)
                    return result

                removal.addBoth(done)
        return observe(removal)

    def removal(self, server_id: str) -> Optional[Deferred]:
        """
        The removal of C{server_id} in progress (its result, observed), if any.
        """
        removal = self._removing.get(server_id)
        return observe(removal) if removal is not None else None

    async def _remove(self, actor: Actor, server_id: str) -> Dict[str, Any]:
        member = self.pool.get(server_id)
        assert member is not None
        info = self._info(member)
        started = self.clock.seconds()
        if member.admin is not AdminState.DRAINING:
            self.pool.set_admin(server_id, AdminState.DRAINING)
        self.log_change("draining", server_id, actor, f"{member.in_flight} in flight")
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
        self.log_change(
            "removed", server_id, actor,
            ("drained" if drained else f"drain timed out with {member.in_flight} in flight")
            + (", process stopped" if info.managed else ""),
        )
        await self.persist()
        return final

    def _wait_drained(self, member: Member, timeout: float) -> Deferred:
        waiting = wait_drained(self.pool, member, timeout, self.clock)
        # Tracked so that stop() can cancel it.
        self._waits.add(waiting)
        waiting.addBoth(lambda result: (self._waits.discard(waiting), result)[1])
        return waiting

    # -- internals ----------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopping:
            raise ManagerStopping("heimdall is shutting down")

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
        self, server: SpawnedServer, weight: int, backup: bool, admin: AdminState = AdminState.READY, limit: int = 0
    ) -> ServerInfo:
        backend = Backend.from_url(server.url, weight)
        self.pool.add(backend, admin, backup, limit)
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
        The state file's content for the pool as it is now; a server being
        removed (or L{leaving}) is left out: it is on its way out.
        """
        members = [(m, self._info(m)) for m in self.pool.members()
                   if m.id not in self._removing and m.id not in self.leaving]
        return snapshot_state(members, self._config_ids, self.strategy_override)

    async def persist(self) -> None:
        """Save L{snapshot}; L{StateNotSaved} if that fails (the change stays applied)."""
        try:
            await self.writer.save(self.snapshot())
        except Exception as e:
            raise StateNotSaved("the change was applied but could not be saved to the state file",
                                {"state_file": self.writer.path, "problem": str(e)}) from None

    def log_change(self, action: str, server_id: str, actor: Actor, detail: str) -> None:
        """Log a runtime change and who made it (every change the API makes)."""
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
        heimdall is stopping: refuse new changes (L{ManagerStopping}),
        cancel waits for draining (their removals fail with
        L{CancelledError}), stop supervision, wait for pending state
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
    A member's health as the API shows it, from L{Member.health_details}:
    the last check's fields are null until a check ran.
    """
    details = member.health_details()
    check = details["last_check"] or {}
    ok = check.get("ok")
    return {
        "status": details["health"],
        "reason": details["health_reason"] or None,
        "last_check_at": iso_timestamp(check.get("at")),
        "last_check_result": None if ok is None else ("pass" if ok else "fail"),
        "last_check_latency": check.get("latency"),
        "last_check_detail": check.get("detail") or None,
    }
