"""
C{heimdall ctl} against the real manager resource in memory (its HTTP
client replaced by a function that calls the resource through StubTreq).
The end-to-end run against a real heimdall is in
tests/test_manager_integration.py.
"""

from __future__ import annotations

import io
import json

import pytest

from heimdall.cli import main as cli_main
from heimdall.config.model import BackendConfig
from heimdall.ctl import main

from tests.manager.support import Harness


class Ctl:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.requests = []

    def send(self, method, url, headers, body, timeout):
        assert url.startswith("http://manager.test:9090")
        path = url[len("http://manager.test:9090"):]
        self.requests.append((method, path, dict(headers), body))
        response = self.harness.request(method, path, raw=body, headers=dict(headers))
        return response.code, response.body

    def __call__(self, *argv, environ=None):
        out, err = io.StringIO(), io.StringIO()
        code = main(["--manager", "http://manager.test:9090", *argv], send=self.send, stdout=out, stderr=err,
                    environ=environ or {})
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ctl(tmp_path):
    harness = Harness(str(tmp_path / "s.json"), (BackendConfig.from_url("http://10.0.0.1:8080", weight=2),))
    return Ctl(harness)


def test_list_prints_a_table(ctl):
    ctl.harness.request("POST", "/servers/add")
    code, out, err = ctl("list")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "PORT", "WEIGHT", "ADMIN", "HEALTH", "MANAGED", "IN-FLIGHT", "REQUESTS",
                                "FAILURES", "AVG-MS"]
    assert lines[1].split() == ["10.0.0.1:8080", "8080", "2", "ready", "unknown", "no", "0", "0", "0", "-"]
    assert lines[2].split() == ["127.0.0.1:8081", "8081", "1", "ready", "up", "pid", "1000", "0", "0", "0", "-"]


def test_json_output_is_the_api_answer(ctl):
    code, out, _ = ctl("--json", "list")
    assert code == 0
    assert json.loads(out) == ctl.harness.request("GET", "/servers/list").json()


def test_get_by_port_or_id(ctl):
    code, out, _ = ctl("get", "8080")
    assert code == 0
    assert "id            10.0.0.1:8080" in out and "weight        2" in out
    assert ctl.requests[-1][1] == "/servers/get?port=8080"
    code, out, _ = ctl("get", "10.0.0.1:8080")
    assert code == 0 and ctl.requests[-1][1] == "/servers/get?id=10.0.0.1%3A8080"


def test_add_spawned_and_external(ctl):
    code, out, _ = ctl("add")
    assert code == 0 and out.startswith("added 127.0.0.1:8081 (spawned, pid 1000)\n")
    assert ctl.requests[-1][3] is None  # no body: spawn
    code, out, _ = ctl("add", "--port", "8083", "--weight", "4")
    assert code == 0 and json.loads(ctl.requests[-1][3]) == {"port": 8083, "weight": 4}
    code, out, _ = ctl("add", "--url", "http://10.0.0.5:80", "--backup")
    assert code == 0 and out.startswith("added 10.0.0.5:80 (registered)\n")
    assert json.loads(ctl.requests[-1][3]) == {"url": "http://10.0.0.5:80", "backup": True}


def test_drain_ready_maintenance_weight_remove(ctl):
    assert ctl("drain", "8080")[1] == "10.0.0.1:8080 is draining (0 in flight)\n"
    assert ctl("maintenance", "8080")[1] == "10.0.0.1:8080 is maintenance (0 in flight)\n"
    assert ctl("ready", "8080")[1] == "10.0.0.1:8080 is ready (0 in flight)\n"
    assert ctl("weight", "10.0.0.1:8080", "7")[1] == "10.0.0.1:8080 has weight 7\n"
    assert ctl.harness.pool.get("10.0.0.1:8080").weight == 7
    ctl("add")
    code, out, _ = ctl("remove", "8081")
    assert code == 0 and out == "removed 127.0.0.1:8081 (drained in 0.0 s, process stopped, port free)\n"


def test_status(ctl):
    code, out, _ = ctl("status")
    assert code == 0 and "strategy round_robin" in out and "servers 1" in out


def test_errors_print_the_servers_message_and_exit_1(ctl):
    code, out, err = ctl("get", "9999")
    assert (code, out) == (1, "")
    assert err == "heimdall ctl: 404 no server on port 9999\n"
    code, _, err = ctl("weight", "8080", "5000")
    assert code == 1 and err == "heimdall ctl: 400 weight: must be an integer from 0 to 1000\n"
    code, _, err = ctl("add", "--port", "8080")
    assert code == 1 and "400 port 8080 is outside the manager's spawn range" in err


def test_token_from_option_or_environment(tmp_path):
    harness = Harness(str(tmp_path / "s.json"), token="s3cret")
    ctl = Ctl(harness)
    code, _, err = ctl("list")
    assert code == 1 and err == "heimdall ctl: 401 a bearer token is required\n"
    assert ctl("--token", "s3cret", "list")[0] == 0
    assert ctl.requests[-1][2]["Authorization"] == "Bearer s3cret"
    assert ctl("list", environ={"HEIMDALL_TOKEN": "s3cret"})[0] == 0


def test_unreachable_manager_exits_1():
    def refuse(*args):
        raise ConnectionRefusedError(111, "Connection refused")

    out, err = io.StringIO(), io.StringIO()
    code = main(["--manager", "http://127.0.0.1:1", "list"], send=refuse, stdout=out, stderr=err, environ={})
    assert code == 1
    assert err.getvalue().startswith("heimdall ctl: cannot reach the manager at http://127.0.0.1:1:")


def test_usage_errors_exit_2(capsys):
    assert main(["frobnicate"], environ={}) == 2
    assert main(["weight", "8080"], environ={}) == 2
    assert main(["add", "--port", "1", "--url", "http://a:1"], environ={}) == 2


def test_the_console_script_has_ctl(capsys):
    assert cli_main(["--help"]) == 0
    assert "ctl" in capsys.readouterr().out
    assert cli_main(["ctl", "--help"]) == 0
    assert "list" in capsys.readouterr().out
