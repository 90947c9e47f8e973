"""
Shared fixtures.  pytest-twisted runs one reactor for the whole session and
has no dirty-reactor check, so every fixture here stops the ports, closes the
connections and cancels the delayed calls it creates.  The reactor is
imported inside fixtures, never at module level.
"""

from __future__ import annotations

import random

import pytest
import pytest_twisted

from tests.browser import browser  # noqa: F401  (the fixture: a headless Chromium)


@pytest.fixture
def reactor():
    from twisted.internet import reactor as _reactor

    return _reactor


class _Tracked:
    """
    Listening ports and accepted connections to tear down.
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.ports = []
        self.protocols = []
        self.cleanups = []

    def listen(self, factory, port=0):
        original = factory.buildProtocol

        def build(addr):
            protocol = original(addr)
            self.protocols.append(protocol)
            return protocol

        factory.buildProtocol = build
        listening = self.reactor.listenTCP(port, factory, interface="127.0.0.1")
        self.ports.append(listening)
        return listening

    @pytest_twisted.inlineCallbacks
    def close(self):
        from twisted.internet import defer, task

        for cleanup in reversed(self.cleanups):
            yield defer.maybeDeferred(cleanup)
        for port in self.ports:
            yield defer.maybeDeferred(port.stopListening)
        for protocol in self.protocols:
            transport = getattr(protocol, "transport", None)
            if transport is not None and getattr(transport, "connected", False):
                transport.abortConnection()
        # Let connectionLost callbacks run.
        yield task.deferLater(self.reactor, 0, lambda: None)


@pytest.fixture
def tracked(reactor):
    t = _Tracked(reactor)
    yield t
    pytest_twisted.blockon(t.close())


@pytest.fixture
def start_backends(tracked, reactor):
    """
    start_backends(n) -> list of in-process demo backend ports (127.0.0.1).
    """
    from heimdall.backend import make_backend_site

    def start(n=1):
        ports = []
        for _ in range(n):
            holder = []
            site = make_backend_site(None, "127.0.0.1", lambda h=holder: h[0].getHost().port, reactor=reactor)
            listening = tracked.listen(site)
            holder.append(listening)
            ports.append(listening.getHost().port)
        return ports

    return start


@pytest.fixture
def start_proxy(tracked, reactor):
    """
    start_proxy(backend_urls, **options) -> ProxyUnderTest, listening on
    127.0.0.1:0, torn down after the test.
    """
    from heimdall.pool.pool import Backend, BackendPool
    from heimdall.proxy.resource import BalancerResource
    from heimdall.strategies.registry import default_registry
    from heimdall.proxy.site import HeimdallSite
    from heimdall.proxy.upstream import UpstreamPool

    def start(backends, strategy="round_robin", site_options=None, connect_timeout=2.0, **resource_options):
        pool = BackendPool(
            default_registry().create(strategy, {}, random.Random(0), reactor), clock=reactor
        )
        for url in backends:
            pool.add(Backend.from_url(url) if isinstance(url, str) else url)
        upstream = UpstreamPool(reactor=reactor, connect_timeout=connect_timeout)
        resource = BalancerResource(pool, upstream, clock=reactor, **resource_options)
        site = HeimdallSite(resource, reactor=reactor, **(site_options or {}))
        listening = tracked.listen(site)
        tracked.cleanups.append(upstream.close_all)
        proxy = ProxyUnderTest(pool, upstream, resource, site, listening.getHost().port)
        proxy.site_protocols = tracked.protocols
        return proxy

    return start


class ProxyUnderTest:
    def __init__(self, pool, upstream, resource, site, port):
        self.pool = pool
        self.upstream = upstream
        self.resource = resource
        self.site = site
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def http(reactor):
    """
    A treq client with its own keep-alive pool, closed after the test.
    """
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))
    yield client
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def run_heimdall(tmp_path):
    """
    run_heimdall(config, env=None, name="heimdall", process_class=...) ->
    a twistd heimdall process in tmp_path (see tests/processes.py), killed
    with everything it started after the test.
    """
    from tests.processes import HeimdallProcess

    started = []

    def run(config, env=None, name="heimdall", process_class=HeimdallProcess):
        process = process_class(tmp_path, config, env, name)
        started.append(process)
        return process

    yield run
    for process in started:
        process.kill_all()
