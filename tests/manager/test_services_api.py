"""
The manager API per service, against a twistd heimdall with two services:
the seed routes with and without ?service=, GET /services, an unknown
service, and each service's changes surviving a restart (its own state
file), a service's strategy changed at runtime.
"""

from __future__ import annotations

import urllib.request

from tests.manager.test_integration import _config, _wait_until, run_heimdall  # noqa: F401 (the fixture)
from tests.processes import free_base


def _backend_of(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["X-Backend"]


def test_the_seed_api_with_and_without_service(run_heimdall, tmp_path):
    config = {
        **_config(free_base(4)),
        "services": {"api": {"backends": []}},
        "routes": [{"match": {"path_prefix": "/api/"}, "service": "api", "strip_prefix": True}],
    }
    h = run_heimdall(config).wait_ready()
    status, api = h.call("POST", "/servers/add?service=api")
    assert status == 201, api
    status, web = h.call("POST", "/servers/add")
    assert status == 201, web
    assert api["id"] != web["id"]
    assert [s["id"] for s in h.call("GET", "/servers/list")[1]] == [web["id"]]
    assert [s["id"] for s in h.call("GET", "/servers/list?service=api")[1]] == [api["id"]]
    assert h.call("GET", f"/servers/get?id={api['id']}&service=api")[1]["port"] == api["port"]
    assert h.call("GET", f"/servers/get?id={api['id']}")[0] == 404  # not in default
    assert _backend_of(h.proxy + "/api/x") == api["id"]
    assert _backend_of(h.proxy + "/x") == web["id"]

    status, services = h.call("GET", "/services")
    assert status == 200 and [s["name"] for s in services] == ["default", "api"]
    assert services[1]["routes"] == [{"index": 0, "match": {"path_prefix": "/api/"}}]
    assert services[1]["counts"]["servers"] == 1 and services[1]["strategy"] == "round_robin"
    assert services[1]["state_file"].endswith("heimdall-state.api.json")

    status, error = h.call("GET", "/servers/list?service=nope")
    assert status == 404 and error["error"] == "no service 'nope'"
    assert error["detail"]["services"] == ["default", "api"]

    status, updated = h.call("POST", f"/servers/update?port={api['port']}&service=api", {"weight": 5})
    assert status == 200 and updated["weight"] == 5
    status, error = h.call("POST", "/services/update?service=api", {"strategy": "least_conections"})
    assert status == 400 and 'did you mean "least_connections"' in error["error"]
    status, changed = h.call("POST", "/services/update?service=api", {"strategy": "least_connections"})
    assert status == 200 and changed["strategy"] == "least_connections"
    assert h.call("GET", "/services")[1][0]["strategy"] == "round_robin"  # default unchanged
    h.stop()
    assert (tmp_path / "heimdall-state.api.json").exists()

    again = run_heimdall(config, name="again").wait_ready()
    # Spawned servers are restored (re-spawned) once heimdall listens.
    (restored,) = _wait_until(lambda: again.call("GET", "/servers/list?service=api")[1])
    assert (restored["id"], restored["weight"], restored["managed"]) == (api["id"], 5, True)
    assert [s["id"] for s in _wait_until(lambda: again.call("GET", "/servers/list")[1])] == [web["id"]]
    assert _backend_of(again.proxy + "/api/") == api["id"]
    assert [s["strategy"] for s in again.call("GET", "/services")[1]] == ["round_robin", "least_connections"]
    # The default service's strategy changed at runtime is what /metrics says.
    assert again.call("POST", "/services/update", {"strategy": "random"})[0] == 200
    with urllib.request.urlopen(again.manager + "/metrics", timeout=5) as response:
        exposition = response.read().decode()
    assert 'heimdall_strategy_info{strategy="random"} 1.0' in exposition, exposition
