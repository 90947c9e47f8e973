"""
The manager API against heimdall running as users run it
(`twistd -n heimdall --config FILE`, in its own process and directory):
the seed's four curl commands, supervision of a killed server, the state
file surviving SIGKILL, schemathesis against /openapi.json, `heimdall ctl`,
the bearer token and 413 over real sockets, and start-up refusals.

Every process a test starts is killed at the end, pass or fail; every
port is a free one found at run time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from heimdall.manager.spawner import is_port_free
from heimdall.manager.statefile import load_state
from tests.netutil import alive, free_port, require
from tests.processes import TWISTD, HeimdallProcess, free_base

BIN = Path(sys.executable).parent


class Heimdall(HeimdallProcess):
    """
    A twistd heimdall and its manager API.
    """

    def __init__(self, directory, config, env=None, name="heimdall"):
        super().__init__(directory, config, env, name)
        self.manager = f"http://127.0.0.1:{_port_of(config['manager']['listen'])}"
        self.proxy = f"http://127.0.0.1:{_port_of(config['listen'])}"

    def wait_ready(self):
        self.wait_for("heimdall manager listening")
        return self

    def call(self, method, path, body=None, token=None, timeout=20):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.manager + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                status, raw = error.code, error.read()
        result = json.loads(raw)
        if isinstance(result, dict) and result.get("pid"):
            self.extra_pids.add(result["pid"])
        return status, result


def _port_of(endpoint):
    return int(endpoint.split(":")[1])


def _config(base, port_range=10, **manager):
    return {
        "listen": f"tcp:{free_port()}:interface=127.0.0.1",
        "spawn": 0,
        "manager": {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "base_port": base,
            "port_range": port_range,
            "drain_timeout": "2s",
            "stop_grace": "2s",
            "restart": {"backoff": "100ms", "max_backoff": "1s"},
            **manager,
        },
        "access_log": {"enabled": False},
    }


@pytest.fixture
def run_heimdall(run_heimdall):
    """The shared fixture (conftest.py), making processes with manager calls."""

    def run(config, env=None, name="heimdall"):
        return run_heimdall(config, env, name, process_class=Heimdall)

    return run


def _curl(*args):
    result = subprocess.run(
        ["curl", "-s", "--noproxy", "*", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


def _proxied_backend(proxy):
    with urllib.request.urlopen(proxy + "/", timeout=5) as response:
        return response.headers["X-Backend"]


def _wait_until(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def test_the_seed_curl_commands(run_heimdall):
    base = free_base(4)
    holder = socket.socket()  # another listener holds BASE_PORT: it is skipped
    holder.bind(("127.0.0.1", base))
    holder.listen(1)
    try:
        h = run_heimdall(_config(base)).wait_ready()
        manager_port = _port_of(h.config["manager"]["listen"])

        status, server = _curl("-X", "POST", f"http://localhost:{manager_port}/servers/add")
        added = time.monotonic()
        assert status == 201, server
        port, pid = server["port"], server["pid"]
        h.extra_pids.add(pid)
        assert port == base + 1 and server["managed"] is True and server["health"]["status"] == "up"
        # Proxied traffic reaches it within 1 s of the 201.
        assert _proxied_backend(h.proxy) == f"127.0.0.1:{port}"
        assert time.monotonic() - added < 1.0

        status, listed = _curl(f"http://localhost:{manager_port}/servers/list")
        assert status == 200 and [s["port"] for s in listed] == [port]
        status, got = _curl(f"http://localhost:{manager_port}/servers/get?port={port}")
        assert status == 200 and got["pid"] == pid and got["requests_total"] == 1

        status, removed = _curl("-X", "DELETE", f"http://localhost:{manager_port}/servers/remove?port={port}")
        assert status == 200, removed
        assert removed["removal"]["stopped"] is True and removed["removal"]["port_free"] is True
        assert is_port_free("127.0.0.1", port)
        _wait_until(lambda: not alive(pid), timeout=5)
        assert _curl(f"http://localhost:{manager_port}/servers/list") == (200, [])
        assert _curl(f"http://localhost:{manager_port}/servers/get?port={port}")[0] == 404
        state = load_state(str(h.directory / "heimdall-state.json"))
        assert state is not None and state.servers == ()
    finally:
        holder.close()


def test_a_killed_server_is_down_at_once_and_restarted_on_its_port(run_heimdall):
    h = run_heimdall(_config(free_base(3))).wait_ready()
    status, server = h.call("POST", "/servers/add")
    assert status == 201
    port, pid = server["port"], server["pid"]
    os.kill(pid, signal.SIGKILL)
    down = _wait_until(lambda: (lambda s: s if s["health"]["status"] == "down" else None)(
        h.call("GET", f"/servers/{port}")[1]), timeout=1)
    assert down["health"]["reason"] == f"process exited with status -{int(signal.SIGKILL)}"
    assert "ALERT backend" in h.output()
    restarted = _wait_until(lambda: (lambda s: s if s["health"]["status"] == "up" else None)(
        h.call("GET", f"/servers/{port}")[1]), timeout=10)
    assert restarted["port"] == port and restarted["pid"] not in (None, pid) and restarted["restarts"] == 1
    assert _proxied_backend(h.proxy) == f"127.0.0.1:{port}"
    # Stopping heimdall stops it: no orphan.
    h.proc.send_signal(signal.SIGTERM)
    h.proc.wait(timeout=15)
    _wait_until(lambda: not alive(restarted["pid"]), timeout=5)
    assert is_port_free("127.0.0.1", port)


def test_twenty_changes_survive_sigkill(run_heimdall):
    base = free_base(4)
    config = _config(base)
    config["backends"] = ["http://10.255.1.1:80", "http://10.255.1.2:80"]
    h = run_heimdall(config).wait_ready()
    changes = [
        ("POST", "/servers/add", None),
        ("POST", "/servers/add", {"port": base + 2, "weight": 3}),
    ]
    changes += [("POST", "/servers/add", {"url": f"http://10.255.0.{i}:80", "weight": i}) for i in range(1, 7)]
    changes += [("PATCH", f"/servers/10.255.0.{i}:80", {"weight": 10 * i}) for i in range(1, 7)]
    changes += [
        ("POST", "/servers/update?id=10.255.0.1:80", {"admin": "draining"}),
        ("PATCH", "/servers/10.255.0.2:80", {"admin": "maintenance", "backup": True}),
        ("PATCH", f"/servers/{base}", {"admin": "maintenance"}),
        ("DELETE", "/servers/remove?id=10.255.0.6:80", None),
        ("PATCH", "/servers/10.255.1.1:80", {"weight": 7}),
        ("DELETE", "/servers/10.255.1.2:80", None),
    ]
    assert len(changes) == 20
    for method, path, body in changes:
        status, answer = h.call(method, path, body)
        assert status in (200, 201), (method, path, answer)
    _, before = h.call("GET", "/servers/list")
    spawned = [s["pid"] for s in before if s["managed"]]
    h.proc.send_signal(signal.SIGKILL)  # right after the 20th answer
    h.proc.wait(timeout=10)

    state_path = h.directory / "heimdall-state.json"
    json.loads(state_path.read_text())  # valid JSON
    state = load_state(str(state_path))
    assert len(state.servers) == 7 and state.config_removed == ("10.255.1.2:80",)
    # The spawned servers die with heimdall; wait for their ports.
    _wait_until(lambda: not any(alive(pid) for pid in spawned), timeout=5)
    _wait_until(lambda: is_port_free("127.0.0.1", base) and is_port_free("127.0.0.1", base + 2), timeout=5)

    again = run_heimdall(config, name="restarted").wait_ready()
    _wait_until(lambda: sum(s["health"]["status"] == "up" for s in again.call("GET", "/servers/list")[1]) == 2)
    _, after = again.call("GET", "/servers/list")
    keys = ("id", "port", "weight", "admin", "backup", "managed", "source")
    assert sorted(tuple(s[k] for k in keys) for s in after) == sorted(tuple(s[k] for k in keys) for s in before)


def test_schemathesis_finds_no_failure(run_heimdall):
    schemathesis = BIN / "schemathesis"
    require(schemathesis.exists(), "schemathesis")
    # A light command to spawn (http.server starts in a fraction of the
    # demo backend's time), and room for every spawn the run asks for.
    config = _config(
        free_base(40),
        port_range=40,
        command=[sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
        ready_path="/",
        drain_timeout=0,
    )
    h = run_heimdall(config).wait_ready()
    result = subprocess.run(
        [
            str(schemathesis), "run", h.manager + "/openapi.json",
            "--checks", "all",
            # "port or id" and "a port within the manager's range" are rules
            # OpenAPI cannot state, so schema-valid requests may get 400.
            "--exclude-checks", "positive_data_acceptance",
            "--phases", "examples,coverage,fuzzing",
            # Bounded: at most 10 examples an operation (--max-time would
            # instead keep fuzzing until the time is spent).
            "--max-examples", "10",
            # The event stream never ends (tests/manager/test_events.py tests it).
            "--exclude-path", "/events",
            "--request-timeout", "10",
            "--seed", "1",
        ],
        capture_output=True, text=True, timeout=90, cwd=h.directory,
        env={**os.environ, "NO_COLOR": "1", "no_proxy": "*", "NO_PROXY": "*"},
    )
    _, servers = h.call("GET", "/servers/list")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failure" not in result.stdout.split("SUMMARY")[-1].lower()
    assert all(s["managed"] is False or s["pid"] for s in servers)


def test_ctl_token_and_limits_over_real_sockets(run_heimdall):
    # Listening on every interface is allowed with a token (from the
    # environment here); only 127.0.0.1 is ever connected to.
    config = _config(free_base(3), token_env="TEST_HEIMDALL_TOKEN")
    config["manager"]["listen"] = config["manager"]["listen"].replace(":interface=127.0.0.1", ":interface=0.0.0.0")
    h = run_heimdall(config, env={"TEST_HEIMDALL_TOKEN": "s3cret"}).wait_ready()
    assert "(bearer token required)" in h.output()
    assert h.call("GET", "/servers/list")[0] == 401
    assert h.call("GET", "/servers/list", token="wrong")[0] == 401
    assert h.call("GET", "/servers/list", token="s3cret") == (200, [])

    ctl = [str(BIN / "heimdall"), "ctl", "--manager", h.manager, "--token", "s3cret"]
    run = lambda *args: subprocess.run([*ctl, *args], capture_output=True, text=True, timeout=30)  # noqa: E731
    added = run("add")
    assert added.returncode == 0, added.stderr
    port = int(added.stdout.split()[1].split(":")[1])
    h.extra_pids.add(h.call("GET", f"/servers/{port}", token="s3cret")[1]["pid"])
    listed = run("list")
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].startswith("ID ")
    assert f"127.0.0.1:{port}" in listed.stdout
    assert run("weight", str(port), "5").stdout == f"127.0.0.1:{port} has weight 5\n"
    missing = run("get", "1")
    assert missing.returncode == 1 and missing.stderr == "heimdall ctl: 404 no server on port 1\n"
    unauthorized = subprocess.run([str(BIN / "heimdall"), "ctl", "--manager", h.manager, "list"],
                                  capture_output=True, text=True, timeout=30)
    assert unauthorized.returncode == 1 and "401 a bearer token is required" in unauthorized.stderr
    removed = run("remove", str(port))
    assert removed.returncode == 0 and "process stopped, port free" in removed.stdout

    # 413 before the body is read: from Content-Length, with no 100 Continue.
    manager_port = _port_of(h.config["manager"]["listen"])
    with socket.create_connection(("127.0.0.1", manager_port), timeout=5) as raw:
        raw.sendall(b"POST /servers/add HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer s3cret\r\n"
                    b"Expect: 100-continue\r\nContent-Length: 10000000\r\n\r\n")
        answer = _read_all(raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer
    assert json.loads(body) == {"error": "request body too large", "detail": {"limit": 65536}}
    # And while a chunked body arrives.
    with socket.create_connection(("127.0.0.1", manager_port), timeout=5) as raw:
        raw.sendall(b"POST /servers/add HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 40000
        try:
            for _ in range(3):
                raw.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # closed on us: expected
        answer = _read_all(raw)
    assert answer.startswith(b"HTTP/1.1 413 ")


def _read_all(sock):
    data = b""
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                return data
            data += piece
    except ConnectionResetError:
        return data


@pytest.mark.parametrize(
    "change, env, message",
    [
        ({"listen": "tcp:{port}"}, {}, "invalid configuration: manager.listen: tcp:{port} is not a loopback address"),
        ({"token_env": "TEST_HEIMDALL_UNSET"}, {}, "the environment variable TEST_HEIMDALL_UNSET is not set"),
        ({}, {}, "cannot start: state file {dir}/heimdall-state.json is corrupt: invalid JSON at line 1"),
    ],
)
def test_refuses_to_start(tmp_path, change, env, message):
    port = free_port()
    config = _config(free_base(1))
    config["manager"].update({k: v.format(port=port) for k, v in change.items()})
    if not change:
        (tmp_path / "heimdall-state.json").write_text('{"version": 1, "servers": [')
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "heimdall", "--config", "config.json"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "TEST_HEIMDALL_UNSET"},
    )
    assert result.returncode != 0
    assert message.format(port=port, dir=tmp_path) in result.stdout + result.stderr
    if not change:  # never silently discarded
        assert (tmp_path / "heimdall-state.json").read_text() == '{"version": 1, "servers": ['


def test_a_manager_port_in_use_stops_heimdall_with_status_1(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        config = _config(free_base(1))
        config["manager"]["listen"] = f"tcp:{holder.getsockname()[1]}:interface=127.0.0.1"
        (tmp_path / "config.json").write_text(json.dumps(config))
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "heimdall", "--config", "config.json"],
            capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert "heimdall failed to start" in result.stdout and "Address already in use" in result.stdout
