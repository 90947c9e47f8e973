"""
POST /reload through real sockets, heimdall in this process: the diff is
applied (routes, weights, members added, removed and changed, services
added and removed, settings), what stays keeps its state, a bad config
is refused with the field path and changes nothing, runtime changes stay
on top, new backends wait for their first check, moved ports are re-bound.
"""

from __future__ import annotations

import hashlib
import json
import socket

import pytest_twisted
from twisted.internet import defer

from tests.netutil import free_port
from tests.reload.conftest import base_config, call, until
from tests.routing.conftest import backend_of, fetch


def _url(port):
    return f"http://127.0.0.1:{port}"


@defer.inlineCallbacks
def _backends_seen(http, url, n, host=None):
    seen = []
    for _ in range(n):
        response, _ = yield fetch(http, url, host=host)
        assert response.code == 200
        seen.append(backend_of(response))
    return seen


@pytest_twisted.inlineCallbacks
def test_reload_applies_routes_weights_and_members(tmp_path, start_backends, run_from_file, http, reactor):
    a, b, c, d = start_backends(4)
    config = base_config(
        tmp_path,
        backends=[_url(a), _url(b)],
        strategy="weighted_round_robin",
        services={"api": {"backends": [_url(c)]}},
        routes=[{"match": {"path_prefix": "/api"}, "service": "api"}],
    )
    running = yield run_from_file(config)
    service = running.service
    assert set((yield _backends_seen(http, running.proxy + "/x", 4))) == {f"127.0.0.1:{a}", f"127.0.0.1:{b}"}
    kept = service.pool.get(f"127.0.0.1:{a}")
    served_before = kept.requests_total
    kept_health = kept.health
    config.update(
        backends=[{"url": _url(a), "weight": 3}, _url(d)],
        routes=[{"match": {"path_prefix": "/v2"}, "service": "api"}],
    )
    running.write(config)
    code, report = yield call(http, "POST", running.manager + "/reload")
    assert code == 200, report
    assert report["backends"]["default"] == {
        "added": [f"127.0.0.1:{d}"], "removed": [f"127.0.0.1:{b}"], "changed": [f"127.0.0.1:{a}"]
    }
    assert report["changes"]["routes_changed"] and report["generation"] == 2
    # The member that stays is the same object, with its counters and health.
    assert service.pool.get(f"127.0.0.1:{a}") is kept
    assert kept.requests_total == served_before and kept.health is kept_health and kept.backend.weight == 3
    # The new routes at once; the new backend once its first check passed.
    response, _ = yield fetch(http, running.proxy + "/v2/x")
    assert backend_of(response) == f"127.0.0.1:{c}"
    yield until(reactor, lambda: service.pool.get(f"127.0.0.1:{b}") is None, what="b removed")
    seen = yield until(reactor, lambda: _backends_seen(http, running.proxy + "/api/x", 8), what="traffic")
    yield until(reactor, lambda: service.pool.get(f"127.0.0.1:{d}").health.value == "up", what="d checked")
    seen = yield _backends_seen(http, running.proxy + "/api/x", 8)
    assert set(seen) == {f"127.0.0.1:{a}", f"127.0.0.1:{d}"} and seen.count(f"127.0.0.1:{a}") == 6
    code, status = yield call(http, "GET", running.manager + "/status")
    assert status["config"]["sha256"] == hashlib.sha256(running.path.read_bytes()).hexdigest()
    assert status["config"]["generation"] == 2 and status["config"]["last_reload"]["applied"] is True
    assert status["config"]["path"] == str(running.path)


@pytest_twisted.inlineCallbacks
def test_a_bad_config_is_refused_and_nothing_changes(tmp_path, start_backends, run_from_file, http):
    (a,) = start_backends(1)
    config = base_config(tmp_path, backends=[_url(a)])
    running = yield run_from_file(config)
    code, before = yield call(http, "GET", running.manager + "/status")
    running.write({**config, "backends": [_url(a), "ftp://127.0.0.1:1"]})
    code, error = yield call(http, "POST", running.manager + "/reload")
    assert code == 400
    assert error["detail"]["field"] == "backends[1].url" and "scheme" in error["detail"]["problem"]
    assert "backends[1].url" in error["error"]
    running.path.write_text("{not json")
    code, error = yield call(http, "POST", running.manager + "/reload")
    assert code == 400 and error["detail"]["field"] == str(running.path) and "line 1" in error["error"]
    code, after = yield call(http, "GET", running.manager + "/status")
    assert after["config"]["sha256"] == before["config"]["sha256"] and after["config"]["generation"] == 1
    assert after["config"]["last_reload"]["applied"] is False
    assert (yield _backends_seen(http, running.proxy, 3)) == [f"127.0.0.1:{a}"] * 3
    code, error = yield call(http, "POST", running.manager + "/reload", {"force": True})
    assert code == 400 and error["detail"]["field"] == "force"


@pytest_twisted.inlineCallbacks
def test_runtime_changes_survive_a_reload(tmp_path, start_backends, run_from_file, http, reactor):
    a, b, c = start_backends(3)
    config = base_config(tmp_path, backends=[_url(a), _url(b)])
    running = yield run_from_file(config)
    code, added = yield call(http, "POST", running.manager + "/servers/add", {"url": _url(c), "weight": 2})
    assert code == 201
    code, _ = yield call(http, "POST", running.manager + f"/servers/update?port={a}", {"weight": 7})
    assert code == 200
    code, _ = yield call(http, "DELETE", running.manager + f"/servers/remove?port={b}")
    assert code == 200
    runtime = running.service.pool.get(f"127.0.0.1:{c}")
    config["retries"] = 1  # a change, with the same backends
    running.write(config)
    code, report = yield call(http, "POST", running.manager + "/reload")
    assert code == 200 and report["backends"]["default"] == {"added": [], "removed": [], "changed": []}
    code, servers = yield call(http, "GET", running.manager + "/servers/list")
    assert {(s["port"], s["weight"], s["source"]) for s in servers} == {(a, 7, "config"), (c, 2, "runtime")}
    assert running.service.pool.get(f"127.0.0.1:{c}") is runtime
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["config_removed"] == [f"127.0.0.1:{b}"]
    assert [s["url"] for s in state["servers"]] == [_url(c)]


@pytest_twisted.inlineCallbacks
def test_a_removed_backends_request_in_flight_completes(tmp_path, start_backends, run_from_file, http, reactor):
    a, b = start_backends(2)
    config = base_config(tmp_path, backends=[_url(a)])
    running = yield run_from_file(config)
    slow = fetch(http, running.proxy + "/delay?ms=700")
    yield until(reactor, lambda: running.service.pool.get(f"127.0.0.1:{a}").in_flight == 1, what="in flight")
    running.write({**config, "backends": [_url(b)], "health": {"type": "none"}})
    code, report = yield call(http, "POST", running.manager + "/reload")
    assert code == 200 and report["backends"]["default"]["removed"] == [f"127.0.0.1:{a}"]
    # Draining: no new request goes to it; with checks off the new one serves at once.
    assert running.service.pool.get(f"127.0.0.1:{a}").admin.value == "draining"
    assert (yield _backends_seen(http, running.proxy, 2)) == [f"127.0.0.1:{b}"] * 2
    response, body = yield slow
    assert response.code == 200 and backend_of(response) == f"127.0.0.1:{a}"
    yield until(reactor, lambda: running.service.pool.get(f"127.0.0.1:{a}") is None, what="a removed")


@pytest_twisted.inlineCallbacks
def test_a_new_backend_gets_no_request_before_its_first_check(tmp_path, start_backends, run_from_file, http):
    (a,) = start_backends(1)
    dead = free_port()  # nothing listens: its first check fails
    config = base_config(tmp_path, backends=[_url(a)])
    running = yield run_from_file(config)
    running.write({**config, "backends": [_url(a), _url(dead)]})
    code, report = yield call(http, "POST", running.manager + "/reload")
    assert code == 200
    member = running.service.pool.get(f"127.0.0.1:{dead}")
    # Waiting for its first check, or down after it (refused at once).
    assert member.checking or member.health.value == "down"
    assert (yield _backends_seen(http, running.proxy, 10)) == [f"127.0.0.1:{a}"] * 10
    assert member.requests_total == member.failures_total == 0


@pytest_twisted.inlineCallbacks
def test_services_come_and_go_and_settings_apply(tmp_path, start_backends, run_from_file, http, reactor):
    a, b = start_backends(2)
    config = base_config(tmp_path, backends=[_url(a)])
    running = yield run_from_file(config)
    config.update(
        services={"blue": {"backends": [_url(b)], "strategy": "least_connections"}},
        routes=[{"match": {"host": "blue.test"}, "service": "blue"}, {"match": {}, "service": "default"}],
        strategy="random",
    )
    running.write(config)
    code, report = yield call(http, "POST", running.manager + "/reload")
    assert code == 200, report
    assert report["changes"]["services_added"] == ["blue"]
    assert report["changes"]["services_changed"] == {"default": {"settings": ["strategy"], "backends": False}}
    yield until(reactor, lambda: running.service.proxy.services["blue"].pool.get(f"127.0.0.1:{b}").health.value
                == "up", what="blue checked")
    assert (yield _backends_seen(http, running.proxy, 2, host="blue.test")) == [f"127.0.0.1:{b}"] * 2
    # The live feed (GET /events, the dashboard) follows the new service.
    live = running.service.live
    assert [row["id"] for row in live.sample()["services"]["blue"]] == [f"127.0.0.1:{b}"]
    assert "blue" in [e.get("service") for e in live.snapshot()["events"] if e["type"] == "pool"]
    code, services = yield call(http, "GET", running.manager + "/services")
    assert {s["name"]: s["strategy"] for s in services} == {"default": "random", "blue": "least_connections"}
    code, _ = yield call(http, "GET", running.manager + "/servers/list?service=blue")
    assert code == 200
    del config["services"], config["routes"]
    running.write(config)
    code, report = yield call(http, "POST", running.manager + "/reload")
    assert code == 200 and report["changes"]["services_removed"] == ["blue"]
    assert (yield _backends_seen(http, running.proxy, 2, host="blue.test")) == [f"127.0.0.1:{a}"] * 2
    code, _ = yield call(http, "GET", running.manager + "/servers/list?service=blue")
    assert code == 404
    yield until(reactor, lambda: not running.service.proxy.services.get("blue") and "blue" not in
                running.service.reloader.stops, what="blue stopped")
    assert "blue" not in live.sample()["services"]


@pytest_twisted.inlineCallbacks
def test_a_runtime_strategy_stays_over_the_configs(tmp_path, start_backends, run_from_file, http):
    (a,) = start_backends(1)
    config = base_config(tmp_path, backends=[_url(a)])
    running = yield run_from_file(config)
    code, _ = yield call(http, "POST", running.manager + "/services/update", {"strategy": "least_connections"})
    assert code == 200
    running.write({**config, "strategy": "random"})
    code, _ = yield call(http, "POST", running.manager + "/reload")
    code, services = yield call(http, "GET", running.manager + "/services")
    assert services[0]["strategy"] == "least_connections"


def _raw_get(sock):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b" ")[1]


@pytest_twisted.inlineCallbacks
def test_a_moved_port_is_bound_first_and_open_connections_stay(tmp_path, start_backends, run_from_file, http):
    (a,) = start_backends(1)
    first, second = free_port(), free_port()
    config = base_config(tmp_path, backends=[_url(a)], listen=f"tcp:{first}:interface=127.0.0.1")
    running = yield run_from_file(config)
    client = socket.create_connection(("127.0.0.1", first))
    client.settimeout(5)
    try:
        assert (yield _threaded(_raw_get, client)) == b"200"
        running.write({**config, "listen": f"tcp:{second}:interface=127.0.0.1"})
        code, report = yield call(http, "POST", running.manager + "/reload")
        assert code == 200 and report["changes"]["listeners_changed"] == ["listen"]
        assert running.service.port.getHost().port == second
        response, _ = yield fetch(http, _url(second))
        assert response.code == 200
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", first)) != 0
        # A connection the old port accepted is served on.
        assert (yield _threaded(_raw_get, client)) == b"200"
        # A port that cannot be bound refuses the reload; the port stays.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            running.write({**config, "listen": f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"})
            code, error = yield call(http, "POST", running.manager + "/reload")
        assert code == 400 and error["detail"]["field"] == "listen"
        assert running.service.port.getHost().port == second
    finally:
        client.close()


def _threaded(function, *args):
    from twisted.internet import threads

    return threads.deferToThread(function, *args)


@pytest_twisted.inlineCallbacks
def test_another_url_for_the_same_backend_replaces_it(tmp_path, start_backends, run_from_file, http, reactor):
    (a,) = start_backends(1)
    config = base_config(tmp_path, backends=[_url(a)], health={"type": "none"})
    running = yield run_from_file(config)
    old = running.service.pool.get(f"127.0.0.1:{a}")
    running.write({**config, "backends": [f"https://127.0.0.1:{a}"]})
    code, report = yield call(http, "POST", running.manager + "/reload")
    assert code == 200 and report["backends"]["default"]["removed"] == [f"127.0.0.1:{a}"]
    assert report["backends"]["default"]["added"] == [f"127.0.0.1:{a}"]
    yield until(reactor, lambda: running.service.pool.get(f"127.0.0.1:{a}") not in (None, old),
                what="the new member")
    assert running.service.pool.get(f"127.0.0.1:{a}").backend.scheme == "https"


@pytest_twisted.inlineCallbacks
def test_a_connection_limit_set_through_the_api_is_kept_and_survives_a_reload(
    tmp_path, start_backends, run_from_file, http
):
    a, b = start_backends(2)
    config = base_config(tmp_path, backends=[{"url": _url(a), "max_connections": 2}])
    running = yield run_from_file(config)
    code, _ = yield call(http, "POST", running.manager + "/servers/add", {"url": _url(b)})
    assert code == 201
    code, server = yield call(http, "POST", running.manager + f"/servers/update?port={a}", {"max_connections": 5})
    assert code == 200 and server["max_connections"] == 5
    code, server = yield call(http, "PATCH", running.manager + f"/servers/{b}", {"max_connections": 3})
    assert code == 200 and server["max_connections"] == 3
    code, error = yield call(http, "PATCH", running.manager + f"/servers/{b}", {"max_connections": -1})
    assert code == 400 and error["detail"]["field"] == "max_connections"
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["config_changes"] == [{"id": f"127.0.0.1:{a}", "max_connections": 5}]
    assert state["servers"][0]["max_connections"] == 3
    # The state file's limit wins over the file's, on reload as at start.
    running.write({**config, "backends": [{"url": _url(a), "max_connections": 4}]})
    code, _ = yield call(http, "POST", running.manager + "/reload")
    assert code == 200
    pool = running.service.pool
    assert (pool.get(f"127.0.0.1:{a}").max_connections, pool.get(f"127.0.0.1:{b}").max_connections) == (5, 3)


@pytest_twisted.inlineCallbacks
def test_limits_apply_to_new_connections(tmp_path, start_backends, run_from_file, http):
    (a,) = start_backends(1)
    config = base_config(tmp_path, backends=[_url(a)])
    running = yield run_from_file(config)
    long_path = "/" + "x" * 600
    response, _ = yield fetch(http, running.proxy + long_path)
    assert response.code == 200
    running.write({**config, "limits": {"max_uri_bytes": 256}})
    code, report = yield call(http, "POST", running.manager + "/reload")
    assert code == 200 and report["changes"]["restart_needed"] == []
    client = socket.create_connection(("127.0.0.1", running.service.port.getHost().port), timeout=5)
    try:
        client.sendall(b"GET " + long_path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        head = yield _threaded(client.recv, 100)
    finally:
        client.close()
    assert head.startswith(b"HTTP/1.1 414")


@pytest_twisted.inlineCallbacks
def test_a_backend_back_while_it_still_drains_takes_over_before_the_other_leaves(
    tmp_path, start_backends, run_from_file, http, reactor
):
    a, b = start_backends(2)
    config = base_config(tmp_path, backends=[_url(b)])
    running = yield run_from_file(config)
    pool = running.service.pool
    slow = fetch(http, running.proxy + "/delay?ms=800")
    yield until(reactor, lambda: pool.get(f"127.0.0.1:{b}").in_flight == 1, what="in flight on b")
    running.write({**config, "backends": [_url(a)]})
    code, _ = yield call(http, "POST", running.manager + "/reload")
    assert code == 200
    yield until(reactor, lambda: pool.get(f"127.0.0.1:{a}").health.value == "up", what="a checked")
    # b is still draining (its request runs on) when the config wants it back.
    running.write({**config, "backends": [_url(b)]})
    code, _ = yield call(http, "POST", running.manager + "/reload")
    assert code == 200
    # a serves until b is back and checked: no request fails meanwhile.
    assert (yield _backends_seen(http, running.proxy, 5)) == [f"127.0.0.1:{a}"] * 5
    response, _ = yield slow
    assert response.code == 200
    yield until(reactor, lambda: pool.get(f"127.0.0.1:{a}") is None, what="a removed")
    assert (yield _backends_seen(http, running.proxy, 3)) == [f"127.0.0.1:{b}"] * 3
