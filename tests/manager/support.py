"""
Helpers for the manager tests (no tests here): an in-memory manager: the real L{ServerManager} and
L{ManagerResource} over a real L{BackendPool}, a fake spawner, a
L{Clock}, a synchronous state writer in a temporary directory, and
C{treq.testing.StubTreq} as the HTTP client.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from treq.testing import StubTreq

from heimdall.config.model import BackendConfig
from heimdall.manager.servers import ServerManager
from heimdall.manager.site import ManagerResource
from heimdall.pool.pool import BackendPool
from heimdall.strategies.registry import default_registry
from heimdall.manager.spawner import NoFreePort, PortInUse, SpawnedServer
from heimdall.manager.supervisor import RestartPolicy
from heimdall.manager.statefile import State, StateWriter, load_state

#: Real commands for the spawner tests: one that starts in a fraction of the
#: demo backend's time, and one that never listens.
QUICK = (sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1")
SLOW_START = (sys.executable, "-c", "import time; time.sleep(30)", "{port}")


class FakeSpawner:
    """
    Spawns nothing: "servers" are L{SpawnedServer} records.  C{held}
    ports are taken by other processes; C{failures} makes the next spawns
    fail; C{crash(port)} simulates an unexpected exit.
    """

    host = "127.0.0.1"

    def __init__(self, clock: Clock, base_port: int = 8081, port_range: int = 5) -> None:
        self.clock = clock
        self.base_port = base_port
        self.port_range = port_range
        self.servers: Dict[int, SpawnedServer] = {}
        self.held: Set[int] = set()
        self.failures: List[Exception] = []
        self.stopped: List[int] = []
        self.spawned: List[int] = []
        self.pending: Optional[Deferred] = None  # when set, spawns wait for it
        self._exit_subscribers: List[Callable] = []
        self._pids = itertools.count(1000)

    def spawn(self, port: Optional[int] = None, avoid=()) -> Deferred:
        if self.failures:
            return fail(self.failures.pop(0))
        if port is None:
            for candidate in range(self.base_port, self.base_port + self.port_range):
                if candidate not in self.servers and candidate not in self.held and candidate not in avoid:
                    port = candidate
                    break
            else:
                return fail(NoFreePort(self.host, self.base_port, self.port_range))
        elif port in self.servers or port in self.held:
            return fail(PortInUse(self.host, port))
        server = SpawnedServer(port=port, host=self.host, pid=next(self._pids), command=["demo"],
                               started_at=self.clock.seconds())
        self.servers[port] = server
        self.spawned.append(port)
        if self.pending is not None:
            waiting = self.pending
            return waiting.addCallback(lambda _: server)
        return succeed(server)

    def stop(self, port: int) -> Deferred:
        server = self.servers.pop(port)
        server.exit_code = 0
        self.stopped.append(port)
        return succeed(None)

    def has(self, port: int) -> bool:
        return port in self.servers

    def get(self, port: int) -> Optional[SpawnedServer]:
        return self.servers.get(port)

    def subscribe_exit(self, callback: Callable) -> None:
        self._exit_subscribers.append(callback)

    def unsubscribe_exit(self, callback: Callable) -> None:
        self._exit_subscribers.remove(callback)

    def crash(self, port: int, code: int = 1) -> SpawnedServer:
        server = self.servers.pop(port)
        server.exit_code = code
        for callback in list(self._exit_subscribers):
            callback(server, Failure(ProcessTerminated(exitCode=code)))
        return server


class Response:
    def __init__(self, code: int, headers: Dict[str, List[str]], body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class Harness:
    def __init__(
        self,
        state_path: str,
        config_backends: Tuple[BackendConfig, ...] = (),
        state: Optional[State] = None,
        token: Optional[str] = None,
        drain_timeout: float = 5.0,
        restart_policy: RestartPolicy = RestartPolicy(backoff=1.0, max_backoff=8.0),
        ready_check: Optional[Callable] = None,
        clock: Optional[Clock] = None,
        spawner: Optional[FakeSpawner] = None,
    ) -> None:
        self.clock = clock or Clock()
        self.clock.advance(1_700_000_000)
        self.pool = BackendPool(default_registry().create("round_robin", {}, random.Random(0), self.clock),
                                clock=self.clock)
        self.spawner = spawner or FakeSpawner(self.clock)
        self.state_path = state_path
        self.writer = StateWriter(state_path)
        self.manager = ServerManager(
            pool=self.pool,
            spawner=self.spawner,
            clock=self.clock,
            writer=self.writer,
            drain_timeout=drain_timeout,
            ready_check=ready_check,
            restart_policy=restart_policy,
            config_backends=config_backends,
            port_free=lambda host, port: True,
        )
        self.to_restore = self.manager.load(state)
        self.resource = ManagerResource(self.manager, token=token)
        self.stub = StubTreq(self.resource)
        self.events: List[Any] = []
        self.pool.subscribe(self.events.append)

    def start(self) -> Deferred:
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(self.manager.start_managed(self.to_restore))

    def send(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
             raw: Optional[bytes] = None) -> Deferred:
        """
        Start a request; returns a Deferred of a L{Response} (call
        C{flush()} to move it along).
        """
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        encoded_headers = {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        d = self.stub.request(method, "http://manager.test" + path, data=data, headers=encoded_headers)

        def read(response):
            content = self.stub.content(response)
            headers_ = {
                name.decode().lower(): [v.decode() for v in values]
                for name, values in response.headers.getAllRawHeaders()
            }
            return content.addCallback(lambda body_: Response(response.code, headers_, body_))

        return d.addCallback(read)

    def flush(self) -> None:
        self.stub.flush()

    def request(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
                raw: Optional[bytes] = None) -> Response:
        """
        A whole exchange that must complete without the clock moving.
        """
        d = self.send(method, path, body, headers, raw)
        self.flush()
        return result_of(d)

    def state(self) -> Optional[State]:
        return load_state(self.state_path)


def result_of(d: Deferred) -> Any:
    results: List[Any] = []
    d.addBoth(lambda result: results.append(result) or result)
    assert results, "the request has not completed"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def pending(d: Deferred) -> bool:
    results: List[Any] = []
    d.addBoth(lambda r: results.append(r) or r)
    return not results


class LogCapture:
    def __init__(self) -> None:
        self.events: List[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def __enter__(self) -> "LogCapture":
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self)

    def changes(self) -> List[dict]:
        return [e for e in self.events if "change" in e and e.get("log_namespace") == "heimdall.manager.servers"]
