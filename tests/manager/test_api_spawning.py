"""
What the manager added to the spawner, with real processes on 127.0.0.1:
ports to avoid, stopping a server that is still starting, and the
Supervisor restarting a killed server on its port with backoff.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from heimdall.manager.spawner import ServerSpawner, SpawnError, is_port_free
from heimdall.manager.supervisor import RestartPolicy, Supervisor
from tests.netutil import free_port

# Starts in a fraction of the demo backend's time.
QUICK = (sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1")
SLOW_START = (sys.executable, "-c", "import time; time.sleep(30)", "{port}")


def _base(n):
    for _ in range(50):
        base = free_port()
        if base + n < 65000 and all(is_port_free("127.0.0.1", base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port range")


@pytest.fixture
def spawner(reactor):
    made = []

    def make(command=QUICK, n=3, **options):
        s = ServerSpawner(reactor=reactor, base_port=_base(n), port_range=n, command=command, stop_grace=1.0,
                          **options)
        made.append(s)
        return s

    yield make
    for s in made:
        pytest_twisted.blockon(s.stopService())


@pytest_twisted.inlineCallbacks
def test_spawn_avoids_the_given_ports(spawner):
    s = spawner()
    server = yield s.spawn(avoid={s.base_port})
    assert server.port == s.base_port + 1
    assert s.has(server.port) and not s.has(s.base_port)


@pytest_twisted.inlineCallbacks
def test_stop_ends_a_server_that_is_still_starting(spawner, reactor):
    s = spawner(command=SLOW_START, ready_timeout=20)
    starting = s.spawn()
    yield deferLater(reactor, 0.2, lambda: None)
    assert s.has(s.base_port)
    yield s.stop(s.base_port)
    with pytest.raises(SpawnError, match="was stopped before it was ready"):
        yield starting
    assert not s.has(s.base_port)


@pytest_twisted.inlineCallbacks
def test_supervisor_restarts_a_killed_server_on_its_port(spawner, reactor):
    s = spawner()
    server = yield s.spawn()
    events = []
    restarted = Deferred()
    supervisor = Supervisor(spawner=s, start=lambda port: s.spawn(port),
                            policy=RestartPolicy(backoff=0.05, max_backoff=0.2), clock=reactor)

    def record(event):
        events.append(event)
        if event.kind == "restarted" and not restarted.called:
            restarted.callback(event)

    supervisor.subscribe(record)
    supervisor.watch(server)
    os.kill(server.pid, signal.SIGKILL)
    event = yield restarted
    try:
        assert [e.kind for e in events] == ["exited", "restart_scheduled", "restarted"]
        assert events[0].exit_code == -signal.SIGKILL and events[0].pid == server.pid
        assert events[1].delay == 0.05
        assert event.port == server.port and event.pid != server.pid
        assert s.get(server.port).pid == event.pid
        # Unwatched, the next exit is nobody's business.
        yield supervisor.unwatch(server.port)
        yield s.stop(server.port)
        assert [e.kind for e in events][-1] == "restarted"
    finally:
        yield supervisor.close()


def test_restart_policy_backoff_doubles_up_to_the_cap():
    policy = RestartPolicy(backoff=0.5, max_backoff=3)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3, 3]
    assert policy.delay(10**6) == 3
    assert RestartPolicy(policy="on-failure").wants_restart(0) is False
    assert RestartPolicy(policy="on-failure").wants_restart(-9) is True
    assert RestartPolicy(policy="never").wants_restart(1) is False
    with pytest.raises(ValueError):
        RestartPolicy(policy="sometimes")


class _Flaky:
    """
    A resource answering 503 for the first C{failures} requests, then 200.
    """

    isLeaf = True

    def __init__(self, failures):
        self.failures = failures
        self.seen = 0

    def render(self, request):
        self.seen += 1
        request.setResponseCode(200 if self.seen > self.failures else 503)
        return b"{}"

    def getChildWithDefault(self, name, request):
        return self


@pytest.mark.parametrize("failures, timeout, passes", [(2, 5.0, True), (10**6, 0.3, False)])
@pytest_twisted.inlineCallbacks
def test_http_ready_check(reactor, tracked, failures, timeout, passes):
    from twisted.web.server import Site

    from heimdall.manager.readiness import HttpReadyCheck, NotReady
    from heimdall.manager.spawner import SpawnedServer

    resource = _Flaky(failures)
    port = tracked.listen(Site(resource)).getHost().port
    server = SpawnedServer(port=port, host="127.0.0.1", pid=1, command=[], started_at=0.0)
    check = HttpReadyCheck(reactor, path="/health", timeout=timeout, interval=0.02)
    if passes:
        yield check(server)
        assert resource.seen == 3
    else:
        with pytest.raises(NotReady, match=r"GET /health did not answer 2xx within 0.3 s \(last"):
            yield check(server)
