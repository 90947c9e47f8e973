"""
The running balancer, and the composition root that builds it: the pool,
the proxy site and its listening port, the upstream connections, the
health checks and alerts, the manager API on its own port, the spawned
backends with their supervision and the metrics, started and stopped in
the right order as one Twisted service.

Each part is built by one small function below (L{build_proxy} over the
services of L{heimdall.routing.services}, L{build_manager}, ...) from the config's typed values and
the collaborators it needs; L{HeimdallService} calls them in order and
holds the results.  No logic lives here: what a part does is in its
package.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from heimdall.clock import maybe_global_reactor
from heimdall.config.manager import ManagerConfig
from heimdall.config.model import Config
from heimdall.config.services import DEFAULT_SERVICE, ServiceConfig, service_configs
from heimdall.lifecycle.shutdown import GracefulShutdown
from heimdall.lifecycle.signals import ProcessSignals
from heimdall.manager.auth import check_exposure, resolve_token
from heimdall.manager.events import event_streams
from heimdall.manager.readiness import HttpReadyCheck
from heimdall.manager.servers import ServerManager
from heimdall.manager.services import ServiceManagers, service_state_path
from heimdall.manager.site import ManagerResource, ManagerSite
from heimdall.manager.spawner import ServerSpawner
from heimdall.manager.statefile import State, StateWriter, load_state, run_in_reactor_threads
from heimdall.reload.apply import BuiltService, Reloader, ServiceFactory
from heimdall.reload.listeners import Listener, where
from heimdall.reload.source import ConfigFile, LoadedConfig
from heimdall.manager.supervisor import RestartPolicy
from heimdall.observe.accesslog import AccessLog
from heimdall.observe.logging import install_on_application, reopen_log_files
from heimdall.observe.edge import EdgeMetrics
from heimdall.observe.live import LiveFeed
from heimdall.observe.metrics import Metrics, exposition, observe_requests, undo_all
from heimdall.observe.protection import ProtectionMetrics
from heimdall.pool.pool import BackendPool
from heimdall.proxy.h2 import H2_ENABLED, switching_channel_factory
from heimdall.proxy.limits import ConnectionLimits
from heimdall.proxy.resource import BalancerResource
from heimdall.proxy.site import HeimdallSite
from heimdall.proxy.upstream import UpstreamPool
from heimdall.routing.router import Router, Routing
from heimdall.routing.services import Service, build_service, build_services
from heimdall.routing.table import RouteTable
from heimdall.tls.client import BackendTls, load_backend_tls
from heimdall.tls.server import ServerTls, alpn_protocols

__all__ = [
    "HeimdallService",
    "Preflight",
    "Proxy",
    "build_manager",
    "attach_live",
    "build_live",
    "build_manager_site",
    "build_managers",
    "build_metrics",
    "build_proxy",
    "build_spawner",
    "preflight",
]

_log = Logger()


@attrs.frozen
class Preflight:
    """
    What heimdall checks before it starts, beyond the config file itself.

    @ivar token: the manager's bearer token, or None.
    @ivar states: each service's state file's content, by service name;
        None on a first start.
    @ivar state_path: the C{default} service's state file, as an absolute
        path (the others' are named after it: L{service_state_path}).
    @ivar tls: the TLS port's certificates, read and checked; None without
        a TLS port.
    @ivar backend_tls: each service's TLS to its https backends, its files
        read and checked (L{load_backend_tls}), by service name.
    """

    token: Optional[str]
    states: Mapping[str, Optional[State]]
    state_path: str
    tls: Optional[ServerTls] = None
    backend_tls: Mapping[str, BackendTls] = attrs.field(factory=dict)

    @property
    def state(self) -> Optional[State]:
        """
        The C{default} service's state file's content (None: a first start).
        """
        return self.states.get(DEFAULT_SERVICE)


def preflight(config: Config, environ: Optional[Mapping[str, str]] = None) -> Preflight:
    """
    Resolve the manager's token, refuse a manager exposed without one, read
    every service's state file and the TLS certificates.  (The config's
    sections, health and alerts included, were all checked when it was parsed.)

    @raise heimdall.errors.ConfigError: for the token or the exposure.
    @raise heimdall.manager.statefile.StateFileError: naming the state file, if it
        exists but cannot be read or parsed.
    @raise heimdall.errors.ConfigError: naming a certificate file that
        cannot be read, a key that does not match, an expired certificate
        (with C{allow_expired} false); the same for the backends' C{tls} files.
    """
    token = resolve_token(config.manager, environ)
    check_exposure(config.manager, token)
    tls = ServerTls(config.tls) if config.tls.enabled else None
    # Absolute now: a later change of directory must not move it.
    path = os.path.abspath(config.manager.state_file)
    names = (DEFAULT_SERVICE,) + tuple(name for name in config.services if name != DEFAULT_SERVICE)
    states = {name: load_state(service_state_path(path, name)) for name in names}
    return Preflight(token, states, path, tls, load_backend_tls(config))


# --- Builders: one part each, from config values and collaborators ------------


@attrs.frozen
class Proxy:
    """
    The data path's parts: the services (C{default} first), the access
    log (or None), the router, the site that serves it and the one that
    serves it on the TLS port (None without one: it may speak HTTP/2).
    """

    services: Dict[str, Service]
    access_log: Optional[AccessLog]
    router: Router
    site: HeimdallSite
    tls_site: Optional[HeimdallSite] = None
    #: The client connections of both listeners (limits.max_connections, ...).
    connection_limits: Optional[ConnectionLimits] = None

    @property
    def default(self) -> Service:
        return self.services[DEFAULT_SERVICE]

    @property
    def resource(self) -> BalancerResource:
        """
        The C{default} service's balancing resource.
        """
        return self.default.resource

    @property
    def upstream(self) -> UpstreamPool:
        return self.default.upstream


def build_proxy(config: Config, reactor: Any, backend_tls: Optional[Mapping[str, BackendTls]] = None) -> Proxy:
    """
    The services (C{backend_tls}: how each reaches its https backends), the
    router over them (the config's routes) and the site, with the
    listener's limits and timeouts.
    """
    access_log = (
        AccessLog.open(config.access_log.format, config.access_log.path) if config.access_log.enabled else None
    )
    services = build_services(config, reactor, access_log, backend_tls)
    router = Router(
        Routing(RouteTable.compile(config.routes), {name: service.resource for name, service in services.items()}),
        clock=reactor,
        request_observers=[access_log.observe] if access_log is not None else [],
    )

    def make_site() -> HeimdallSite:
        return HeimdallSite(
            router,
            max_uri_bytes=config.limits.max_uri_bytes,
            max_header_bytes=config.limits.max_header_bytes,
            max_body_bytes=config.limits.max_body_bytes,
            header_timeout=config.timeouts.client_header,
            idle_timeout=config.timeouts.client_idle,
            client_body_timeout=config.timeouts.client_body,
            client_write_timeout=config.timeouts.client_write,
            reactor=reactor,
        )

    tls_site = None
    if config.tls.enabled:
        tls_site = make_site()
        if config.tls.http2 and H2_ENABLED:
            tls_site.protocol = switching_channel_factory()
    site = make_site()
    if config.h2c and H2_ENABLED:
        site.protocol = switching_channel_factory(cleartext=True)
    limits = ConnectionLimits(config.limits.max_connections, config.limits.max_connections_per_client, reactor)
    return Proxy(services, access_log, router, site, tls_site, limits)


def build_spawner(manager_config: ManagerConfig, reactor: Any) -> ServerSpawner:
    return ServerSpawner(
        reactor=reactor,
        host=manager_config.host,
        base_port=manager_config.base_port,
        port_range=manager_config.port_range,
        command=manager_config.command,
        ready_timeout=manager_config.ready_timeout,
        stop_grace=manager_config.stop_grace,
    )


def build_manager(
    config: Config, settings: ServiceConfig, pool: BackendPool, spawner: ServerSpawner, reactor: Any, state_path: str
) -> ServerManager:
    """
    The server manager (domain) of one service (its resolved C{settings}),
    writing its changes to C{state_path}.
    """
    manager_config = config.manager
    ready_check = (
        HttpReadyCheck(reactor, path=manager_config.ready_path, timeout=manager_config.ready_timeout)
        if manager_config.ready_path is not None
        else None
    )
    return ServerManager(
        pool=pool,
        spawner=spawner,
        clock=reactor,
        writer=StateWriter(state_path, run=run_in_reactor_threads(reactor)),
        drain_timeout=manager_config.drain_timeout,
        ready_check=ready_check,
        restart_policy=RestartPolicy.from_config(manager_config.restart),
        config_backends=settings.backends,
        strategy_name=settings.strategy.name,
        info={"listen": {"proxy": config.listen, "manager": manager_config.listen}, "state_file": state_path},
    )


def build_managers(
    config: Config, proxy: Proxy, spawner: ServerSpawner, reactor: Any, preflight_result: Preflight,
    routes: Optional[Callable[[], Any]] = None,
) -> Tuple[ServiceManagers, Dict[str, Any]]:
    """
    Every service's server manager, each loaded with config.json's
    backends and its state file's changes (its strategy applied), and the
    managed servers each must start (spawned when heimdall starts).
    C{routes} gives the routes in effect (C{config}'s by default).
    """
    managers = ServiceManagers(
        {
            name: build_manager(
                config, service_.settings, service_.pool, spawner, reactor,
                service_state_path(preflight_result.state_path, name),
            )
            for name, service_ in proxy.services.items()
        },
        routes=routes or (lambda: config.routes),
    )
    states = preflight_result.states
    to_restore = {name: manager.load(states.get(name)) for name, manager in managers.managers.items()}
    for name in managers.managers:
        managers.restore_strategy(name, states.get(name))
    return managers, to_restore


def build_metrics(
    config: Config, proxy: Proxy, spawner: ServerSpawner, manager: ServerManager, tls: Optional[ServerTls] = None
) -> Tuple[Metrics, Callable[[], None], Callable[[Service], Callable[[], None]]]:
    """
    Prometheus metrics over every part, the function that detaches them,
    and the one that attaches a service but C{default} (at start-up and
    when a reload adds one), returning what detaches it.
    """
    # The server manager holds the strategy name, changed at runtime too.
    metrics = Metrics(strategy_name=lambda: manager.strategy_name)
    default = proxy.default
    detach = metrics.attach(
        default.pool,
        default.resource,
        default.upstream,
        spawner=spawner,
        alerts=default.health.alerts,
        supervisor=manager.supervisor,
        health=default.health.prober,
        router=proxy.router,
    )
    # Protocols, TLS and tunnels: every request of every service, and those
    # heimdall answered itself (the router's).
    resources = [proxy.router, default.resource]
    edge = EdgeMetrics(metrics.registry, tls=tls, tunnels=[getattr(r, "tunnels", None) for r in resources])
    detach_edge = edge.attach(resources)
    # Timeouts and connection limits.
    protection = ProtectionMetrics(metrics.registry, sites=[proxy.site, proxy.tls_site], limits=proxy.connection_limits)
    detach_protection = protection.attach([service.resource for service in proxy.services.values()])

    def attach_service(service: Service) -> Callable[[], None]:
        undo: List[Callable[[], None]] = [metrics.attach_service(
            service.name, service.pool, service.resource, service.upstream, service.health.prober
        )]
        observe_requests(service.resource, edge.observe_request, undo)
        edge.tunnels.append(service.resource.tunnels)
        undo.append(lambda: edge.tunnels.remove(service.resource.tunnels))
        return lambda: undo_all(undo)

    def detach_all() -> None:
        detach_protection()
        detach_edge()
        detach()

    return metrics, detach_all, attach_service


def build_service_factory(
    heimdall: "HeimdallService", attach_metrics: Callable[[Service], Callable[[], None]]
) -> ServiceFactory:
    """
    How a reload builds and starts a service, as start-up does: its parts
    (L{build_service}), its manager loaded with its state file, its health
    checks under C{heimdall} and its metrics.
    """
    reactor, proxy = heimdall.reactor, heimdall.proxy

    def build(config: Config, name: str, checking: bool, tls: Optional[BackendTls]) -> BuiltService:
        settings = service_configs(config)[name]
        service_ = build_service(name, settings, config, reactor, proxy.access_log, tls)
        path = service_state_path(heimdall.preflight_result.state_path, name)
        manager = build_manager(config, settings, service_.pool, heimdall.spawner, reactor, path)
        state = load_state(path)
        return BuiltService(service_, manager, manager.load(state, checking), state)

    def start(service_: Service, manager: ServerManager) -> Callable[[], Any]:
        service_.health.setServiceParent(heimdall)
        detach = attach_metrics(service_)

        def stop():
            detach()
            return service_.health.disownServiceParent()

        return stop

    return ServiceFactory(build, start)


def build_live(
    proxy: Proxy, reactor: Any, started_at: float, generation: Callable[[], int] = lambda: 1
) -> Tuple[LiveFeed, Callable[[], None]]:
    """
    The live feed (C{GET /events}, the dashboard), hearing every request
    through the router, and the function that detaches it.  Services join
    it through L{attach_live}, at start and on reload.
    C{generation}: the config's (L{heimdall.reload.apply.Reloader}).
    """
    sites = [site for site in (proxy.site, proxy.tls_site) if site is not None]
    live = LiveFeed(
        reactor,
        {},
        open_connections=lambda: sum(site.open_connections for site in sites),
        generation=generation,
        started_at=started_at,
    )
    undo: list = []
    observe_requests(proxy.router, live.stats.observe, undo)
    return live, lambda: undo_all(undo)


def attach_live(live: LiveFeed, service_: Service) -> Callable[[], None]:
    """
    Show C{service_} in C{live}: its requests, pool events and alerts;
    returns the function that takes it out again.
    """
    undo: List[Callable[[], None]] = []
    observe_requests(service_.resource, live.stats.observe, undo)
    undo.append(live.add_service(service_.name, service_.pool, service_.health.alerts))
    return lambda: undo_all(undo)


def build_manager_site(
    managers: ServiceManagers, token: Optional[str], metrics: Metrics, reactor: Any, live: Optional[LiveFeed] = None,
    reloader: Any = None,
) -> Tuple[ManagerResource, ManagerSite]:
    """
    The manager API over every service's manager, with the metrics at
    C{/metrics}, the live feed at C{/events} and C{POST /reload}.
    """
    resource = ManagerResource(
        managers.default, token=token, metrics=exposition(metrics.registry), services=managers,
        events=event_streams(live) if live is not None else None, reloader=reloader,
    )
    return resource, ManagerSite(resource, reactor=reactor)


# --- The service ------------------------------------------------------------------


class HeimdallService(service.MultiService):
    """
    heimdall as configured by a L{Config}.  Start order: the proxy port,
    then the spawned backends (each joins the pool when it accepts
    connections).  Stop order: the proxy and TLS ports and their client
    connections (gracefully: L{GracefulShutdown}), the manager, upstream
    connections, spawned backends.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        preflight_result: Optional[Preflight] = None,
        exit_on_failure: bool = False,
        config_file: Optional[ConfigFile] = None,
        loaded: Optional[LoadedConfig] = None,
    ) -> None:
        """
        @param preflight_result: the result of L{preflight}, when the
            caller already ran it (twistd does, to report problems before
            starting); else it runs here and its errors propagate.
        @param exit_on_failure: a failed start ends the process with
            status 1 (twistd); else it stops the reactor if it runs.
        @param config_file: the file C{config} was read from, which SIGHUP
            and C{POST /reload} read again; None: no reload.
        @param loaded: C{config} as read from C{config_file} (its hash).
        """
        super().__init__()
        reactor = maybe_global_reactor(reactor)
        self.reactor = reactor
        self.preflight_result = preflight_result if preflight_result is not None else preflight(config)
        self.exit_on_failure = exit_on_failure
        proxy = build_proxy(config, reactor, self.preflight_result.backend_tls)
        # Not self.services: MultiService's list of child services.
        self.proxy = proxy
        # The default service's parts, by their names from before services.
        self.pool, self.health, self.upstream, self.resource = (
            proxy.default.pool,
            proxy.default.health,
            proxy.upstream,
            proxy.resource,
        )
        self.access_log, self.router, self.site = proxy.access_log, proxy.router, proxy.site
        self.tls_site = proxy.tls_site
        #: The TLS port's certificates (L{ServerTls.reload} re-reads them).
        self.tls = self.preflight_result.tls
        if self.tls is None and config.tls.enabled:
            self.tls = ServerTls(config.tls)
        self.spawner = build_spawner(config.manager, reactor)
        # config.json's backends with the state files' changes, at once;
        # managed servers are spawned when the service starts.
        self.managers, self._to_restore = build_managers(
            config, proxy, self.spawner, reactor, self.preflight_result, routes=lambda: self.config.routes
        )
        self.manager = self.managers.default
        self.metrics, self._detach_metrics, attach_metrics = build_metrics(
            config, proxy, self.spawner, self.manager, self.tls
        )
        factory = build_service_factory(self, self._build_live(attach_metrics))
        # Active checks, outlier detection, alerts and metrics of every service.
        proxy.default.health.setServiceParent(self)
        stops = {
            name: factory.start(service_, self.managers.get(name))
            for name, service_ in proxy.services.items() if name != DEFAULT_SERVICE
        }
        self.listeners = self._build_listeners(config)
        self.reloader = Reloader(
            loaded if loaded is not None else LoadedConfig(config, loaded_at=reactor.seconds()),
            config_file, proxy, self.managers, factory, reactor, stops=stops, tls=self.tls, listeners=self.listeners,
        )
        self.manager_resource, self.manager_site = build_manager_site(
            self.managers, self.preflight_result.token, self.metrics, reactor, self.live, self.reloader
        )
        self.manager_port = None
        self.ready: defer.Deferred = defer.Deferred()
        self.shutdown = GracefulShutdown(reactor, config.timeouts.shutdown_grace)
        #: SIGHUP, SIGUSR1, SIGTERM and SIGINT (heimdall.lifecycle.signals).
        self.signals = ProcessSignals(
            reactor, on_hangup=self.reloader.hangup, on_reopen_logs=self.reopen_logs,
            on_second_stop=self.shutdown.cut_short,
        )

    def _build_listeners(self, config: Config) -> Dict[str, Listener]:
        """
        The proxy's listeners by their config key.  Both count their
        connections in one ConnectionLimits, which pauses their ports at
        C{limits.max_connections}.
        """
        limits = self.proxy.connection_limits
        listeners = {"listen": Listener(self.reactor, limits.wrap(self.site), config.listen, "proxy", limits=limits)}
        if self.tls is not None:
            listeners["tls.listen"] = Listener(
                self.reactor, self.tls.wrap(limits.wrap(self.tls_site)), config.tls.listen, "TLS", limits=limits
            )
        return listeners

    def _build_live(
        self, attach_metrics: Callable[[Service], Callable[[], None]]
    ) -> Callable[[Service], Callable[[], None]]:
        """
        The live feed with the default service in it; returns how a
        service (at start or on reload) joins the metrics and the feed.
        """
        self.live, detach_live = build_live(
            self.proxy, self.reactor, self.manager.started_at, generation=lambda: self.reloader.generation
        )
        detach_default = attach_live(self.live, self.proxy.default)
        self._detach_live = lambda: (detach_default(), detach_live())

        def attach_observers(service_: Service) -> Callable[[], None]:
            undo = [attach_metrics(service_), attach_live(self.live, service_)]
            return lambda: undo_all(undo)

        return attach_observers

    @property
    def config(self) -> Config:
        """
        The config in effect: the last one loaded.
        """
        return self.reloader.config

    @property
    def port(self):
        """
        The proxy's listening port (a reload may move it).
        """
        return self.listeners["listen"].port

    @property
    def tls_port(self):
        listener = self.listeners.get("tls.listen")
        return listener.port if listener is not None else None

    def setServiceParent(self, parent):
        result = super().setServiceParent(parent)
        # Under twistd the parent is the application, whose logger starts
        # after this and uses the observer we set here.
        install_on_application(parent, self.config.log)
        return result

    def reopen_logs(self) -> None:
        """
        Reopen the access log and heimdall's own log files (SIGUSR1).
        """
        if self.access_log is not None:
            self.access_log.reopen()
        reopen_log_files()
        _log.info("log files reopened")

    def startService(self) -> None:
        self.signals.install()
        super().startService()
        self.live.start()
        d = self.listeners["listen"].listen()
        d.addCallback(self._listening)
        d.addCallback(lambda _: self._listen_tls())
        d.addCallback(lambda _: serverFromString(self.reactor, self.config.manager.listen).listen(self.manager_site))
        d.addCallback(self._manager_listening)
        d.addCallback(lambda _: defer.ensureDeferred(self._populate()))
        d.addCallbacks(self.ready.callback, self._start_failed)

    def _listening(self, port) -> None:
        _log.info(
            "heimdall proxy listening on {where} with strategy {strategy}",
            where=where(port),
            strategy=self.config.strategy.name,
        )

    def _listen_tls(self):
        if self.tls is None:
            return None
        d = self.listeners["tls.listen"].listen()

        def listening(port) -> None:
            protocols = ", ".join(p.decode() for p in alpn_protocols(self.config.tls.http2))
            names = "; ".join(",".join(c.names) or c.cert_path for c in self.tls.certificates)
            _log.info("heimdall TLS listening on {where} ({protocols}; {names})",
                      where=where(port), protocols=protocols, names=names)  # fmt: skip

        return d.addCallback(listening)

    def _manager_listening(self, port) -> None:
        self.manager_port = port
        _log.info(
            "heimdall manager listening on {where}{auth}",
            where=where(port),
            auth=" (bearer token required)" if self.preflight_result.token is not None else "",
        )

    async def _populate(self):
        restore, self._to_restore = self._to_restore, {}
        for name, records in restore.items():
            if name != DEFAULT_SERVICE and records:
                await self.managers.get(name).start_managed(records)
        if self.preflight_result.state is None:
            # A first start: config.json's demo backends.  Afterwards the
            # state file lists every spawned server, and they are restored.
            return await self.manager.spawn_initial(self.config.spawn)
        await self.manager.start_managed(restore.get(DEFAULT_SERVICE, []))
        return None

    def _start_failed(self, failure) -> None:
        _log.failure("heimdall failed to start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.exit_on_failure:
            # Under twistd: stop everything started so far (the spawned
            # servers), then exit with status 1 rather than run on with
            # no port, or exit 0 as if all was well.
            def exit_now() -> None:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)

            self.reactor.addSystemEventTrigger("after", "shutdown", exit_now)
            # startService runs before the reactor does: a port that
            # cannot be bound fails before there is a reactor to stop.
            self.reactor.callWhenRunning(self.reactor.stop)
        elif self.reactor.running:
            self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        self.reloader.stop()
        # First the graceful part: no new connection, requests in flight
        # finish within timeouts.shutdown_grace (heimdall.lifecycle.shutdown).
        sites = [site for site in (self.site, self.tls_site) if site is not None]
        for listener in self.listeners.values():
            yield listener.stop()
        self.proxy.connection_limits.close()
        yield self.shutdown.drain([], [site.connections for site in sites])
        self._detach_metrics()
        self._detach_live()
        yield defer.maybeDeferred(super().stopService)
        if self.manager_port is not None:
            yield self.manager_port.stopListening()
            self.manager_port = None
        self.live.stop()  # ends the event streams
        # No change is accepted from here on, supervision ends (no
        # restart races the stop below) and pending state writes land.
        yield self.managers.stop()
        for stop in self.reloader.stops.values():
            yield defer.maybeDeferred(stop)
        for service_ in self.proxy.services.values():
            yield service_.upstream.close_all()
        yield self.spawner.stopService()
        if self.access_log is not None:
            self.access_log.close()
        self.signals.uninstall()
