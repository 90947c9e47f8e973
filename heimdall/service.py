"""
The running balancer: the pool, the proxy site and its listening port, the
upstream connections and the spawned demo backends, started and stopped in
the right order as one Twisted service.
"""

from __future__ import annotations

import random as _random
from typing import List, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from heimdall.accesslog import AccessLog
from heimdall.config import Config
from heimdall.pool import BackendPool
from heimdall.proxy import BalancerResource
from heimdall.registry import default_registry
from heimdall.site import HeimdallSite
from heimdall.upstream import UpstreamPool

_log = Logger()


class HeimdallService(service.MultiService):
    """
    heimdall as configured by a L{Config}.  Start order: the proxy port,
    then the spawned backends (each joins the pool when it accepts
    connections).  Stop order: the proxy port, upstream connections,
    spawned backends.
    """

    def __init__(self, config: Config, reactor=None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        strategy = default_registry().create(
            config.strategy.name, dict(config.strategy.options), _random.Random(), reactor
        )
        self.pool = BackendPool(strategy, clock=reactor)
        for entry in config.backends:
            self.pool.add(entry.backend)
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
        from heimdall.spawner import ServerSpawner

        self.spawner = ServerSpawner(
            reactor=reactor,
            host=config.manager.host,
            base_port=config.manager.base_port,
            port_range=config.manager.port_range,
            command=config.manager.command,
        )
        self.port = None
        self.ready: defer.Deferred = defer.Deferred()

    def setServiceParent(self, parent):
        result = super().setServiceParent(parent)
        # Under twistd the parent is the application, whose logger starts
        # after this and uses the observer we set here.
        from heimdall.logconfig import install_on_application

        install_on_application(parent, self.config.log)
        return result

    def startService(self) -> None:
        super().startService()
        endpoint = serverFromString(self.reactor, self.config.listen)
        d = endpoint.listen(self.site)
        d.addCallback(self._listening)
        d.addCallback(lambda _: self._spawn_initial())
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

    @defer.inlineCallbacks
    def _spawn_initial(self):
        servers: List = []
        for _ in range(self.config.spawn):
            server = yield self.spawner.spawn()
            member = self.pool.add(_backend_for(server))
            _log.info("spawned demo backend {url} (pid {pid})", url=server.url, pid=server.pid)
            servers.append(member)
        return servers

    def _start_failed(self, failure) -> None:
        _log.failure("heimdall failed to start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        yield defer.maybeDeferred(super().stopService)
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        yield self.upstream.close_all()
        yield self.spawner.stopService()
        if self.access_log is not None:
            self.access_log.close()


def _backend_for(server):
    from heimdall.pool import Backend

    return Backend.from_url(server.url)
