"""
Tests for L{heimdall.manager.spawner} and L{heimdall.childwrap}, with real
processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import List

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

from heimdall.manager.spawner import (
    NoFreePort,
    PortInUse,
    ServerSpawner,
    SpawnedServer,
    SpawnError,
    is_port_free,
)
from tests.manager.support import SLOW_START
from tests.netutil import alive

HOST = "127.0.0.1"


# -- helpers -----------------------------------------------------------------


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _lowest_free_port(start: int) -> int:
    port = start
    while not is_port_free(HOST, port):
        port += 1
    return port


async def _sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await deferLater(reactor, seconds, lambda: None)


async def _within(deferred: Deferred, seconds: float):
    from twisted.internet import reactor

    return await deferred.addTimeout(seconds, reactor)


def _spawner_delayed_calls() -> list:
    from twisted.internet import reactor

    return [call for call in reactor.getDelayedCalls() if getattr(call.func, "__name__", "") == "_signal"]


@pytest.fixture
def held_port():
    """
    A port number P with a listener of ours on it: the spawner must skip it.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind((HOST, 0))
        holder.listen(1)
        yield holder.getsockname()[1]
    finally:
        holder.close()


@pytest_twisted.async_yield_fixture
async def make_spawner():
    """
    Builds spawners on the global reactor; stops them all afterwards and, if
    that went wrong, kills whatever is left.
    """
    from twisted.internet import reactor

    created: List[ServerSpawner] = []
    pids: List[int] = []

    def make(**options) -> ServerSpawner:
        options.setdefault("ready_timeout", 8.0)
        options.setdefault("stop_grace", 2.0)
        spawner = ServerSpawner(reactor=reactor, host=HOST, **options)
        # Remember every pid, including ones that fail to start.
        original_launch = spawner._launch

        def launch(port: int) -> SpawnedServer:
            server = original_launch(port)
            pids.append(server.pid)
            return server

        spawner._launch = launch
        created.append(spawner)
        return spawner

    try:
        yield make
    finally:
        for spawner in created:
            await _within(spawner.stopService(), 8)
        for pid in pids:
            _kill_quietly(pid)


# -- spawning ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_spawn_skips_a_port_held_by_someone_else(held_port, make_spawner):
    from twisted.internet import reactor

    spawner = make_spawner(base_port=held_port)
    expected = _lowest_free_port(held_port)
    server = await spawner.spawn()
    assert expected > held_port
    assert server.port == expected
    assert server.host == HOST
    assert server.url == f"http://{HOST}:{expected}"
    assert server.running and server.exit_code is None
    assert server.started_at <= reactor.seconds()
    assert server.command[-2:] == ["--port", str(expected)]
    assert spawner.servers() == [server]
    assert spawner.get(expected) is server

    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        response = await client.get(server.url + "/health", timeout=5)
        assert response.code == 200
        assert response.headers.getRawHeaders(b"x-backend") == [f"{HOST}:{expected}".encode()]
        assert (await client.get(server.url + "/", timeout=5).addCallback(treq.json_content))["pid"] == server.pid
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_spawn_twice_gives_distinct_ports(held_port, make_spawner):
    spawner = make_spawner(base_port=held_port)
    first = await spawner.spawn()
    second = await spawner.spawn()
    assert first.port != second.port
    assert first.pid != second.pid
    assert held_port < first.port < second.port
    assert spawner.servers() == [first, second]


@pytest_twisted.ensureDeferred
async def test_spawn_on_an_explicit_port(held_port, make_spawner):
    spawner = make_spawner(base_port=held_port)
    with pytest.raises(PortInUse):
        await spawner.spawn(held_port)
    wanted = _lowest_free_port(held_port + 5)
    server = await spawner.spawn(wanted)
    assert server.port == wanted
    with pytest.raises(PortInUse):
        await spawner.spawn(wanted)


@pytest_twisted.ensureDeferred
async def test_no_free_port_when_the_range_is_exhausted(held_port, make_spawner):
    spawner = make_spawner(base_port=held_port, port_range=1)
    with pytest.raises(NoFreePort):
        await spawner.spawn()
    assert spawner.servers() == []


@pytest_twisted.ensureDeferred
async def test_a_command_that_exits_fails_with_its_output(held_port, make_spawner):
    command = [sys.executable, "-c", "import sys; print('boom on {host}:{port}'); sys.exit(3)"]
    spawner = make_spawner(base_port=held_port, command=command)
    with pytest.raises(SpawnError) as caught:
        await spawner.spawn()
    error = caught.value
    assert any(line.startswith("boom on 127.0.0.1:") for line in error.output)
    assert "exited with status 3" in str(error)
    assert spawner.servers() == []


@pytest_twisted.ensureDeferred
async def test_a_command_that_never_listens_times_out_and_is_killed(held_port, make_spawner):
    command = [sys.executable, "-c", "import os, time; print(os.getpid()); time.sleep(60)  # {port}"]
    spawner = make_spawner(base_port=held_port, command=command, ready_timeout=0.5)
    with pytest.raises(SpawnError) as caught:
        await spawner.spawn()
    assert "did not accept connections" in str(caught.value)
    (pid_line,) = caught.value.output
    assert not alive(int(pid_line))
    assert _spawner_delayed_calls() == []


def test_command_must_have_a_port_placeholder():
    with pytest.raises(ValueError):
        ServerSpawner(base_port=8000, command=["sleep", "10"])


# -- stopping ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_frees_the_port_and_ends_the_process(held_port, make_spawner):
    spawner = make_spawner(base_port=held_port)
    exits = []
    spawner.subscribe_exit(lambda server, reason: exits.append(server))
    server = await spawner.spawn()
    await _within(spawner.stop(server.port), 8)
    assert not server.running
    assert server.exit_code == 0  # the demo backend exits cleanly on SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    assert is_port_free(HOST, server.port)
    assert spawner.get(server.port) is None
    assert spawner.servers() == []
    assert exits == []  # a requested stop is not an unexpected exit
    assert _spawner_delayed_calls() == []
    assert await server.exited == 0
    with pytest.raises(KeyError):
        spawner.stop(server.port)


@pytest_twisted.ensureDeferred
async def test_stop_escalates_to_sigkill(held_port, make_spawner):
    # Ignores SIGTERM; listens so that it becomes ready.
    script = textwrap.dedent(
        """
        import signal, socket, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int("{port}")))
        listener.listen(5)
        time.sleep(60)
        """
    )
    spawner = make_spawner(base_port=held_port, command=[sys.executable, "-c", script], stop_grace=0.3)
    server = await spawner.spawn()
    await _within(spawner.stop(server.port), 5)
    assert server.exit_code == -signal.SIGKILL
    assert is_port_free(HOST, server.port)


@pytest_twisted.ensureDeferred
async def test_stop_service_stops_everything(held_port, make_spawner):
    spawner = make_spawner(base_port=held_port)
    spawner.startService()
    servers = [await spawner.spawn(), await spawner.spawn()]
    await _within(spawner.stopService(), 8)
    assert not spawner.running
    assert spawner.servers() == []
    for server in servers:
        assert not server.running
        assert not alive(server.pid)


@pytest_twisted.ensureDeferred
async def test_stop_service_cancels_a_spawn_in_progress(held_port, make_spawner):
    command = [sys.executable, "-c", "import os, time; print(os.getpid()); time.sleep(60)  # {port}"]
    spawner = make_spawner(base_port=held_port, command=command)
    spawning = spawner.spawn()
    await _sleep(0.3)
    await _within(spawner.stopService(), 5)
    with pytest.raises(SpawnError) as caught:
        await _within(spawning, 5)
    assert "stopped before it was ready" in str(caught.value)
    for line in caught.value.output:
        assert not alive(int(line))
    assert _spawner_delayed_calls() == []


# -- supervision and logging ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_exit_hook_fires_when_a_server_is_killed(held_port, make_spawner):
    spawner = make_spawner(base_port=held_port)
    reported: Deferred = Deferred()
    spawner.subscribe_exit(lambda server, reason: reported.callback((server, reason)))
    server = await spawner.spawn()
    os.kill(server.pid, signal.SIGKILL)
    exited_server, reason = await _within(reported, 5)
    assert exited_server is server
    assert reason.value.signal == signal.SIGKILL
    assert server.exit_code == -signal.SIGKILL
    assert spawner.get(server.port) is None


@pytest_twisted.ensureDeferred
async def test_child_output_is_logged_with_the_port(held_port, make_spawner):
    lines: List[str] = []

    def observe(event) -> None:
        if event.get("log_namespace") == "heimdall.manager.spawner":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        spawner = make_spawner(base_port=held_port)
        server = await spawner.spawn()
        expected = f"[{server.port}] heimdall backend listening on http://{HOST}:{server.port}"
        # The port may accept connections before the line has arrived.
        for _ in range(100):
            if expected in lines:
                break
            await _sleep(0.02)
        assert expected in lines
        assert f"heimdall backend listening on http://{HOST}:{server.port}" in server.recent_output()
    finally:
        globalLogPublisher.removeObserver(observe)


# -- no orphans ----------------------------------------------------------------

_PARENT_SCRIPT = """
import sys
from twisted.internet import reactor
from heimdall.manager.spawner import ServerSpawner

spawner = ServerSpawner(reactor=reactor, base_port=int(sys.argv[1]), stop_grace=2.0)

def spawned(server):
    print(server.pid, flush=True)

def failed(failure):
    print("ERROR", failure.getErrorMessage().replace("\\n", " "), flush=True)
    reactor.stop()

# SIGTERM stops the reactor; "before shutdown" waits for stopService.
reactor.addSystemEventTrigger("before", "shutdown", spawner.stopService)
reactor.callWhenRunning(lambda: spawner.spawn().addCallbacks(spawned, failed))
reactor.run()
"""


def _read_line(stream, deadline: float) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            break
        byte = os.read(stream.fileno(), 1)
        if not byte:
            break
        line += byte
    return line


@pytest.mark.parametrize("parent_signal", [signal.SIGKILL, signal.SIGTERM])
def test_spawned_server_dies_with_its_parent(tmp_path, held_port, parent_signal):
    # Blocking on purpose: the spawner runs in another process with its own reactor.
    script = tmp_path / "parent.py"
    script.write_text(_PARENT_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(held_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    child_pid = None
    try:
        line = _read_line(parent.stdout, time.monotonic() + 8).decode("ascii", "replace").strip()
        assert line.isdigit(), f"parent script said {line!r}"
        child_pid = int(line)
        assert alive(child_pid)

        parent.send_signal(parent_signal)
        parent.wait(timeout=5)
        deadline = time.monotonic() + 5
        while alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=5)
        parent.stdout.close()
        if child_pid is not None:
            _kill_quietly(child_pid)


def test_childwrap_refuses_to_start_without_its_parent():
    # Parent pid 1 is not our parent: the death signal could never arrive.
    result = subprocess.run(
        [sys.executable, "-m", "heimdall.childwrap", "--parent-pid", "1", "--", "true"],
        capture_output=True,
        timeout=5,
    )
    assert result.returncode == 1
    assert b"is gone" in result.stderr


# -- what the manager needs of the spawner (real processes, quick to start) -------------


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
