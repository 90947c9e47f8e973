"""
Start and stop local backend servers as child processes.

L{ServerSpawner} runs a command (by default the demo backend,
L{heimdall.backend}) on the lowest free port at or above a base port, waits
until the port accepts TCP connections, and stops it again with SIGTERM,
then SIGKILL.  Every command runs under L{heimdall.childwrap}, so children
die with heimdall even when heimdall is killed with SIGKILL; on an orderly
shutdown the spawner, being a service, stops them itself.

The children's stdout and stderr are logged line by line, prefixed with the
port: C{[8081] heimdall backend listening on http://127.0.0.1:8081}.
"""

from __future__ import annotations

import collections
import os
import socket
import sys
from typing import Any, Callable, Collection, Deque, Dict, List, Optional, Sequence, Set

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from heimdall.clock import maybe_global_reactor
from heimdall.errors import HeimdallError
from heimdall.health.probes import accepts_connections
from heimdall.manager.deferreds import observe

__all__ = [
    "DEFAULT_COMMAND",
    "NoFreePort",
    "PortInUse",
    "ServerSpawner",
    "SpawnError",
    "SpawnedServer",
    "exit_code_of",
    "is_port_free",
]

_log = Logger(namespace="heimdall.manager.spawner")

#: The demo backend; C{{host}} and C{{port}} are filled in per spawn.
DEFAULT_COMMAND = (sys.executable, "-m", "heimdall.backend", "--host", "{host}", "--port", "{port}")

_MAX_SPAWN_ATTEMPTS = 3
_POLL_INTERVAL = 0.05
_CONNECT_TIMEOUT = 1.0
# After a stop, how long to wait for the port to become bindable again.
_PORT_RELEASE_TIMEOUT = 2.0
_OUTPUT_TAIL = 20
# A child writing without newlines is logged in pieces of this size rather
# than buffered without bound.
_MAX_LINE = 64 * 1024


class SpawnError(HeimdallError):
    """
    A spawned server did not become ready: it exited, timed out or the
    spawner was stopped meanwhile.

    @ivar port: the port it was started on.
    @ivar output: its last output lines (stdout and stderr interleaved).
    """

    def __init__(self, port: int, problem: str, output: Sequence[str] = ()) -> None:
        self.port = port
        self.problem = problem
        self.output = list(output)
        message = f"server on port {port} {problem}"
        if self.output:
            message += "; last output:\n" + "\n".join(f"  {line}" for line in self.output)
        super().__init__(message)


class NoFreePort(HeimdallError):
    """
    Every port of the spawner's range is taken (the manager reports it as
    L{heimdall.errors.NoSpawnPort}).
    """

    def __init__(self, host: str, base_port: int, port_range: int) -> None:
        self.host = host
        self.base_port = base_port
        self.port_range = port_range
        last = base_port + port_range - 1
        super().__init__(f"no free port on {host} from {base_port} to {last}")


class PortInUse(HeimdallError):
    """
    The port asked for explicitly is taken (by this spawner or by anyone).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(f"port {port} on {host} is not free")


def is_port_free(host: str, port: int) -> bool:
    """
    Whether a server could listen on C{host:port} now: binds a socket with
    C{SO_REUSEADDR} (as Twisted's listeners do, so connections in TIME_WAIT
    do not count) and closes it at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def exit_code_of(reason: Failure) -> int:
    """
    The exit status as C{subprocess} reports it: the exit code, or minus
    the signal number when a signal ended the process.
    """
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return -int(value.signal)
    code = getattr(value, "exitCode", None)
    return int(code) if code is not None else -1


@attrs.define(eq=False)
class SpawnedServer:
    """
    A server process started by L{ServerSpawner}.

    @ivar command: the argument list run under the child wrapper.
    @ivar exited: fires with the exit status (the exit code, or minus the
        signal number) when the process ends; never errbacks.
    @ivar exit_code: that status, None while running.
    """

    port: int
    host: str
    pid: int
    command: List[str]
    started_at: float
    exited: Deferred = attrs.field(factory=Deferred, repr=False)
    exit_code: Optional[int] = None
    _process: Any = attrs.field(default=None, repr=False)
    _output: Deque[str] = attrs.field(factory=lambda: collections.deque(maxlen=_OUTPUT_TAIL), repr=False)
    # Set once stop() (or a failed start) asked it to go: its exit is then
    # expected and not reported to the exit subscribers.
    _stop_requested: bool = attrs.field(default=False, repr=False)
    _stopping: Optional[Deferred] = attrs.field(default=None, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def recent_output(self) -> List[str]:
        """
        The last lines the process wrote (stdout and stderr), oldest first.
        """
        return list(self._output)


class _ChildProtocol(ProcessProtocol):
    """
    Logs a child's output line by line and reports its end.
    """

    def __init__(self, port: int, on_ended: Callable[[Failure], None]) -> None:
        self.port = port
        self.output: Deque[str] = collections.deque(maxlen=_OUTPUT_TAIL)
        self._on_ended = on_ended
        self._partial: Dict[int, bytearray] = {}

    def connectionMade(self) -> None:
        # The child never reads stdin: close it rather than leave a pipe.
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._partial.setdefault(childFD, bytearray())
        buffer += data
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) >= _MAX_LINE:
                    self._emit(childFD, bytes(buffer[:_MAX_LINE]))
                    del buffer[:_MAX_LINE]
                    continue
                break
            self._emit(childFD, bytes(buffer[:newline]))
            del buffer[: newline + 1]

    def childConnectionLost(self, childFD: int) -> None:
        self._flush(childFD)

    def processEnded(self, reason: Failure) -> None:
        for childFD in list(self._partial):
            self._flush(childFD)
        self._on_ended(reason)

    def _flush(self, childFD: int) -> None:
        buffer = self._partial.pop(childFD, None)
        if buffer:
            self._emit(childFD, bytes(buffer))

    def _emit(self, childFD: int, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.output.append(line)
        stream = "stderr" if childFD == 2 else "stdout"
        # The line is a field, not part of the format: braces in it are safe.
        _log.info("[{port}] {line}", port=self.port, line=line, stream=stream)


def _default_env() -> Dict[str, str]:
    env = dict(os.environ)
    # Output reaches the log line by line, not when a buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _check_command(instance: Any, attribute: Any, value: Optional[Sequence[str]]) -> None:
    if value is None:
        return
    if isinstance(value, str) or not value:
        raise ValueError("command must be a non-empty argument list")
    if not any("{port}" in argument for argument in value):
        raise ValueError("command must contain a {port} placeholder")


@attrs.define(eq=False, slots=False, kw_only=True)
class ServerSpawner(Service):
    """
    Starts local servers on free ports and stops them; a service whose
    C{stopService} stops every server it started.

    @ivar reactor: provides IReactorProcess, IReactorTime and IReactorTCP;
        None means the global reactor.
    @ivar base_port: ports C{base_port .. base_port + port_range - 1} are
        eligible for automatic placement.
    @ivar command: argument list with C{{port}} and optionally C{{host}};
        None means L{DEFAULT_COMMAND}.
    @ivar ready_timeout: seconds a server has to accept connections.
    @ivar stop_grace: seconds between SIGTERM and SIGKILL.
    @ivar env: the children's environment.
    """

    base_port: int = attrs.field(validator=attrs.validators.instance_of(int))
    reactor: Any = None
    host: str = "127.0.0.1"
    port_range: int = attrs.field(default=1000, validator=attrs.validators.instance_of(int))
    command: Optional[Sequence[str]] = attrs.field(default=None, validator=_check_command)
    ready_timeout: float = 10.0
    stop_grace: float = 5.0
    env: Dict[str, str] = attrs.field(factory=_default_env)

    _servers: Dict[int, SpawnedServer] = attrs.field(factory=dict, init=False, repr=False)
    # Processes started but not ready yet; their ports are reserved.
    _starting: Dict[int, SpawnedServer] = attrs.field(factory=dict, init=False, repr=False)
    _exit_subscribers: List[Callable[[SpawnedServer, Failure], Any]] = attrs.field(
        factory=list, init=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if not 0 < self.base_port < 65536 or self.port_range < 1:
            raise ValueError(f"invalid port range: base_port={self.base_port}, port_range={self.port_range}")

    # -- queries ---------------------------------------------------------

    def servers(self) -> List[SpawnedServer]:
        """
        The running servers that became ready, by port.
        """
        return [self._servers[port] for port in sorted(self._servers)]

    def get(self, port: int) -> Optional[SpawnedServer]:
        return self._servers.get(port)

    def subscribe_exit(self, callback: Callable[[SpawnedServer, Failure], Any]) -> None:
        """
        Call C{callback(server, reason)} whenever a ready server exits
        without having been stopped through this spawner; C{reason} is the
        process's end (L{ProcessDone} or L{ProcessTerminated} failure).
        """
        self._exit_subscribers.append(callback)

    def unsubscribe_exit(self, callback: Callable[[SpawnedServer, Failure], Any]) -> None:
        self._exit_subscribers.remove(callback)

    # -- spawning --------------------------------------------------------

    def spawn(self, port: Optional[int] = None, avoid: Collection[int] = ()) -> Deferred:
        """
        Start a server and wait until it accepts connections.

        @param port: exactly this port, or None for the lowest free port of
            the range (retried on the next free port, up to 3 attempts, if
            the process exits before it is ready).
        @param avoid: ports not to choose automatically even when free
            (the manager's: registered to a backend that is down, or
            reserved for a server being restored).
        @return: Deferred firing with the L{SpawnedServer}; fails with
            L{NoFreePort}, L{PortInUse} or L{SpawnError}.
        """
        return ensureDeferred(self._spawn(port, avoid))

    async def _spawn(self, port: Optional[int], avoid: Collection[int] = ()) -> SpawnedServer:
        attempts = 1 if port is not None else _MAX_SPAWN_ATTEMPTS
        tried: Set[int] = set(avoid)
        failure: Optional[SpawnError] = None
        for _ in range(attempts):
            if port is not None:
                chosen = port
                if chosen in self._servers or chosen in self._starting or not is_port_free(self.host, chosen):
                    raise PortInUse(self.host, chosen)
            else:
                chosen = self._find_free_port(tried)
            tried.add(chosen)
            server = self._launch(chosen)
            try:
                outcome = await self._wait_ready(server)
            finally:
                self._starting.pop(chosen, None)
            if outcome == "ready":
                self._servers[chosen] = server
                _log.info("[{port}] ready (pid {pid})", port=chosen, pid=server.pid)
                return server
            if outcome == "cancelled":
                await self._terminate(server)
                raise SpawnError(chosen, "was stopped before it was ready", server.recent_output())
            if outcome == "timeout":
                await self._terminate(server)
                raise SpawnError(
                    chosen,
                    f"did not accept connections within {self.ready_timeout:g} s",
                    server.recent_output(),
                )
            # Exited: perhaps someone else took the port meanwhile.
            failure = SpawnError(
                chosen, f"exited with status {server.exit_code} before it was ready", server.recent_output()
            )
            _log.warn("{problem}", problem=str(failure))
        assert failure is not None
        raise failure

    def _find_free_port(self, skip: Set[int]) -> int:
        for candidate in range(self.base_port, min(self.base_port + self.port_range, 65536)):
            if candidate in skip or candidate in self._servers or candidate in self._starting:
                continue
            if is_port_free(self.host, candidate):
                return candidate
        raise NoFreePort(self.host, self.base_port, self.port_range)

    def _final_command(self, port: int) -> List[str]:
        template = DEFAULT_COMMAND if self.command is None else self.command
        # str.replace, not str.format: other braces (JSON, shell) stay as they are.
        return [
            str(argument).replace("{port}", str(port)).replace("{host}", self.host) for argument in template
        ]

    def _launch(self, port: int) -> SpawnedServer:
        reactor = self._get_reactor()
        command = self._final_command(port)
        wrapped = [sys.executable, "-m", "heimdall.childwrap", "--parent-pid", str(os.getpid()), "--", *command]
        holder: List[SpawnedServer] = []
        protocol = _ChildProtocol(port, lambda reason: self._process_ended(holder[0], reason))
        process = reactor.spawnProcess(protocol, wrapped[0], wrapped, env=self.env)
        server = SpawnedServer(
            port=port,
            host=self.host,
            pid=process.pid,
            command=command,
            started_at=reactor.seconds(),
            process=process,
            output=protocol.output,
        )
        holder.append(server)
        self._starting[port] = server
        _log.info("[{port}] started pid {pid}: {command}", port=port, pid=server.pid, command=" ".join(command))
        return server

    async def _wait_ready(self, server: SpawnedServer) -> str:
        """
        Poll until the port accepts a connection: "ready", "exited",
        "timeout" or "cancelled" (stopped meanwhile).
        """
        reactor = self._get_reactor()
        deadline = reactor.seconds() + self.ready_timeout
        while True:
            if server._stop_requested:
                return "cancelled"
            if not server.running:
                return "exited"
            remaining = deadline - reactor.seconds()
            if remaining <= 0:
                return "timeout"
            accepted = await self._accepts_connections(server.port, min(remaining, _CONNECT_TIMEOUT))
            if server._stop_requested:
                return "cancelled"
            # Still running: the listener is our child, not an intruder
            # that made it exit.
            if accepted and server.running:
                return "ready"
            await deferLater(reactor, _POLL_INTERVAL, lambda: None)

    def _accepts_connections(self, port: int, timeout: float) -> Deferred:
        return accepts_connections(self._get_reactor(), self.host, port, timeout)

    # -- stopping --------------------------------------------------------

    def stop(self, port: int) -> Deferred:
        """
        Stop the server on C{port}: SIGTERM, then SIGKILL after
        C{stop_grace}.  Fires (with None) once it has exited and its port is
        bindable again (waited for at most 2 s).  A server still starting
        is stopped too (its C{spawn} then fails with L{SpawnError}).

        @raise KeyError: no server of this spawner is on C{port}.
        """
        server = self._servers.get(port) or self._starting.get(port)
        if server is None:
            raise KeyError(port)
        return self._terminate(server)

    def has(self, port: int) -> bool:
        """
        Whether a server of this spawner runs or is starting on C{port}.
        """
        return port in self._servers or port in self._starting

    def _terminate(self, server: SpawnedServer) -> Deferred:
        # One termination per server; concurrent callers share it.
        server._stop_requested = True
        if server._stopping is None:
            server._stopping = ensureDeferred(self._do_terminate(server))
        return observe(server._stopping)

    async def _do_terminate(self, server: SpawnedServer) -> None:
        reactor = self._get_reactor()
        if server.running:
            _log.info("[{port}] stopping pid {pid}", port=server.port, pid=server.pid)
            self._signal(server, "TERM")
            kill_call = reactor.callLater(self.stop_grace, self._signal, server, "KILL")
            try:
                await observe(server.exited)
            finally:
                if kill_call.active():
                    kill_call.cancel()
        deadline = reactor.seconds() + _PORT_RELEASE_TIMEOUT
        while not is_port_free(server.host, server.port):
            if reactor.seconds() >= deadline:
                _log.warn("[{port}] still not free after its server exited", port=server.port)
                return
            await deferLater(reactor, _POLL_INTERVAL, lambda: None)

    @staticmethod
    def _signal(server: SpawnedServer, name: str) -> None:
        try:
            server._process.signalProcess(name)
        except ProcessExitedAlready:
            pass
        except OSError as error:
            _log.warn("[{port}] cannot send SIG{name}: {error}", port=server.port, name=name, error=error)

    def _process_ended(self, server: SpawnedServer, reason: Failure) -> None:
        server.exit_code = exit_code_of(reason)
        unexpected = not server._stop_requested and self._servers.get(server.port) is server
        if self._servers.get(server.port) is server:
            del self._servers[server.port]
        _log.info("[{port}] pid {pid} exited with status {status}", port=server.port, pid=server.pid,
                  status=server.exit_code)
        if unexpected:
            for callback in list(self._exit_subscribers):
                try:
                    callback(server, reason)
                except Exception:
                    _log.failure("exit subscriber {callback!r} failed", callback=callback)
        server.exited.callback(server.exit_code)

    # -- service ---------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)

    def stopService(self) -> Deferred:
        """
        Stop every server, ready or starting; fires when all have exited.
        """
        Service.stopService(self)
        targets = list(self._servers.values()) + list(self._starting.values())
        stopped = DeferredList([self._terminate(server) for server in targets], consumeErrors=True)
        return stopped.addCallback(lambda _: None)

    def _get_reactor(self) -> Any:
        return maybe_global_reactor(self.reactor)
