"""
The running balancer: the pool, the proxy site and its listening port, the
upstream connections, the manager API on its own port, and the spawned
backends with their supervision, started and stopped in the right order as
one Twisted service.
"""

from __future__ import annotations

import os
import random as _random
from typing import Mapping, Optional

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from heimdall.observe.accesslog import AccessLog
from heimdall.config.model import Config
from heimdall.manager.auth import check_exposure, resolve_token
from heimdall.manager.readiness import HttpReadyCheck
from heimdall.manager.servers import ServerManager
from heimdall.manager.site import ManagerResource, ManagerSite
from heimdall.pool.pool import BackendPool
from heimdall.proxy.resource import BalancerResource
from heimdall.strategies.registry import default_registry
from heimdall.proxy.site import HeimdallSite
from heimdall.manager.supervisor import RestartPolicy
from heimdall.manager.statefile import State, StateWriter, load_state, run_in_reactor_threads
from heimdall.proxy.upstream import UpstreamPool

_log = Logger()


@attrs.frozen
class Preflight:
    """
    What heimdall checks before it starts, beyond the config file itself.

    @ivar token: the manager's bearer token, or None.
    @ivar state: the state file's content; None on a first start.
    @ivar state_path: the state file, as an absolute path.
    """

    token: Optional[str]
    state: Optional[State]
    state_path: str


def preflight(config: Config, environ: Optional[Mapping[str, str]] = None) -> Preflight:
    """
    Resolve the manager's token, refuse a manager exposed without one, and
    read the state file.

    @raise heimdall.errors.ConfigError: for the token or the exposure.
    @raise heimdall.manager.statefile.StateFileError: naming the state file, if it
        exists but cannot be read or parsed.
    """
    from heimdall.config.health import parse_alerts, parse_health

    # The health and alerts sections are validated by their own parsers.
    parse_health(config.health)
    parse_alerts(config.alerts)
    token = resolve_token(config.manager, environ)
    check_exposure(config.manager, token)
    # Absolute now: a later change of directory must not move it.
    path = os.path.abspath(config.manager.state_file)
    return Preflight(token, load_state(path), path)


class HeimdallService(service.MultiService):
    """
    heimdall as configured by a L{Config}.  Start order: the proxy port,
    then the spawned backends (each joins the pool when it accepts
    connections).  Stop order: the proxy port, upstream connections,
    spawned backends.
    """

    def __init__(
        self, config: Config, reactor=None, checked: Optional[Preflight] = None, exit_on_failure: bool = False
    ) -> None:
        """
        @param checked: the result of L{preflight}, when the caller already
            ran it (twistd does, to report problems before starting); else
            it runs here and its errors propagate.
        @param exit_on_failure: a failed start ends the process with
            status 1 (twistd); else it stops the reactor if it runs.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if checked is None:
            checked = preflight(config)
        self.config = config
        self.reactor = reactor
        self.checked = checked
        self.exit_on_failure = exit_on_failure
        strategy = default_registry().create(
            config.strategy.name, dict(config.strategy.options), _random.Random(), reactor
        )
        self.pool = BackendPool(strategy, clock=reactor)
        from heimdall.health.wiring import build_health

        # Active checks, outlier detection, alerts and the retry budget.
        self.health = build_health(config.health, config.alerts, self.pool, reactor, reactor)
        self.health.setServiceParent(self)
        self.upstream = UpstreamPool(
            reactor=reactor,
            connect_timeout=config.timeouts.connect,
            idle_timeout=config.timeouts.idle_upstream,
            max_idle_per_backend=config.upstream.max_idle_per_backend,
        )
        self.access_log: Optional[AccessLog] = (
            AccessLog.open(config.access_log.format, config.access_log.path)
            if config.access_log.enabled
            else None
        )
        self.resource = BalancerResource(
            self.pool,
            self.upstream,
            clock=reactor,
            retries=config.retries,
            response_timeout=config.timeouts.response,
            max_body_bytes=config.limits.max_body_bytes,
            trusted_proxies=config.forwarded.trusted_proxies,
            access_log=self.access_log,
            retry_on=config.retry_on,
            retry_budget=self.health.retry_budget,
        )
        self.site = HeimdallSite(
            self.resource,
            max_uri_bytes=config.limits.max_uri_bytes,
            max_header_bytes=config.limits.max_header_bytes,
            max_body_bytes=config.limits.max_body_bytes,
            header_timeout=config.timeouts.client_header,
            idle_timeout=config.timeouts.client_idle,
            reactor=reactor,
        )
        from heimdall.manager.spawner import ServerSpawner

        manager_config = config.manager
        self.spawner = ServerSpawner(
            reactor=reactor,
            host=manager_config.host,
            base_port=manager_config.base_port,
            port_range=manager_config.port_range,
            command=manager_config.command,
            ready_timeout=manager_config.ready_timeout,
            stop_grace=manager_config.stop_grace,
        )
        ready_check = (
            HttpReadyCheck(reactor, path=manager_config.ready_path, timeout=manager_config.ready_timeout)
            if manager_config.ready_path is not None
            else None
        )
        self.manager = ServerManager(
            pool=self.pool,
            spawner=self.spawner,
            clock=reactor,
            writer=StateWriter(checked.state_path, run=run_in_reactor_threads(reactor)),
            drain_timeout=manager_config.drain_timeout,
            ready_check=ready_check,
            restart_policy=RestartPolicy.from_config(manager_config.restart),
            config_backends=config.backends,
            strategy_name=config.strategy.name,
            info={
                "listen": {"proxy": config.listen, "manager": manager_config.listen},
                "state_file": checked.state_path,
            },
        )
        # config.json's backends with the state file's changes, at once;
        # managed servers are spawned when the service starts.
        self._to_restore = self.manager.load(checked.state)
        from heimdall.observe.metrics import Metrics, exposition

        # Prometheus metrics, served by the manager at /metrics.
        self.metrics = Metrics(strategy_name=config.strategy.name)
        self._detach_metrics = self.metrics.attach(
            self.pool,
            self.resource,
            self.upstream,
            spawner=self.spawner,
            alerts=self.health.alerts,
            supervisor=getattr(self.manager, "supervisor", None),
        )
        metrics = self.metrics
        self.health.prober.check_observers.append(
            lambda backend_id, result: metrics.record_health_check(backend_id, result.ok)
        )
        self.manager_resource = ManagerResource(
            self.manager, token=checked.token, metrics=exposition(self.metrics.registry)
        )
        self.manager_site = ManagerSite(self.manager_resource, reactor=reactor)
        self.port = None
        self.manager_port = None
        self.ready: defer.Deferred = defer.Deferred()

    def setServiceParent(self, parent):
        result = super().setServiceParent(parent)
        # Under twistd the parent is the application, whose logger starts
        # after this and uses the observer we set here.
        from heimdall.observe.logging import install_on_application

        install_on_application(parent, self.config.log)
        return result

    def reopen_logs(self) -> None:
        """
        Reopen the access log and heimdall's own log files (SIGUSR1).
        """
        from heimdall.observe.logging import reopen_log_files

        if self.access_log is not None:
            self.access_log.reopen()
        reopen_log_files()
        _log.info("log files reopened")

    def _install_sigusr1(self) -> None:
        import signal
        import threading

        if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
            return

        def on_sigusr1(signum, frame):
            # Signal handlers run between bytecodes: hand over to the reactor.
            self.reactor.callFromThread(self.reopen_logs)

        self._previous_sigusr1 = signal.signal(signal.SIGUSR1, on_sigusr1)

    def _restore_sigusr1(self) -> None:
        import signal

        previous = getattr(self, "_previous_sigusr1", None)
        if previous is not None:
            signal.signal(signal.SIGUSR1, previous)
            self._previous_sigusr1 = None

    def startService(self) -> None:
        self._install_sigusr1()
        super().startService()
        endpoint = serverFromString(self.reactor, self.config.listen)
        d = endpoint.listen(self.site)
        d.addCallback(self._listening)
        d.addCallback(lambda _: serverFromString(self.reactor, self.config.manager.listen).listen(self.manager_site))
        d.addCallback(self._manager_listening)
        d.addCallback(lambda _: defer.ensureDeferred(self._populate()))
        d.addCallbacks(self.ready.callback, self._start_failed)

    def _listening(self, port) -> None:
        self.port = port
        address = port.getHost()
        _log.info(
            "heimdall proxy listening on {host}:{port} with strategy {strategy}",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
            strategy=self.config.strategy.name,
        )

    def _manager_listening(self, port) -> None:
        self.manager_port = port
        address = port.getHost()
        _log.info(
            "heimdall manager listening on {host}:{port}{auth}",
            host=getattr(address, "host", getattr(address, "name", "?")),
            port=getattr(address, "port", ""),
            auth=" (bearer token required)" if self.checked.token is not None else "",
        )

    async def _populate(self):
        if self.checked.state is None:
            # A first start: config.json's demo backends.  Afterwards the
            # state file lists every spawned server, and they are restored.
            return await self.manager.spawn_initial(self.config.spawn)
        records, self._to_restore = self._to_restore, []
        await self.manager.start_managed(records)
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
                import sys

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
        self._restore_sigusr1()
        self._detach_metrics()
        yield defer.maybeDeferred(super().stopService)
        if self.manager_port is not None:
            yield self.manager_port.stopListening()
            self.manager_port = None
        # No change is accepted from here on, supervision ends (no
        # restart races the stop below) and pending state writes land.
        yield self.manager.stop()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        yield self.upstream.close_all()
        yield self.spawner.stopService()
        if self.access_log is not None:
            self.access_log.close()
