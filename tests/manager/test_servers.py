"""
The server manager's domain, without HTTP: lookups, changes and their
refusals as domain errors (asserted directly), the health view built from
the pool's own details, draining and the state file's restoration.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import ensureDeferred, fail

from heimdall.config.model import BackendConfig
from heimdall.errors import (
    AmbiguousServer,
    InvalidChange,
    ManagerError,
    ManagerStopping,
    NoSpawnPort,
    ServerConflict,
    ServerDidNotStart,
    ServerNotFound,
    StateNotSaved,
)
from heimdall.manager.servers import Actor
from heimdall.manager.spawner import SpawnError
from heimdall.manager.statefile import ServerRecord, State
from heimdall.pool.pool import AdminState, CheckResult, Health, Outcome

from tests.manager.support import Harness, pending, result_of

ACTOR = Actor("127.0.0.1:50000", authenticated=False)


@pytest.fixture
def harness(tmp_path):
    return Harness(str(tmp_path / "state.json"))


def _config_backends(*urls):
    return tuple(BackendConfig.from_url(url) for url in urls)


def _refusal(call, *args, **kwargs):
    """
    The domain error a manager call raised, synchronously or through its
    Deferred.
    """
    try:
        outcome = call(*args, **kwargs)
    except ManagerError as error:
        return error
    failures = []
    ensureDeferred(outcome).addErrback(failures.append)
    assert failures, "the call did not fail"
    failures[0].trap(ManagerError)
    return failures[0].value


# -- refusals are domain errors, with what the API shows and no status ------------------------


def test_find_refuses_an_unknown_or_ambiguous_server(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080", "http://10.0.0.2:8080"))
    error = _refusal(h.manager.find, server_id="10.0.0.9:1")
    assert type(error) is ServerNotFound
    assert (error.message, error.detail) == ("no server with id 10.0.0.9:1", {"id": "10.0.0.9:1"})
    error = _refusal(h.manager.find, port=81, server_id="10.0.0.1:8080")
    assert type(error) is ServerNotFound and error.detail == {"id": "10.0.0.1:8080", "port": 81}
    assert type(_refusal(h.manager.find, port=9)) is ServerNotFound
    error = _refusal(h.manager.find, port=8080)
    assert type(error) is AmbiguousServer
    assert error.detail == {"port": 8080, "ids": ["10.0.0.1:8080", "10.0.0.2:8080"]}
    assert not hasattr(error, "status")


def test_add_external_refusals(harness):
    error = _refusal(harness.manager.add_external, ACTOR, "ftp://x:1")
    assert type(error) is InvalidChange and error.detail["field"] == "url"
    result_of(ensureDeferred(harness.manager.add_external(ACTOR, "http://10.0.0.5:80")))
    error = _refusal(harness.manager.add_external, ACTOR, "http://10.0.0.5:80")
    assert type(error) is ServerConflict and error.detail == {"id": "10.0.0.5:80", "port": 80}
    result_of(ensureDeferred(harness.manager.add_spawned(ACTOR)))
    error = _refusal(harness.manager.add_external, ACTOR, "http://localhost:8081")
    assert type(error) is ServerConflict and error.message == "port 8081 is being used for a spawned server"


@pytest.mark.parametrize(
    "prepare, port, expected, message",
    [
        (None, 9999, InvalidChange, "port 9999 is outside the manager's spawn range 8081-8085"),
        ("held", 8083, ServerConflict, "port 8083 is in use by another process"),
        ("full", None, NoSpawnPort, "no free port in the spawn range"),
        ("crash", None, ServerDidNotStart, "the server did not start: exited with status 1"),
    ],
)
def test_add_spawned_refusals(harness, prepare, port, expected, message):
    if prepare == "held":
        harness.spawner.held.add(8083)
    elif prepare == "full":
        harness.spawner.held.update(range(8081, 8086))
    elif prepare == "crash":
        harness.spawner.failures.append(SpawnError(8081, "exited with status 1", ["boom"]))
    error = _refusal(harness.manager.add_spawned, ACTOR, port)
    assert type(error) is expected and error.message == message
    assert len(harness.pool) == 0


def test_a_failed_ready_check_is_server_did_not_start(tmp_path):
    h = Harness(str(tmp_path / "s.json"), ready_check=lambda server: fail(RuntimeError("GET /health: 500")))
    error = _refusal(h.manager.add_spawned, ACTOR)
    assert type(error) is ServerDidNotStart and "did not pass its ready check" in error.message
    assert h.spawner.stopped == [8081]


def test_update_and_remove_refusals(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    assert type(_refusal(h.manager.update, ACTOR, "10.0.0.9:1", weight=2)) is ServerNotFound
    assert type(_refusal(h.manager.remove, ACTOR, "10.0.0.9:1")) is ServerNotFound
    h.pool.lease(h.pool.get("10.0.0.1:8080"))
    removal = h.manager.remove(ACTOR, "10.0.0.1:8080")
    assert pending(removal)
    error = _refusal(h.manager.update, ACTOR, "10.0.0.1:8080", weight=2)
    assert type(error) is ServerConflict and error.message == "10.0.0.1:8080 is being removed"


def test_a_stopping_manager_refuses_changes(harness):
    result_of(harness.manager.stop())
    error = _refusal(harness.manager.add_external, ACTOR, "http://10.0.0.5:80")
    assert type(error) is ManagerStopping and error.detail is None


def test_an_unsaved_change_is_state_not_saved(harness):
    def broken(path, state):
        raise OSError(28, "No space left on device")

    harness.writer.save_function = broken
    error = _refusal(harness.manager.add_external, ACTOR, "http://10.0.0.5:80")
    assert type(error) is StateNotSaved
    assert error.detail == {"state_file": harness.state_path, "problem": "[Errno 28] No space left on device"}
    assert harness.pool.get("10.0.0.5:80") is not None  # applied all the same


# -- what the manager shows -----------------------------------------------------------------


def test_health_comes_from_the_pools_details(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    assert h.manager.describe("10.0.0.1:8080")["health"] == {
        "status": "unknown", "reason": None, "last_check_at": None, "last_check_result": None,
        "last_check_latency": None, "last_check_detail": None,
    }
    member = h.pool.get("10.0.0.1:8080")
    member.last_check = CheckResult(1_700_000_000.5, False, 0.25, "HTTP 503")
    h.pool.set_health(member.id, Health.DOWN, "HTTP 503")
    assert h.manager.describe("10.0.0.1:8080")["health"] == {
        "status": "down", "reason": "HTTP 503", "last_check_at": "2023-11-14T22:13:20.500Z",
        "last_check_result": "fail", "last_check_latency": 0.25, "last_check_detail": "HTTP 503",
    }


# -- removing ------------------------------------------------------------------------------


def test_remove_drains_then_stops_the_process(harness):
    port = harness.request("POST", "/servers/add").json()["port"]
    member = harness.pool.get(f"127.0.0.1:{port}")
    lease = harness.pool.lease(member)
    d = harness.send("DELETE", f"/servers/remove?port={port}")
    harness.flush()
    # Draining: no new requests, the in-flight one goes on, no answer yet.
    assert pending(d)
    assert member.admin is AdminState.DRAINING and harness.pool.eligible() == []
    assert harness.spawner.stopped == []
    harness.clock.advance(1)
    lease.release(Outcome(status=200, ttfb=0.01, ttlb=0.02))
    harness.clock.advance(0)
    harness.flush()
    response = result_of(d)
    assert response.code == 200
    server = response.json()
    assert server["id"] == f"127.0.0.1:{port}" and server["pid"] is None
    assert server["removal"] == {"drained": True, "in_flight_left": 0, "waited": 1.0, "stopped": True,
                                 "port_free": True}
    assert harness.spawner.stopped == [port]
    assert harness.pool.get(member.id) is None
    assert harness.state().servers == ()
    # Supervision stopped before the process: the stop is no crash.
    assert not harness.manager.supervisor.is_watched(port)


def test_remove_gives_up_waiting_after_the_drain_timeout(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"), drain_timeout=3)
    h.pool.lease(h.pool.get("10.0.0.1:8080"))
    d = h.send("DELETE", "/servers/10.0.0.1:8080")
    h.flush()
    h.clock.advance(2.9)
    h.flush()
    assert pending(d)
    h.clock.advance(0.1)
    h.flush()
    server = result_of(d).json()
    assert server["removal"]["drained"] is False and server["removal"]["in_flight_left"] == 1
    assert server["removal"]["stopped"] is None and server["removal"]["port_free"] is None


def test_concurrent_removals_share_one(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    lease = h.pool.lease(h.pool.get("10.0.0.1:8080"))
    first = h.send("DELETE", "/servers/remove?port=8080")
    second = h.send("DELETE", "/servers/10.0.0.1:8080")
    h.flush()
    # A change to a server being removed is refused.
    assert h.request("PATCH", "/servers/8080", body={"admin": "ready"}).code == 409
    lease.release(Outcome(status=200))
    h.clock.advance(0)
    h.flush()
    assert result_of(first).code == 200 and result_of(second).code == 200
    assert result_of(first).json() == result_of(second).json()


def test_removed_config_backend_stays_removed_after_restart(tmp_path):
    path = str(tmp_path / "s.json")
    backends = _config_backends("http://10.0.0.1:80", "http://10.0.0.2:80")
    h = Harness(path, backends)
    assert h.request("DELETE", "/servers/remove?id=10.0.0.1:80").code == 200
    assert h.state().config_removed == ("10.0.0.1:80",)
    again = Harness(path, backends, state=h.state())
    assert [m.id for m in again.pool.members()] == ["10.0.0.2:80"]



# -- the state file ------------------------------------------------------------------------


def test_every_change_is_restored_from_the_state_file(tmp_path):
    path = str(tmp_path / "s.json")
    backends = _config_backends("http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80")
    h = Harness(path, backends)
    assert h.request("POST", "/servers/add").code == 201  # 8081, managed
    assert h.request("POST", "/servers/add", body={"port": 8083, "weight": 4}).code == 201
    assert h.request("POST", "/servers/add", body={"url": "http://10.0.0.9:9", "backup": True}).code == 201
    assert h.request("PATCH", "/servers/10.0.0.1:80", body={"weight": 9}).code == 200
    assert h.request("PATCH", "/servers/10.0.0.2:80", body={"admin": "maintenance"}).code == 200
    assert h.request("DELETE", "/servers/10.0.0.3:80").code == 200
    assert h.request("PATCH", "/servers/8083", body={"admin": "draining"}).code == 200
    before = h.request("GET", "/servers/list").json()

    again = Harness(path, backends, state=h.state())
    result_of(again.start())
    after = again.request("GET", "/servers/list").json()
    keys = ("id", "weight", "admin", "backup", "managed", "source")
    # Spawned servers join the pool once they run again, so after the others.
    assert sorted(tuple(s[k] for k in keys) for s in after) == sorted(tuple(s[k] for k in keys) for s in before)
    assert sorted(again.spawner.spawned) == [8081, 8083]  # re-spawned on their ports
    assert all(s["health"]["status"] == "up" for s in after if s["managed"])


def test_a_managed_server_that_cannot_be_restored_is_down_and_retried(tmp_path):
    state = State(servers=[ServerRecord("http://127.0.0.1:8082", managed=True)])
    h = Harness(str(tmp_path / "s.json"), state=state)
    h.spawner.held.add(8082)
    # Its port is reserved meanwhile: automatic placement skips it.
    assert h.manager._taken_ports() == {8082}
    result_of(h.start())
    member = h.pool.get("127.0.0.1:8082")
    assert member.health is Health.DOWN and "could not be started" in member.health_reason
    h.spawner.held.clear()
    h.clock.advance(1)
    assert member.health is Health.UP and h.spawner.spawned == [8082]


