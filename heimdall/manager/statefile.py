"""
The manager's state file: every runtime change, kept across restarts.

config.json is never rewritten.  What the manager changed at runtime is
kept beside it, in C{manager.state_file}, as a JSON document::

    {
      "version": 1,
      "servers": [
        {"url": "http://127.0.0.1:8081", "weight": 1, "backup": false,
         "admin": "ready", "managed": true, "max_connections": 8},
        {"url": "http://10.0.0.5:8080", "weight": 2, "backup": false,
         "admin": "draining", "managed": false}
      ],
      "config_changes": [{"id": "10.0.0.7:8000", "weight": 5, "max_connections": 4}],
      "config_removed": ["10.0.0.6:8000"]
    }

  - C{servers}: the servers that are not in config.json: added through
    the manager, or spawned by heimdall (C{managed}, re-spawned on their
    port at start), in the order they were added;
  - C{config_changes}: weight, admin state, backup flag or
    C{max_connections} of config.json backends, where they differ from
    the file;
  - C{config_removed}: config.json backends removed through the manager,
    so that they stay removed after a restart.

The file is written atomically (a temporary file in the same directory,
fsync, rename, fsync of the directory): after a crash it holds either the
old or the new state, never a mix.  A file that cannot be read or parsed is
a L{StateFileError} naming the file; it is never silently discarded.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, List, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from heimdall.config.reader import ReadError, build, loads, read_list, read_object
from heimdall.errors import HeimdallError
from heimdall.pool.pool import Backend

__all__ = [
    "ADMIN_STATES",
    "STATE_VERSION",
    "ConfigChange",
    "ServerRecord",
    "State",
    "StateFileError",
    "StateWriter",
    "dump_state",
    "load_state",
    "parse_state",
    "save_state",
]

_log = Logger()

STATE_VERSION = 1
ADMIN_STATES = ("ready", "draining", "maintenance")


class StateFileError(HeimdallError):
    """
    The state file cannot be read, parsed or written.  C{str(error)} names
    the file: C{state file /var/lib/heimdall/state.json is corrupt: invalid
    JSON at line 3 column 1: ...}.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state file {path} {problem}")


def _check_weight(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise ValueError(f"{attribute.name} must be an integer from 0 to 1000, not {value!r}")


def _check_admin(instance, attribute, value) -> None:
    if value not in ADMIN_STATES:
        raise ValueError(f"{attribute.name} must be one of {', '.join(ADMIN_STATES)}, not {value!r}")


def _check_url(instance, attribute, value) -> None:
    Backend.from_url(value)  # raises ValueError with the reason


def _optional(check):
    def validate(instance, attribute, value):
        if value is not None:
            check(instance, attribute, value)

    return validate


def _check_limit(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000000:
        raise ValueError(f"{attribute.name} must be an integer from 0 to 1000000, not {value!r}")


def _check_bool(instance, attribute, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be true or false, not {value!r}")


@attrs.frozen
class ServerRecord:
    """
    A server that is not in config.json.
    """

    url: str = attrs.field(validator=_check_url)
    weight: int = attrs.field(default=1, validator=_check_weight)
    backup: bool = attrs.field(default=False, validator=_check_bool)
    admin: str = attrs.field(default="ready", validator=_check_admin)
    managed: bool = attrs.field(default=False, validator=_check_bool)
    #: Requests in flight it may have at most (0: no limit).
    max_connections: int = attrs.field(default=0, validator=_check_limit)

    @property
    def backend(self) -> Backend:
        return Backend.from_url(self.url, self.weight)

    @property
    def id(self) -> str:
        return self.backend.id

    @property
    def port(self) -> int:
        return self.backend.port


@attrs.frozen
class ConfigChange:
    """
    How a config.json backend differs from the file now; L{None}: as in
    the file.
    """

    id: str = attrs.field(validator=attrs.validators.instance_of(str))
    weight: Optional[int] = attrs.field(default=None, validator=_optional(_check_weight))
    admin: Optional[str] = attrs.field(default=None, validator=_optional(_check_admin))
    backup: Optional[bool] = attrs.field(default=None, validator=_optional(_check_bool))
    max_connections: Optional[int] = attrs.field(default=None, validator=_optional(_check_limit))

    @property
    def is_empty(self) -> bool:
        return self.weight is None and self.admin is None and self.backup is None and self.max_connections is None


@attrs.frozen
class State:
    """
    Everything the state file holds.  Change it with C{attrs.evolve}.
    """

    servers: Tuple[ServerRecord, ...] = attrs.field(default=(), converter=tuple)
    config_changes: Tuple[ConfigChange, ...] = attrs.field(default=(), converter=tuple)
    config_removed: Tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: The strategy set through the manager (C{{"name": ..., options}}),
    #: checked like the config's when applied; None: the config's.
    strategy: Optional[Any] = attrs.field(default=None, hash=False)

    def change_for(self, backend_id: str) -> Optional[ConfigChange]:
        for change in self.config_changes:
            if change.id == backend_id:
                return change
        return None


# -- JSON ---------------------------------------------------------------------


def _record_json(record: ServerRecord) -> dict:
    return {
        "url": record.url,
        "weight": record.weight,
        "backup": record.backup,
        "admin": record.admin,
        "managed": record.managed,
        **({"max_connections": record.max_connections} if record.max_connections else {}),
    }


def _change_json(change: ConfigChange) -> dict:
    data: dict = {"id": change.id}
    for name in ("weight", "admin", "backup", "max_connections"):
        value = getattr(change, name)
        if value is not None:
            data[name] = value
    return data


def dump_state(state: State) -> str:
    """
    The state file's text for C{state}.
    """
    document = {
        "version": STATE_VERSION,
        "servers": [_record_json(record) for record in state.servers],
        "config_changes": [_change_json(change) for change in state.config_changes],
        "config_removed": list(state.config_removed),
    }
    if state.strategy is not None:
        document["strategy"] = dict(state.strategy)
    return json.dumps(document, indent=2) + "\n"


def parse_state(data: Any) -> State:
    """
    A L{State} from parsed JSON.

    @raise ValueError: naming the first problem (C{servers[2].weight: ...}).
    """
    try:
        document = read_object(
            data, "document", ("version", "servers", "config_changes", "config_removed", "strategy"),
            required=("version",),
        )
        version = document["version"]
        if version != STATE_VERSION:
            raise ReadError(
                "version",
                f"is {version!r}; this heimdall reads version {STATE_VERSION} "
                "(a file written by a newer heimdall?)"
            )
        servers: List[ServerRecord] = []
        seen = set()
        for index, item in enumerate(read_list(document.get("servers", []), "servers")):
            where = f"servers[{index}]"
            fields = read_object(
                item, where, ("url", "weight", "backup", "admin", "managed", "max_connections"), required=("url",)
            )
            record = build(ServerRecord, fields, where)
            if record.id in seen:
                raise ReadError(f"{where}.url", f"{record.id} is listed twice")
            seen.add(record.id)
            servers.append(record)
        changes = []
        for index, item in enumerate(read_list(document.get("config_changes", []), "config_changes")):
            where = f"config_changes[{index}]"
            fields = read_object(item, where, ("id", "weight", "admin", "backup", "max_connections"), required=("id",))
            changes.append(build(ConfigChange, fields, where))
        removed = read_list(document.get("config_removed", []), "config_removed")
        for index, item in enumerate(removed):
            if not isinstance(item, str) or not item:
                raise ReadError(f"config_removed[{index}]", 'must be a backend id like "10.0.0.5:8080"')
        strategy = document.get("strategy")
        if strategy is not None and not (isinstance(strategy, dict) and isinstance(strategy.get("name"), str)):
            raise ReadError("strategy", 'must be an object like {"name": "round_robin"}')
    except ReadError as e:
        raise ValueError(str(e)) from None
    return State(servers, changes, removed, strategy)


def load_state(path: str) -> Optional[State]:
    """
    Read the state file at C{path}; L{None} if there is none (a first
    start).

    @raise StateFileError: naming the file, if it exists but cannot be
        read or is not a valid state document.
    """
    try:
        with open(path, "rb") as state_file:
            raw = state_file.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(path, f"cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StateFileError(path, f"is not valid UTF-8 (at byte {e.start}); fix or move it away") from None
    try:
        data = loads(text, reject_constants=True)
    except (json.JSONDecodeError, ValueError) as e:
        detail = (
            f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
            if isinstance(e, json.JSONDecodeError)
            else str(e)
        )
        raise StateFileError(path, f"is corrupt: {detail}; fix or move it away") from None
    try:
        return parse_state(data)
    except ValueError as e:
        raise StateFileError(path, f"is not a valid state file: {e}; fix or move it away") from None


def save_state(path: str, state: State) -> None:
    """
    Write C{state} to C{path} atomically and durably: a temporary file in
    the same directory, fsync, rename over C{path}, fsync of the directory.
    Blocking: call it off the reactor thread (see L{StateWriter}).

    @raise StateFileError: if any step fails (the old file is untouched).
    """
    directory = os.path.dirname(os.path.abspath(path))
    text = dump_state(state).encode("utf-8")
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
        with os.fdopen(descriptor, "wb") as output:
            output.write(text)
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, path)
        temporary = None
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
    except OSError as e:
        raise StateFileError(path, f"cannot be written: {e.strerror or e}") from None
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass


def run_in_reactor_threads(reactor) -> Callable[[Callable[[], Any]], Deferred]:
    """
    A C{run} for L{StateWriter}: the blocking function runs in the
    reactor's thread pool.
    """
    from twisted.internet.threads import deferToThreadPool

    return lambda function: deferToThreadPool(reactor, reactor.getThreadPool(), function)


def run_here(function: Callable[[], Any]) -> Deferred:
    """
    A C{run} for L{StateWriter} that calls the function at once (tests).
    """
    return maybeDeferred(function)


@attrs.define(eq=False)
class StateWriter:
    """
    Writes the state file off the reactor thread, one write at a time.

    C{save(state)} fires once a write that includes C{state} (or a later
    state) is on disk.  States saved while a write is under way are
    coalesced into the next write: 20 quick changes cost a few writes, and
    an older state never lands after a newer one.

    @ivar run: runs a blocking function and returns a Deferred of its
        result (L{run_in_reactor_threads}, or L{run_here} in tests).
    """

    path: str
    run: Callable[[Callable[[], Any]], Deferred] = run_here
    save_function: Callable[[str, State], None] = save_state
    writes: int = attrs.field(default=0, init=False)
    _latest: Optional[State] = attrs.field(default=None, init=False)
    _waiting: List[Deferred] = attrs.field(factory=list, init=False)
    _writing: bool = attrs.field(default=False, init=False)
    _idle: List[Deferred] = attrs.field(factory=list, init=False)

    def save(self, state: State) -> Deferred:
        done: Deferred = Deferred()
        self._latest = state
        self._waiting.append(done)
        if not self._writing:
            self._write_next()
        return done

    def flush(self) -> Deferred:
        """
        Fires once no write is under way or waiting.
        """
        if not self._writing:
            return maybeDeferred(lambda: None)
        idle: Deferred = Deferred()
        self._idle.append(idle)
        return idle

    def _write_next(self) -> None:
        state, waiting = self._latest, self._waiting
        self._latest, self._waiting = None, []
        self._writing = True
        self.writes += 1
        written = self.run(lambda: self.save_function(self.path, state))
        written.addBoth(self._written, waiting)

    def _written(self, result: Any, waiting: List[Deferred]) -> None:
        self._writing = False
        for done in waiting:
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(None)
        if isinstance(result, Failure):
            _log.error("{problem}", problem=str(result.value))
        if self._waiting:
            self._write_next()
        elif not self._writing:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
