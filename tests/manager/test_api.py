"""
The manager API in memory: the real resource and manager over a real pool,
with a fake spawner, a Clock and StubTreq.  Every endpoint, every error
status (the domain errors' mapping included), strict parsing, the token,
and the OpenAPI document's agreement with the routes.  The domain itself
is tested in test_servers.py, supervision in test_supervisor.py.
"""

from __future__ import annotations


import pytest
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from heimdall.config.model import BackendConfig
from heimdall.errors import ConfigError
from heimdall import errors
from heimdall.manager.api import MAX_BODY_BYTES, PUBLIC_PATHS, ROUTES, error_answer, openapi_document, status_of
from heimdall.pool.pool import AdminState
from heimdall.manager.spawner import SpawnError
from heimdall.manager.supervisor import RestartPolicy
from heimdall.manager.statefile import ServerRecord

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


# -- the one mapping of domain errors to statuses ---------------------------------------


@pytest.mark.parametrize(
    "error, status",
    [
        (errors.ServerNotFound("x"), 404),
        (errors.AmbiguousServer("x"), 400),
        (errors.InvalidChange("x"), 400),
        (errors.ServerConflict("x"), 409),
        (errors.NoSpawnPort("x"), 503),
        (errors.ServerDidNotStart("x"), 502),
        (errors.ManagerStopping("x"), 503),
        (errors.StateNotSaved("x"), 500),
        (errors.NotAuthenticated("x"), 401),
        (errors.ManagerError("x"), 500),
    ],
)
def test_each_domain_error_has_its_status(error, status):
    assert status_of(error) == status
    answer = error_answer(Failure(error))
    assert answer.status == status
    assert answer.payload == {"error": "x", "detail": None}


def test_an_unauthenticated_answer_carries_the_challenge():
    answer = error_answer(Failure(errors.NotAuthenticated("a bearer token is required")))
    assert answer.headers == (("WWW-Authenticate", 'Bearer realm="heimdall manager"'),)


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
        (b"{}", "nothing to change: give weight, admin, backup or max_connections"),
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


def test_a_failed_state_write_is_500_and_says_so(harness):
    def broken(path, state):
        raise OSError(28, "No space left on device")

    harness.writer.save_function = broken
    response = harness.request("POST", "/servers/add", body={"url": "http://10.0.0.5:80"})
    assert response.code == 500
    assert response.json()["error"] == "the change was applied but could not be saved to the state file"


# -- access control ------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [(r.methods[0], r.path.replace("{server}", "8081")) for r in ROUTES
                                           if r.path not in PUBLIC_PATHS] + [("GET", "/nope")])
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
            if route.path in PUBLIC_PATHS:
                assert operation["security"] == [] and "401" not in codes  # the dashboard's files
            else:
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


# -- the dashboard's files ---------------------------------------------------------------


@pytest.mark.parametrize("path, content_type", [
    ("/dashboard", "text/html; charset=utf-8"),
    ("/dashboard/app.js", "text/javascript; charset=utf-8"),
    ("/dashboard/style.css", "text/css; charset=utf-8"),
])
def test_the_dashboard_files_are_served_without_the_token(tmp_path, path, content_type):
    from heimdall.manager import dashboard

    h = Harness(str(tmp_path / "s.json"), token="s3cret")
    response = h.request("GET", path)
    assert response.code == 200 and response.header("content-type") == content_type
    assert response.body == dashboard.asset(path)[0] and len(response.body) > 500
    policy = response.header("content-security-policy")
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert h.request("HEAD", path).code == 200
    # Only those: everything with data still needs the token.
    assert h.request("GET", "/dashboard/other.js").code == 401
    assert h.request("GET", "/status").code == 401


def test_the_page_loads_nothing_from_elsewhere():
    from heimdall.manager import dashboard

    page = dashboard.asset("/dashboard")[0].decode()
    assert 'src="/dashboard/app.js"' in page and 'href="/dashboard/style.css"' in page
    for path in dashboard.FILES:
        text = dashboard.asset(path)[0].decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
        assert "MIT" in text  # the licence is noted in each file
