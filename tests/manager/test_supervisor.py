"""
Supervision: the Supervisor restarting a killed server on its port with
backoff (real processes on 127.0.0.1), the restart policy, and what the
manager makes of each supervision event (in memory, with a Clock).
"""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from heimdall.manager.supervisor import RestartPolicy, Supervisor
from heimdall.pool.pool import Health
from tests.manager.support import Harness, result_of


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


@pytest.fixture
def harness(tmp_path):
    return Harness(str(tmp_path / "state.json"))


def test_an_exited_server_is_down_at_once_then_restarted_with_backoff(harness):
    port = harness.request("POST", "/servers/add").json()["port"]
    server_id = f"127.0.0.1:{port}"
    harness.events.clear()
    harness.spawner.crash(port, code=3)
    member = harness.pool.get(server_id)
    assert member.health is Health.DOWN and member.health_reason == "process exited with status 3"
    assert [e.kind for e in harness.events] == ["down", "all_down"]
    shown = harness.request("GET", f"/servers/{port}").json()
    assert shown["pid"] is None and shown["supervision"]["next_restart_at"] is not None
    # Restarts fail twice (port taken), then work: 1 s, 2 s, 4 s apart.
    harness.spawner.held.add(port)
    harness.clock.advance(1)
    harness.clock.advance(2)
    assert member.health is Health.DOWN and "restart failed" in member.health_reason
    harness.spawner.held.clear()
    harness.clock.advance(3.9)
    assert member.health is Health.DOWN
    harness.clock.advance(0.1)
    assert member.health is Health.UP
    shown = harness.request("GET", f"/servers/{port}").json()
    assert shown["restarts"] == 1 and shown["pid"] == harness.spawner.servers[port].pid
    assert shown["supervision"]["restarts_in_a_row"] == 3


def test_policy_never_leaves_it_down(tmp_path):
    h = Harness(str(tmp_path / "s.json"), restart_policy=RestartPolicy(policy="never"))
    port = h.request("POST", "/servers/add").json()["port"]
    h.spawner.crash(port)
    h.clock.advance(100)
    assert h.pool.get(f"127.0.0.1:{port}").health is Health.DOWN
    assert h.spawner.spawned == [port]


def test_policy_on_failure_ignores_a_clean_exit(tmp_path):
    h = Harness(str(tmp_path / "s.json"), restart_policy=RestartPolicy(policy="on-failure"))
    port = h.request("POST", "/servers/add").json()["port"]
    h.spawner.crash(port, code=0)
    h.clock.advance(100)
    assert h.spawner.spawned == [port]


def test_gives_up_after_max_restarts(tmp_path):
    h = Harness(str(tmp_path / "s.json"), restart_policy=RestartPolicy(backoff=1, max_restarts=2))
    port = h.request("POST", "/servers/add").json()["port"]
    h.spawner.crash(port)
    h.spawner.held.add(port)
    h.clock.advance(1)
    h.clock.advance(2)
    h.clock.advance(100)
    shown = h.request("GET", f"/servers/{port}").json()
    assert shown["supervision"]["gave_up"] is True
    assert shown["health"]["reason"].startswith("not restarted any more")


def test_remove_during_a_pending_restart_cancels_it(harness):
    port = harness.request("POST", "/servers/add").json()["port"]
    harness.spawner.crash(port)
    assert harness.request("DELETE", f"/servers/remove?port={port}").code == 200
    harness.clock.advance(100)
    assert harness.spawner.spawned == [port]  # never restarted
    assert harness.clock.getDelayedCalls() == []


def test_stop_ends_supervision(harness):
    port = harness.request("POST", "/servers/add").json()["port"]
    harness.spawner.crash(port)
    result_of(harness.manager.stop())
    assert harness.clock.getDelayedCalls() == []


