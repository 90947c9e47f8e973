"""
Applying a reload (SIGHUP, C{POST /reload}).

L{Reloader.reload} reads the config file again (L{ConfigFile}) and
refuses one that fails validation: the error names the field path, it is
logged, and the running config stays.  A valid one is applied as a diff
(L{heimdall.reload.diff}):

  1. everything that can still fail is done first, changing nothing that
     runs: new services are built (their state files read), moved
     listening endpoints are bound (L{heimdall.reload.listeners}), the TLS
     certificates are read again; a failure undoes this step and refuses
     the reload;
  2. then, in one reactor turn (so between two requests): each service's
     members change (L{apply_members}: backends that stay are the same
     pool members, with their connections, health and counters; removed
     ones drain; new ones get no request before their first health check
     when checks are on), changed services take their new settings, new
     ones start, and the router swaps to the new routes and services;
  3. the old ports close; removed backends and services drain in the
     background (requests in flight finish, then they leave).

Runtime changes made through the manager (its state file) are laid over
the new config exactly as at start-up (L{heimdall.manager.overlay}): a
reload gives what a restart with the new file would give, without
dropping a request.  The manager's own port and settings, logs, alerts
and the other keys L{heimdall.reload.diff.ConfigDiff.restart_needed}
lists need a restart: a reload logs that they changed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import attrs
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, gatherResults, succeed
from twisted.logger import Logger

from heimdall.clock import iso_timestamp
from heimdall.config.services import ServiceConfig, service_configs
from heimdall.errors import ConfigError, ConfigRejected, ManagerStopping, ReloadUnavailable
from heimdall.manager.draining import wait_drained
from heimdall.manager.overlay import MemberSpec, overlay
from heimdall.manager.servers import Actor, ServerManager
from heimdall.manager.services import ServiceManagers
from heimdall.reload.diff import ConfigDiff, MembersDiff, diff_configs, diff_members
from heimdall.reload.source import ConfigFile, LoadedConfig
from heimdall.routing.router import Routing
from heimdall.routing.table import RouteTable
from heimdall.tls.client import load_backend_tls

__all__ = ["RELOAD_ACTOR", "BuiltService", "Reloader", "ServiceFactory", "apply_members", "getattr_path"]

_log = Logger()

#: Who the manager's log names for changes a reload makes.
RELOAD_ACTOR = Actor("reload", True)
#: Who asked for a reload by signal.
SIGHUP_ACTOR = Actor("SIGHUP", True)


def _background(d: Deferred, what: str) -> Deferred:
    return d.addErrback(lambda failure: _log.failure("reload: {what} failed", failure, what=what))


def _spec(member: Any) -> MemberSpec:
    return MemberSpec(member.backend, member.admin, member.backup, member.max_connections)


def _checked(settings: ServiceConfig, backend_id: str) -> bool:
    return settings.health.for_backend(backend_id).type != "none"


def first_checks(pool: Any, backend_ids: Sequence[str], timeout: float, clock: Any) -> Deferred:
    """
    Fires once each of C{backend_ids} has had its first active check (or
    left the pool), or after C{timeout} seconds.  Event-driven: the end
    of L{Member.checking} is a pool event.
    """
    waiting: Deferred = Deferred()

    def settled() -> bool:
        return all(getattr(pool.get(backend_id), "checking", False) is False for backend_id in backend_ids)

    def finish(_=None) -> None:
        if not waiting.called and (_ is False or settled()):
            unsubscribe()
            if timer.active():
                timer.cancel()
            waiting.callback(None)

    unsubscribe = pool.subscribe(finish)
    timer = clock.callLater(timeout, finish, False)
    finish()
    return waiting


def _first_check_bound(settings: ServiceConfig, backend_ids: Sequence[str]) -> float:
    # The first check starts at once (after its jitter) and ends by its timeout.
    checks = [settings.health.for_backend(backend_id) for backend_id in backend_ids]
    return max(check.jitter * check.interval + check.timeout for check in checks) + 1.0


def apply_members(
    service: Any, manager: ServerManager, settings: ServiceConfig, checks_run: bool, clock: Any,
    current: Callable[[], bool] = lambda: True,
) -> MembersDiff:
    """
    Give C{service}'s pool the members of C{settings} with the manager's
    runtime changes laid over them (as at start-up), now.  C{checks_run}:
    its health checks run, so that new members wait for their first check
    before they get a request; the removed ones then drain once those
    checks are done (make before break: a service whose backends all
    change keeps serving), unless C{current()} says a newer reload came.
    """
    # Removals an earlier reload deferred give way to this one's diff.
    manager.leaving.clear()
    runtime = manager.snapshot()
    manager.set_config_backends(settings.backends)
    layered = overlay(settings.backends, runtime)
    # Spawned servers keep running as they are; removals under way go on.
    spawned = {record.id for record in layered.to_start}
    present = [
        _spec(m) for m in service.pool.members() if m.id not in spawned and manager.removal(m.id) is None
    ]
    diff = diff_members(present, layered.members)
    for change in diff.changed:
        update = manager.update(
            RELOAD_ACTOR, change.id, weight=change.weight, admin=change.admin, backup=change.backup,
            max_connections=change.max_connections,
        )
        _background(ensureDeferred(update), f"changing {change.id}")
    # The same host:port with another URL: out first, in once it is out.
    replaced = {spec.id for spec in diff.added} & set(diff.removed)
    for server_id in sorted(replaced):
        _background(manager.remove(RELOAD_ACTOR, server_id), f"removing {server_id}")
    # Members still on their way in: back once their removal is over.
    rejoining: List[Deferred] = []
    for spec in diff.added:
        checking = checks_run and _checked(settings, spec.id)
        leaving = manager.removal(spec.id)
        if leaving is None:
            manager.add_member(spec, checking)
        else:
            def rejoin(_, spec=spec, checking=checking):
                if service.pool.get(spec.id) is None:
                    manager.add_member(spec, checking)

            rejoining.append(_background(leaving.addBoth(rejoin), f"adding {spec.id}"))
    leaving = [server_id for server_id in diff.removed if server_id not in replaced]

    def remove(_=None) -> None:
        if not current():
            return
        manager.leaving.difference_update(leaving)
        for server_id in leaving:
            if service.pool.get(server_id) is not None:
                _background(manager.remove(RELOAD_ACTOR, server_id), f"removing {server_id}")

    def new_ones_checked(_=None) -> Deferred:
        # Every wanted member still waiting for its first check: this
        # reload's and an earlier one's.
        checking = [m.id for m in service.pool.members() if m.checking and m.id not in leaving]
        if not checking:
            return succeed(None)
        return first_checks(service.pool, checking, _first_check_bound(settings, checking), clock)

    pending = rejoining or any(m.checking for m in service.pool.members())
    if leaving and pending:
        manager.leaving.update(leaving)
        waiting = gatherResults(rejoining).addCallback(new_ones_checked) if rejoining else new_ones_checked()
        _background(waiting.addCallback(remove), "removing backends")
    else:
        remove()
    _background(ensureDeferred(manager.persist()), "saving the state file")
    return diff


@attrs.frozen
class BuiltService:
    """
    A service a reload adds, built but not running: its manager loaded
    with its state file (C{state}, None if it has none), and the managed
    servers it must spawn.
    """

    service: Any
    manager: ServerManager
    to_start: Sequence[Any] = ()
    state: Optional[Any] = None


@attrs.frozen
class ServiceFactory:
    """
    How the composition root makes services, the way start-up does.

    @ivar build: C{build(config, name, checking, tls)} returns a
        L{BuiltService} (members waiting for their first check if
        C{checking}; C{tls}: its L{heimdall.tls.client.BackendTls});
        L{heimdall.manager.statefile.StateFileError} for a bad state file.
    @ivar start: C{start(service, manager)} starts its health checks and
        attaches its metrics; returns the function that undoes that.
    """

    build: Callable[[Any, str, bool, Optional[Any]], BuiltService]
    start: Callable[[Any, ServerManager], Callable[[], Any]]


@attrs.define(eq=False)
class _Prepared:
    """A reload's first step: what was read, built and bound."""

    loaded: LoadedConfig
    diff: ConfigDiff
    built: Dict[str, BuiltService]
    bound: List[Tuple[Any, Any]]
    routes: RouteTable


@attrs.define(eq=False)
class Reloader:
    """
    Reloads heimdall's config (see the module docstring).

    @ivar loaded: the config in effect.
    @ivar source: the file to read again; None: nothing to reload.
    @ivar proxy: the data path's parts (C{services} by name, C{router},
        C{access_log}; L{heimdall.service.Proxy}).
    @ivar stops: per service but C{default}, what undoes its start
        (metrics, health checks); the reloader keeps it current.
    @ivar tls: the TLS port's L{heimdall.tls.server.ServerTls}, or None.
    @ivar listeners: the L{heimdall.reload.listeners.Listener}s by the
        config key of their endpoint (C{listen}, C{tls.listen}).
    @ivar generation: 1 for the config heimdall started with, one more
        per applied reload.
    """

    loaded: LoadedConfig
    source: Optional[ConfigFile]
    proxy: Any
    managers: ServiceManagers
    factory: ServiceFactory
    clock: Any
    stops: Dict[str, Callable[[], Any]] = attrs.field(factory=dict)
    tls: Optional[Any] = None
    listeners: Mapping[str, Any] = attrs.field(factory=dict)
    generation: int = 1
    last_reload: Optional[Dict[str, Any]] = None
    _lock: DeferredLock = attrs.field(init=False, factory=DeferredLock)
    _retiring: Set[Deferred] = attrs.field(init=False, factory=set)
    _stopping: bool = attrs.field(init=False, default=False)
    _applied: int = attrs.field(init=False, default=0)

    def stop(self) -> None:
        """
        heimdall is stopping: no more reloads (L{ManagerStopping}); services
        still draining stop waiting.
        """
        self._stopping = True
        for retiring in list(self._retiring):
            retiring.cancel()

    @property
    def config(self) -> Any:
        return self.loaded.config

    def status(self) -> Dict[str, Any]:
        """
        The loaded config for C{GET /status}: its path, SHA-256, load time
        and generation, and how the last reload went.
        """
        return {**self.loaded.as_dict(), "generation": self.generation, "last_reload": self.last_reload}

    def reload(self, actor: Actor) -> Deferred:
        """
        Reload now (one at a time); fires with a report of what changed.

        @raise ConfigRejected: (the Deferred fails with it) the file is
            invalid or cannot be applied; the running config stays.
        @raise ReloadUnavailable: there is no config file.
        """
        return self._lock.run(lambda: ensureDeferred(self._reload(actor)))

    def hangup(self) -> None:
        """
        SIGHUP: reload; the outcome is logged (a refusal by L{reload}).
        """

        def failed(failure):
            if failure.check(ReloadUnavailable):
                _log.info("SIGHUP received: heimdall was not started from a config file; nothing to reload")
            elif not failure.check(ConfigRejected, ManagerStopping):
                _log.failure("reload on SIGHUP failed", failure)

        self.reload(SIGHUP_ACTOR).addErrback(failed)

    async def _reload(self, actor: Actor) -> Dict[str, Any]:
        if self.source is None:
            raise ReloadUnavailable("heimdall was not started from a config file", None)
        if self._stopping:
            raise ManagerStopping("heimdall is shutting down")
        try:
            prepared = await self._prepare()
        except ConfigRejected as e:
            _log.error("reload by {actor} refused: {problem}; the running config stays",
                       actor=actor.client, problem=e.message)
            self.last_reload = {"at": iso_timestamp(self.clock.seconds()), "by": actor.client, "applied": False,
                                "error": e.message, "detail": e.detail}
            raise
        if self._stopping:
            for listener, port in prepared.bound:
                await listener.abandon(port)
            raise ManagerStopping("heimdall is shutting down")
        report = self._apply(prepared)
        for key, (listener, port) in zip(prepared.diff.listeners, prepared.bound):
            await listener.commit(port, getattr_path(self.config, key))
        self.generation += 1
        self.last_reload = {"at": iso_timestamp(self.clock.seconds()), "by": actor.client, "applied": True}
        report.update(self.status())
        _log.info("config reloaded by {actor} (generation {generation}, sha256 {sha}): {summary}",
                  actor=actor.client, generation=self.generation, sha=(self.loaded.sha256 or "")[:12],
                  summary=_summary(report))
        if prepared.diff.restart_needed:
            _log.warn("reload: these settings changed but apply only after a restart: {keys}",
                      keys=", ".join(prepared.diff.restart_needed))
        return report

    async def _prepare(self) -> _Prepared:
        """
        Step 1: read, validate, build and bind, changing nothing that runs.
        """
        assert self.source is not None
        try:
            loaded = self.source.load(self.clock.seconds)
            new = loaded.config
            diff = diff_configs(self.config, new)
            # Every service's TLS to its https backends, its files read again.
            backend_tls = load_backend_tls(new)
            built = {name: self.factory.build(new, name, True, backend_tls.get(name)) for name in diff.added_services}
            routes = RouteTable.compile(new.routes)
        except ConfigError as e:
            raise ConfigRejected(f"invalid configuration in {self.source.path}: {e}",
                                 {"field": e.path, "problem": e.problem, "config_file": self.source.path}) from None
        except Exception as e:  # a state file of a new service, ...
            raise ConfigRejected(f"cannot apply {self.source.path}: {e}",
                                 {"problem": str(e), "config_file": self.source.path}) from None
        bound: List[Tuple[Any, Any]] = []
        field = "tls"
        try:
            for field in diff.listeners:
                listener = self.listeners[field]
                bound.append((listener, await listener.bind(getattr_path(new, field))))
            field = "tls"
            if self.tls is not None and new.tls.enabled:
                self.tls.reload(new.tls)
        except Exception as e:
            for listener, port in bound:
                await listener.abandon(port)
            problem = e.problem if isinstance(e, ConfigError) else str(e)
            field = e.path if isinstance(e, ConfigError) else field
            raise ConfigRejected(f"cannot apply {self.source.path}: {field}: {problem}",
                                 {"field": field, "problem": problem, "config_file": self.source.path}) from None
        return _Prepared(loaded, diff, built, bound, routes)

    def _apply(self, prepared: _Prepared) -> Dict[str, Any]:
        """
        Step 2, in one reactor turn: members, services, routes.
        """
        new, diff = prepared.loaded.config, prepared.diff
        # Removals deferred by an earlier reload give way to this one's.
        self._applied += 1
        settings = service_configs(new)
        services = self.proxy.services
        members: Dict[str, Dict[str, List[str]]] = {}
        for name, service in list(services.items()):
            if name in diff.removed_services:
                continue
            manager = self.managers.get(name)
            # A strategy set through the manager stays, as at start-up.
            own_strategy = manager.strategy_override is None
            service.reconfigure(settings[name], new, self.clock, strategy=own_strategy)
            if own_strategy:
                manager.strategy_name = settings[name].strategy.name
            diff_ = apply_members(service, manager, settings[name], service.health.running, self.clock,
                                  current=lambda applied=self._applied: self._applied == applied)
            members[name] = _members_report(diff_)
        for name, built in prepared.built.items():
            service, manager = built.service, built.manager
            services[name] = service
            self.managers.add(name, manager)
            self.managers.restore_strategy(name, built.state)
            self.stops[name] = self.factory.start(service, manager)
            _background(ensureDeferred(manager.start_managed(built.to_start)), f"starting {name}'s servers")
            members[name] = {"added": [m.id for m in service.pool.members()], "removed": [], "changed": []}
        retired = [(name, services.pop(name), self.managers.get(name)) for name in diff.removed_services]
        for name, _, _ in retired:
            self.managers.discard(name)
        self.proxy.router.swap(
            Routing(prepared.routes, {name: service.resource for name, service in services.items()})
        )
        for site in (self.proxy.site, self.proxy.tls_site):
            if site is not None:
                site.configure(new.limits, new.timeouts)
        self.loaded = prepared.loaded
        for name, service, manager in retired:
            retiring = ensureDeferred(self._retire(name, service, manager))
            if not retiring.called:
                self._retiring.add(retiring)
                retiring.addBoth(lambda result, d=retiring: (self._retiring.discard(d), result)[1])
            _background(retiring, f"removing service {name}")
        return {"changes": diff.as_dict(), "backends": members}

    async def _retire(self, name: str, service: Any, manager: ServerManager) -> None:
        """
        A removed service: no request reaches it any more; once those in
        flight are done (at most the drain timeout), its spawned servers,
        health checks, metrics and connections stop.  Its state file stays,
        for when it comes back.
        """
        try:
            await gatherResults([
                wait_drained(service.pool, member, manager.drain_timeout, self.clock)
                for member in service.pool.members()
            ])
        finally:
            await manager.stop()
        for server in manager.servers():
            if server["managed"] and manager.spawner.has(server["port"]):
                await manager.spawner.stop(server["port"])
        stop = self.stops.pop(name, None)
        if stop is not None:
            await stop()
        await service.upstream.close_all()
        _log.info("reload: service {name} removed", name=name)


def getattr_path(config: Any, key: str) -> Any:
    """
    C{config}'s value at a dotted C{key} (C{"tls.listen"}).
    """
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _members_report(diff: MembersDiff) -> Dict[str, List[str]]:
    return {
        "added": [spec.id for spec in diff.added],
        "removed": list(diff.removed),
        "changed": [change.id for change in diff.changed],
    }


def _summary(report: Dict[str, Any]) -> str:
    changes = report["changes"]
    parts = []
    for key, label in (("services_added", "services added"), ("services_removed", "services removed")):
        if changes[key]:
            parts.append(f"{label}: {', '.join(changes[key])}")
    if changes["routes_changed"]:
        parts.append("routes changed")
    for name, counts in report["backends"].items():
        moved = {key: len(ids) for key, ids in counts.items() if ids}
        if moved:
            parts.append(f"{name}: " + ", ".join(f"{count} {key}" for key, count in moved.items()))
    if changes["listeners_changed"]:
        parts.append(f"moved: {', '.join(changes['listeners_changed'])}")
    return "; ".join(parts) or "no change"
