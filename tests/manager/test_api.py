"""
The manager API in memory: the real resource and manager over a real pool,
with a fake spawner, a Clock and StubTreq.  Every endpoint, every error
status, draining, supervision, persistence, access control and the
OpenAPI document's agreement with the routes.
"""

from __future__ import annotations


import pytest
from twisted.internet.defer import Deferred, fail

from heimdall.config.model import BackendConfig, ManagerConfig
from heimdall.errors import ConfigError
from heimdall.manager.api import MAX_BODY_BYTES, ROUTES, openapi_document
from heimdall.manager.auth import check_exposure, listens_on_loopback, resolve_token
from heimdall.pool.pool import AdminState, Health, Outcome
from heimdall.manager.spawner import SpawnError
from heimdall.manager.supervisor import RestartPolicy
from heimdall.manager.statefile import ServerRecord, State

from tests.manager.support import Harness, LogCapture, pending, result_of

SERVER_FIELDS = {
    "id", "url", "port", "weight", "managed", "pid", "health", "admin", "in_flight", "requests_total",
    "failures_total", "response_time_avg", "started_at",
}


@pytest.fixture
def harness(tmp_path):
    return Harness(str(tmp_path / "state.json"))


def _config_backends(*urls):
    return tuple(BackendConfig.from_url(url) for url in urls)


# -- reading -------------------------------------------------------------------------


def test_index_lists_every_endpoint(harness):
    response = harness.request("GET", "/")
    assert response.code == 200
    assert response.header("content-type") == "application/json"
    lines = response.json()["endpoints"]
    for route in ROUTES:
        for method in route.methods:
            assert any(line.startswith(f"{method} {route.path} ") for line in lines), (method, route.path)


def test_status_counts(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:80", "http://10.0.0.2:80"))
    h.pool.set_admin("10.0.0.2:80", AdminState.MAINTENANCE)
    h.clock.advance(12.5)
    status = h.request("GET", "/status").json()
    assert status["version"] and status["strategy"] == "round_robin"
    assert status["uptime"] == 12.5
    assert status["counts"]["servers"] == 2
    assert status["counts"]["maintenance"] == 1 and status["counts"]["eligible"] == 1


def test_list_get_and_server_fields(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    listed = h.request("GET", "/servers/list").json()
    assert isinstance(listed, list) and len(listed) == 1
    server = listed[0]
    assert SERVER_FIELDS <= set(server)
    assert server["id"] == "10.0.0.1:8080" and server["port"] == 8080 and server["managed"] is False
    assert server["pid"] is None and server["admin"] == "ready" and server["source"] == "config"
    assert server["health"] == {
        "status": "unknown", "reason": None, "last_check_at": None, "last_check_result": None,
        "last_check_latency": None, "last_check_detail": None,
    }
    assert h.request("GET", "/servers/get?port=8080").json() == server
    assert h.request("GET", "/servers/get?id=10.0.0.1:8080").json() == server
    assert h.request("GET", "/servers/get?id=10.0.0.1:8080&port=8080").json() == server
    assert h.request("GET", "/servers/10.0.0.1:8080").json() == server
    assert h.request("GET", "/servers/10.0.0.1%3A8080").json() == server
    assert h.request("GET", "/servers/8080").json() == server


def test_health_shows_the_pools_recorded_check(tmp_path):
    from heimdall.pool import pool as pool_module

    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    h.pool.get("10.0.0.1:8080").last_check = pool_module.CheckResult(1_700_000_000.0, True, 0.004, "HTTP 200")
    health = h.request("GET", "/servers/8080").json()["health"]
    assert (health["last_check_result"], health["last_check_latency"], health["last_check_detail"]) == (
        "pass", 0.004, "HTTP 200")


def test_head_is_get_without_a_body(harness):
    response = harness.request("HEAD", "/servers/list")
    assert response.code == 200 and response.body == b""


# -- adding ----------------------------------------------------------------------------


def test_add_without_body_spawns_on_the_lowest_free_port(harness):
    harness.spawner.held.add(8081)  # another listener
    response = harness.request("POST", "/servers/add")
    assert response.code == 201
    server = response.json()
    assert server["port"] == 8082 and server["managed"] is True and server["pid"] == 1000
    assert server["health"]["status"] == "up"
    assert response.header("location") == "/servers/get?id=127.0.0.1:8082"
    assert harness.pool.get("127.0.0.1:8082") is not None
    # Persisted before the answer.
    assert harness.state().servers == (ServerRecord("http://127.0.0.1:8082", managed=True),)
    # An empty object is the same as no body.
    assert harness.request("POST", "/servers/add", body={}).json()["port"] == 8083


def test_add_on_an_exact_port_with_weight_and_backup(harness):
    response = harness.request("POST", "/servers/add", body={"port": 8084, "weight": 3, "backup": True})
    assert response.code == 201
    server = response.json()
    assert (server["port"], server["weight"], server["backup"]) == (8084, 3, True)


def test_add_external_registers_without_spawning(harness):
    response = harness.request("POST", "/servers/add", body={"url": "http://10.0.0.5:8080", "weight": 2})
    assert response.code == 201
    server = response.json()
    assert server["id"] == "10.0.0.5:8080" and server["weight"] == 2 and server["managed"] is False
    assert harness.spawner.spawned == []
    assert harness.state().servers == (ServerRecord("http://10.0.0.5:8080", weight=2),)


def test_add_waits_for_the_ready_check(tmp_path):
    checks = []

    def ready_check(server):
        d = Deferred()
        checks.append((server, d))
        return d

    h = Harness(str(tmp_path / "s.json"), ready_check=ready_check)
    d = h.send("POST", "/servers/add")
    h.flush()
    assert pending(d) and h.pool.get("127.0.0.1:8081") is None
    checks[0][1].callback(None)
    h.flush()
    assert result_of(d).code == 201


def test_a_failed_ready_check_stops_the_server_and_answers_502(tmp_path):
    h = Harness(str(tmp_path / "s.json"), ready_check=lambda server: fail(RuntimeError("GET /health: 500")))
    response = h.request("POST", "/servers/add")
    assert response.code == 502
    assert "ready check" in response.json()["error"]
    assert h.spawner.stopped == [8081] and len(h.pool) == 0


def test_spawn_error_is_502_with_output(harness):
    harness.spawner.failures.append(SpawnError(8081, "exited with status 1 before it was ready", ["boom"]))
    response = harness.request("POST", "/servers/add")
    assert response.code == 502
    assert response.json() == {
        "error": "the server did not start: exited with status 1 before it was ready",
        "detail": {"port": 8081, "output": ["boom"]},
    }


def test_no_free_port_is_503(harness):
    harness.spawner.held.update(range(8081, 8086))
    response = harness.request("POST", "/servers/add")
    assert response.code == 503
    assert response.json() == {
        "error": "no free port in the spawn range",
        "detail": {"host": "127.0.0.1", "first": 8081, "last": 8085},
    }


@pytest.mark.parametrize(
    "body, status, error",
    [
        ({"port": 8081}, 409, "port 8081 is already registered to 127.0.0.1:8081"),
        ({"url": "http://127.0.0.1:8081"}, 409, "127.0.0.1:8081 is already registered"),
        ({"url": "http://localhost:8081"}, 409, "port 8081 is being used for a spawned server"),
        ({"url": "http://10.0.0.7:8081"}, 201, None),  # another host: allowed
        ({"port": 8083}, 409, "port 8083 is in use by another process"),
        ({"port": 9999}, 400, "port 9999 is outside the manager's spawn range 8081-8085"),
    ],
)
def test_add_conflicts(harness, body, status, error):
    harness.spawner.held.add(8083)
    assert harness.request("POST", "/servers/add").code == 201
    response = harness.request("POST", "/servers/add", body=body)
    assert response.code == status, response.json()
    if error:
        assert response.json()["error"] == error


@pytest.mark.parametrize(
    "raw, error",
    [
        (b"{", "malformed JSON: Expecting property name enclosed in double quotes"),
        (b"[1]", "the body must be a JSON object"),
        (b'"x"', "the body must be a JSON object"),
        (b"\xff\xfe", "malformed JSON: the body is not UTF-8"),
        (b'{"weight": NaN}', "malformed JSON: NaN is not valid JSON"),
        (b'{"weight": 1, "weight": 2}', "weight: is given twice"),
        (b'{"wieght": 2}', "unknown field 'wieght'; did you mean \"weight\"?"),
        (b'{"weight": "2"}', "weight: must be an integer from 0 to 1000"),
        (b'{"weight": true}', "weight: must be an integer from 0 to 1000"),
        (b'{"weight": 2.0}', "weight: must be an integer from 0 to 1000"),
        (b'{"weight": 1001}', "weight: must be an integer from 0 to 1000"),
        (b'{"backup": "yes"}', "backup: must be true or false"),
        (b'{"port": "8081"}', "port: must be a port number from 1 to 65535"),
        (b'{"port": 0}', "port: must be a port number from 1 to 65535"),
        (b'{"url": 5}', 'url: must be a URL string like "http://10.0.0.5:8080"'),
        (b'{"url": "ftp://x:1"}', "invalid url: scheme must be http or https"),
        (b'{"url": "http://x:1/path"}', "invalid url: must not have a path, query or fragment"),
        (b'{"url": "http://x:1", "port": 8081}', 'give "url" (an existing server) or "port" (spawn one), not both'),
    ],
)
def test_add_rejects_bad_bodies_with_400(harness, raw, error):
    response = harness.request("POST", "/servers/add", raw=raw, headers={"Content-Type": "application/json"})
    assert response.code == 400
    body = response.json()
    assert body["error"] == error and "detail" in body
    assert len(harness.pool) == 0 and harness.spawner.spawned == []


def test_malformed_json_detail_has_line_and_column(harness):
    body = harness.request("POST", "/servers/add", raw=b'{\n  "weight": }').json()
    assert body["detail"] == {"line": 2, "column": 13, "problem": "Expecting value"}


def test_unknown_field_detail_names_known_fields(harness):
    detail = harness.request("POST", "/servers/add", body={"wieght": 1}).json()["detail"]
    assert detail == {"field": "wieght", "known": ["url", "port", "weight", "backup"], "suggestion": "weight"}


def test_body_over_64_kib_is_413(harness):
    raw = b'{"url": "' + b"x" * MAX_BODY_BYTES + b'"}'
    response = harness.request("POST", "/servers/add", raw=raw)
    assert response.code == 413
    assert response.json() == {"error": "request body too large", "detail": {"limit": 65536}}


# -- errors common to all endpoints ------------------------------------------------------


@pytest.mark.parametrize(
    "query, error",
    [
        ("", "a server is required: ?port=N or ?id=HOST:PORT"),
        ("?port=", "port: must be a port number from 1 to 65535"),
        ("?port=abc", "port: must be a port number from 1 to 65535"),
        ("?port=0", "port: must be a port number from 1 to 65535"),
        ("?port=65536", "port: must be a port number from 1 to 65535"),
        ("?port=-1", "port: must be a port number from 1 to 65535"),
        ("?port=%D9%A3", "port: must be a port number from 1 to 65535"),  # an Arabic-Indic 3
        ("?port=1&port=2", "port: must be given once"),
        ("?id=", "id: must not be empty"),
        ("?prot=8081", "unknown query parameter 'prot'; did you mean \"port\"?"),
    ],
)
@pytest.mark.parametrize("method, path", [("GET", "/servers/get"), ("DELETE", "/servers/remove"),
                                          ("POST", "/servers/update")])
def test_missing_or_invalid_server_is_400(harness, method, path, query, error):
    response = harness.request(method, path + query, body={"weight": 1} if method == "POST" else None)
    assert response.code == 400
    assert response.json()["error"] == error


def test_unknown_query_parameter_elsewhere_is_400(harness):
    response = harness.request("GET", "/servers/list?verbose=1")
    assert response.code == 400 and response.json()["detail"]["field"] == "verbose"


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/servers/get?port=8081"),
        ("GET", "/servers/get?id=10.0.0.9:80"),
        ("GET", "/servers/get?id=10.0.0.1:8080&port=8081"),
        ("DELETE", "/servers/remove?port=8081"),
        ("POST", "/servers/update?port=8081"),
        ("GET", "/servers/8081"),
        ("GET", "/servers/nope"),
        ("PATCH", "/servers/10.0.0.9:80"),
        ("DELETE", "/servers/10.0.0.9:80"),
    ],
)
def test_unknown_server_is_404(tmp_path, method, path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    response = h.request(method, path, body={"weight": 1} if method in ("POST", "PATCH") else None)
    assert response.code == 404
    assert set(response.json()) == {"error", "detail"}


def test_unknown_endpoint_is_404(harness):
    for path in ("/nope", "/servers", "/servers/", "/servers/list/", "/servers/a/b"):
        response = harness.request("GET", path)
        assert response.code == 404, path
        assert response.json()["error"] == "no such endpoint"


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("POST", "/servers/list", "GET, HEAD"),
        ("GET", "/servers/add", "POST"),
        ("DELETE", "/servers/add", "POST"),
        ("GET", "/servers/remove?port=1", "DELETE"),
        ("PUT", "/servers/update?port=1", "POST"),
        ("POST", "/servers/127.0.0.1:8081", "GET, PATCH, DELETE, HEAD"),
        ("PUT", "/", "GET, HEAD"),
        ("OPTIONS", "/status", "GET, HEAD"),
        ("DELETE", "/openapi.json", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(harness, method, path, allow):
    response = harness.request(method, path)
    assert response.code == 405
    assert response.header("allow") == allow
    assert response.json()["detail"]["allowed"] == allow.split(", ")


def test_ambiguous_port_is_400(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:80", "http://10.0.0.2:80"))
    response = h.request("GET", "/servers/get?port=80")
    assert response.code == 400
    assert response.json()["detail"]["ids"] == ["10.0.0.1:80", "10.0.0.2:80"]


# -- runtime changes --------------------------------------------------------------------


def test_update_weight_admin_and_backup(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    response = h.request("POST", "/servers/update?port=8080", body={"weight": 7})
    assert response.code == 200 and response.json()["weight"] == 7
    assert h.pool.get("10.0.0.1:8080").weight == 7
    response = h.request("PATCH", "/servers/10.0.0.1:8080", body={"admin": "maintenance", "backup": True})
    server = response.json()
    assert (server["admin"], server["backup"], server["eligible"]) == ("maintenance", True, False)
    assert h.state().config_changes[0].weight == 7
    assert h.state().config_changes[0].admin == "maintenance"
    assert h.request("PATCH", "/servers/8080", body={"admin": "ready"}).json()["eligible"] is True


@pytest.mark.parametrize(
    "raw, error",
    [
        (b"", "a JSON object body is required"),
        (b"{}", "nothing to change: give weight, admin or backup"),
        (b'{"admin": "drain"}', 'admin: must be "ready", "draining" or "maintenance"'),
        (b'{"admin": 1}', 'admin: must be "ready", "draining" or "maintenance"'),
        (b'{"weight": null}', "fields must not be null"),
        (b'{"weight": -1}', "weight: must be an integer from 0 to 1000"),
        (b'{"url": "http://a:1"}', "unknown field 'url'; known: weight, admin, backup".split(";")[0]),
    ],
)
def test_update_rejects_bad_bodies(tmp_path, raw, error):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    response = h.request("PATCH", "/servers/8080", raw=raw)
    assert response.code == 400
    assert response.json()["error"].startswith(error)


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


def test_stopping_answers_a_waiting_removal_with_503(tmp_path):
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:8080"))
    h.pool.lease(h.pool.get("10.0.0.1:8080"))
    d = h.send("DELETE", "/servers/remove?port=8080")
    h.flush()
    h.manager.stop()
    h.flush()
    assert result_of(d).code == 503
    assert h.request("POST", "/servers/add", body={"url": "http://10.0.0.3:1"}).code == 503


# -- persistence -----------------------------------------------------------------------


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


def test_a_failed_state_write_is_500_and_says_so(harness):
    def broken(path, state):
        raise OSError(28, "No space left on device")

    harness.writer.save_function = broken
    response = harness.request("POST", "/servers/add", body={"url": "http://10.0.0.5:80"})
    assert response.code == 500
    assert response.json()["error"] == "the change was applied but could not be saved to the state file"


# -- supervision ------------------------------------------------------------------------


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


# -- access control ------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [(r.methods[0], r.path.replace("{server}", "8081")) for r in ROUTES]
                         + [("GET", "/nope")])
def test_a_token_is_required_on_every_endpoint(tmp_path, method, path):
    h = Harness(str(tmp_path / "s.json"), token="s3cret")
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        response = h.request(method, path, headers=headers)
        assert response.code == 401, (path, headers)
        assert response.header("www-authenticate") == 'Bearer realm="heimdall manager"'
        assert set(response.json()) == {"error", "detail"}


def test_changes_are_logged_with_who_made_them(tmp_path):
    h = Harness(str(tmp_path / "s.json"), token="s3cret")
    with LogCapture() as log:
        response = h.request("POST", "/servers/add", body={"url": "http://10.0.0.5:80"},
                             headers={"Authorization": "Bearer s3cret"})
        assert response.code == 201
        h.request("PATCH", "/servers/80", body={"weight": 2}, headers={"authorization": "bearer s3cret"})
    changes = log.changes()
    assert [e["change"] for e in changes] == ["added", "updated"]
    assert all(e["authenticated"] is True and e["client"] for e in changes)
    assert "weight 1 -> 2" in changes[1]["detail"]

    open_ = Harness(str(tmp_path / "t.json"))
    with LogCapture() as log:
        open_.request("POST", "/servers/add", body={"url": "http://10.0.0.5:80"})
    assert log.changes()[0]["authenticated"] is False


def test_resolve_token_and_exposure():
    assert resolve_token(ManagerConfig()) is None
    assert resolve_token(ManagerConfig(token="t")) == "t"
    assert resolve_token(ManagerConfig(token_env="HT"), {"HT": "from-env"}) == "from-env"
    with pytest.raises(ConfigError, match="HT is not set or is empty"):
        resolve_token(ManagerConfig(token_env="HT"), {})
    check_exposure(ManagerConfig(), None)
    check_exposure(ManagerConfig(listen="tcp:9090:interface=0.0.0.0"), "t")
    with pytest.raises(ConfigError, match="is not a loopback address"):
        check_exposure(ManagerConfig(listen="tcp:9090:interface=0.0.0.0"), None)


@pytest.mark.parametrize(
    "endpoint, loopback",
    [
        ("tcp:9090:interface=127.0.0.1", True),
        ("tcp:9090:interface=127.0.0.2", True),
        ("tcp:9090:interface=localhost", True),
        ("tcp6:9090:interface=\\:\\:1", True),
        ("tcp:9090:127.0.0.1", True),
        ("unix:/run/heimdall.sock", True),
        ("tcp:9090", False),
        ("tcp:9090:interface=0.0.0.0", False),
        ("tcp:9090:interface=10.1.2.3", False),
        ("tcp6:9090", False),
        ("systemd:domain=INET:index=0", False),
    ],
)
def test_listens_on_loopback(endpoint, loopback):
    assert listens_on_loopback(endpoint) is loopback


# -- the OpenAPI document ----------------------------------------------------------------


def _route_table():
    return {(method, route.path) for route in ROUTES for method in route.methods}


def test_openapi_describes_exactly_the_routes(harness):
    document = harness.request("GET", "/openapi.json").json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    }
    assert documented == _route_table()
    for route in ROUTES:
        item = document["paths"][route.path]
        for method in route.methods:
            operation = item[method.lower()]
            declared = {p["name"] for p in operation.get("parameters", []) + item.get("parameters", [])
                        if p["in"] == "query"}
            assert declared == set(route.query), route.path
            codes = set(operation["responses"])
            assert "401" in codes
            if route.query:
                assert {"400", "404"} <= codes
            if method in ("POST", "PATCH"):
                assert {"400", "409", "413", "500", "503"} <= codes
    assert {"BadRequest", "Unauthorized", "NotFound", "MethodNotAllowed", "Conflict", "ContentTooLarge",
            "Unavailable"} <= set(document["components"]["responses"])


def test_openapi_schemas_match_real_answers(tmp_path):
    import jsonschema_rs  # installed with schemathesis (the test extra)
    h = Harness(str(tmp_path / "s.json"), _config_backends("http://10.0.0.1:80"))
    document = openapi_document()

    def validator(name):
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        return jsonschema_rs.Draft202012Validator(schema)

    added = h.request("POST", "/servers/add").json()
    validator("Server").validate(added)
    for server in h.request("GET", "/servers/list").json():
        validator("Server").validate(server)
    validator("Status").validate(h.request("GET", "/status").json())
    validator("Index").validate(h.request("GET", "/").json())
    validator("RemovedServer").validate(h.request("DELETE", "/servers/80").json())
    validator("Error").validate(h.request("GET", "/servers/get?port=1").json())
    h.spawner.crash(added["port"])
    validator("Server").validate(h.request("GET", f"/servers/{added['port']}").json())


# -- the manager's config keys ---------------------------------------------------------------


def test_manager_config_keys():
    from heimdall.config.model import RestartConfig, parse_config

    config = parse_config({"manager": {
        "ready_path": None, "ready_timeout": "3s", "stop_grace": 0,
        "restart": {"policy": "on-failure", "backoff": "250ms", "max_backoff": "5s", "max_restarts": 4,
                    "reset_after": "2m"},
    }})
    manager = config.manager
    assert (manager.ready_path, manager.ready_timeout, manager.stop_grace) == (None, 3.0, 0.0)
    assert manager.restart == RestartConfig("on-failure", 0.25, 5.0, 4, 120.0)
    assert RestartPolicy.from_config(manager.restart) == RestartPolicy("on-failure", 0.25, 5.0, 4, 120.0)
    defaults = parse_config({}).manager
    assert defaults.ready_path == "/health" and defaults.restart == RestartConfig()


@pytest.mark.parametrize(
    "manager, error",
    [
        ({"ready_path": "health"}, 'manager.ready_path: must be a path starting with "/"'),
        ({"ready_timeout": 0}, "manager.ready_timeout: must be greater than 0"),
        ({"restart": {"policy": "sometimes"}}, 'manager.restart.policy: must be one of "always", "on-failure", "never"'),
        ({"restart": {"backoff": "2s", "max_backoff": "1s"}}, "manager.restart.max_backoff: must not be less than backoff (2 s)"),
        ({"restart": {"max_restarts": -1}}, "manager.restart.max_restarts: must be an integer from 0 to 1000000"),
        ({"restart": {"polcy": "never"}}, 'manager.restart.polcy: unknown key; did you mean "policy"?'),
    ],
)
def test_manager_config_errors(manager, error):
    from heimdall.config.model import parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config({"manager": manager})
    assert str(caught.value).startswith(error)
