"""
heimdall as users run it: `twistd -n heimdall --config FILE` in a real
process, with spawned demo backends.  Every process these tests start is
killed at the end, pass or fail.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request


from heimdall.manager.spawner import is_port_free
from tests.netutil import alive, free_port
from tests.processes import TWISTD, children, free_base

def _is_free(port):
    return is_port_free("127.0.0.1", port)


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers.get("X-Backend"), r.read()


def _config(listen_port, base, spawn=3):
    return {
        "listen": f"tcp:{listen_port}:interface=127.0.0.1",
        "spawn": spawn,
        "manager": {"listen": f"tcp:{free_port()}:interface=127.0.0.1", "base_port": base},
        "access_log": {"enabled": True, "format": "json"},
    }


def _spawned_pids(h, n):
    h.wait_for("spawned demo backend", timeout=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if h.output().count("spawned demo backend") >= n:
            break
        time.sleep(0.05)
    kids = children(h.proc.pid)
    assert len(kids) == n, (kids, h.output())
    h.extra_pids.update(kids)
    return kids


def test_spawns_three_backends_round_robin_then_sigterm_leaves_no_orphans(run_heimdall):
    port, base = free_port(), free_base(3)
    h = run_heimdall(_config(port, base))
    kids = _spawned_pids(h, 3)
    seen = [_get(f"http://127.0.0.1:{port}/")[1] for _ in range(6)]
    assert sorted(set(seen)) == sorted(f"127.0.0.1:{base + i}" for i in range(3))
    assert all(seen.count(b) == 2 for b in set(seen))
    # One JSON access-log line per request.
    lines = [l for l in h.output().splitlines() if '"status":200' in l]
    assert len(lines) == 6, h.output()
    record = json.loads(lines[0][lines[0].index("{") :])
    assert record["method"] == "GET" and record["backend"] in seen
    h.proc.send_signal(signal.SIGTERM)
    # twistd shuts down cleanly, then re-raises the signal it got, as Unix
    # daemons should: the exit status says "terminated by SIGTERM".
    assert h.proc.wait(timeout=15) == -signal.SIGTERM
    # Each spawned backend was stopped by heimdall, not left to die.
    assert h.output().count("exited with status 0") == 3, h.output()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.05)
    assert not any(alive(k) for k in kids)
    for i in range(3):
        assert _is_free(base + i)


def test_sigkill_of_heimdall_leaves_no_orphans(run_heimdall):
    port, base = free_port(), free_base(2)
    h = run_heimdall(_config(port, base, spawn=2))
    kids = _spawned_pids(h, 2)
    h.proc.send_signal(signal.SIGKILL)
    h.proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.05)
    assert not any(alive(k) for k in kids)


def test_a_held_port_is_skipped(run_heimdall):
    port, base = free_port(), free_base(3)
    holder = socket.socket()
    holder.bind(("127.0.0.1", base))
    holder.listen(1)
    try:
        h = run_heimdall(_config(port, base, spawn=1))
        _spawned_pids(h, 1)
        assert _get(f"http://127.0.0.1:{port}/")[1] == f"127.0.0.1:{base + 1}"
    finally:
        holder.close()


def test_bad_config_refuses_to_start(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"backends": ["http://127.0.0.1:1", "gopher://x:2"]}))
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "heimdall", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "backends[1].url: scheme must be http or https" in result.stdout + result.stderr


def test_log_section_json_to_a_file(run_heimdall, tmp_path):
    port = free_port()
    log_file = tmp_path / "heimdall.jsonl"
    config = _config(port, free_base(1), spawn=0)
    config["log"] = {"format": "json", "path": str(log_file), "level": "info"}
    run_heimdall(config)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if log_file.exists() and "heimdall proxy listening" in log_file.read_text():
            break
        time.sleep(0.05)
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(e.get("log_namespace") == "heimdall.service" for e in events)


def _start_backend(port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "heimdall.backend", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    proc.stdout.readline()  # "heimdall backend listening on ..."
    return proc


def _servers(manager_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{manager_port}/servers/list", timeout=5) as r:
        return {s["id"]: s for s in json.loads(r.read())}


def test_health_checks_are_wired_in_the_running_service(run_heimdall):
    """A killed external backend: no client error, reported down by the
    manager, and back in rotation after it restarts."""
    port, manager_port = free_port(), free_port()
    ports = [free_port(), free_port()]
    backends = [_start_backend(p) for p in ports]
    try:
        config = {
            "listen": f"tcp:{port}:interface=127.0.0.1",
            "backends": [f"http://127.0.0.1:{p}" for p in ports],
            "manager": {"listen": f"tcp:{manager_port}:interface=127.0.0.1", "state_file": "state.json"},
            "health": {"interval": "200ms", "down_interval": "100ms", "rise": 2, "fall": 2},
            "access_log": {"enabled": False},
        }
        h = run_heimdall(config)
        h.wait_for("heimdall proxy listening")
        dead = f"127.0.0.1:{ports[0]}"
        backends[0].kill()
        backends[0].wait()
        statuses = [_get(f"http://127.0.0.1:{port}/")[0] for _ in range(20)]
        assert statuses == [200] * 20
        deadline = time.monotonic() + 5
        while _servers(manager_port)[dead]["health"]["status"] != "down" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _servers(manager_port)[dead]["health"]["status"] == "down"
        backends[0] = _start_backend(ports[0])
        deadline = time.monotonic() + 5
        while _servers(manager_port)[dead]["health"]["status"] != "up" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _servers(manager_port)[dead]["health"]["status"] == "up"
        seen = {_get(f"http://127.0.0.1:{port}/")[1] for _ in range(6)}
        assert dead in seen
    finally:
        for proc in backends:
            proc.kill()
            proc.wait()


def test_request_id_and_log_reopen_on_sigusr1(run_heimdall, tmp_path):
    """X-Request-ID is kept or generated, returned and logged; SIGUSR1
    reopens the access log after logrotate moved it."""
    port = free_port()
    access = tmp_path / "access.log"
    config = _config(port, free_base(1), spawn=1)
    config["access_log"] = {"enabled": True, "format": "json", "path": str(access)}
    h = run_heimdall(config)
    _spawned_pids(h, 1)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/echo", headers={"X-Request-ID": "abc-123"})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.headers["X-Request-ID"] == "abc-123"
        echoed = json.loads(r.read())
    assert ["X-Request-Id", "abc-123"] in echoed["headers"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        generated = r.headers["X-Request-ID"]
    assert len(generated) == 32
    # A request id that could smuggle text into logs is replaced.
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"X-Request-ID": "a b"})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.headers["X-Request-ID"] != "a b"
    access.rename(tmp_path / "access.log.1")
    h.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not access.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _get(f"http://127.0.0.1:{port}/after-rotate")
    deadline = time.monotonic() + 5
    while "after-rotate" not in (access.read_text() if access.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    rotated = [json.loads(line) for line in (tmp_path / "access.log.1").read_text().splitlines()]
    assert {r["request_id"] for r in rotated} >= {"abc-123", generated}
    assert json.loads(access.read_text().splitlines()[-1])["path"] == "/after-rotate"


def test_metrics_served_by_the_manager(run_heimdall):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    port, manager_port = free_port(), free_port()
    config = _config(port, free_base(2), spawn=2)
    config["manager"]["listen"] = f"tcp:{manager_port}:interface=127.0.0.1"
    config["manager"]["state_file"] = "state.json"
    h = run_heimdall(config)
    _spawned_pids(h, 2)
    for _ in range(10):
        _get(f"http://127.0.0.1:{port}/")
    request = urllib.request.Request(
        f"http://127.0.0.1:{manager_port}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = sum(
        s.value for s in families["heimdall_requests"].samples if s.name == "heimdall_requests_total"
    )
    assert requests == 10
    assert "heimdall_upstream_ttfb_seconds" in families
