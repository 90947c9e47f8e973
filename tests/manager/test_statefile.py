"""
The state file: its format, strict loading, atomic durable writes, and the
coalescing writer.
"""

from __future__ import annotations

import json
import os

import pytest
from twisted.internet.defer import Deferred

from heimdall.manager.statefile import (
    ConfigChange,
    ServerRecord,
    State,
    StateFileError,
    StateWriter,
    dump_state,
    load_state,
    save_state,
)

STATE = State(
    servers=[
        ServerRecord("http://127.0.0.1:8081", managed=True),
        ServerRecord("http://10.0.0.5:8080", weight=2, backup=True, admin="draining"),
    ],
    config_changes=[ConfigChange("10.0.0.7:8000", weight=5), ConfigChange("10.0.0.8:8000", admin="maintenance")],
    config_removed=["10.0.0.6:8000"],
)


def test_round_trip(tmp_path):
    path = str(tmp_path / "state.json")
    save_state(path, STATE)
    assert load_state(path) == STATE
    data = json.loads(open(path).read())
    assert data["version"] == 1
    assert data["servers"][1] == {
        "url": "http://10.0.0.5:8080", "weight": 2, "backup": True, "admin": "draining", "managed": False,
    }
    assert data["config_changes"] == [{"id": "10.0.0.7:8000", "weight": 5},
                                      {"id": "10.0.0.8:8000", "admin": "maintenance"}]
    assert data["config_removed"] == ["10.0.0.6:8000"]


def test_missing_file_is_a_first_start(tmp_path):
    assert load_state(str(tmp_path / "nope.json")) is None


def test_records_are_frozen_values():
    record = ServerRecord("http://127.0.0.1:8081")
    assert (record.id, record.port) == ("127.0.0.1:8081", 8081)
    with pytest.raises(Exception):
        record.weight = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        ServerRecord("http://127.0.0.1:8081", weight=1001)
    with pytest.raises(ValueError):
        ServerRecord("gopher://x:1")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "is corrupt: invalid JSON at line 1 column 1: Expecting value"),
        ('{"version": 1, "servers": [', "is corrupt: invalid JSON at line 1 column 28: Expecting value"),
        ('{"version": NaN}', "is corrupt: NaN is not valid JSON"),
        ("[]", "is not a valid state file: document: must be an object"),
        ("{}", "is not a valid state file: document.version: is required"),
        ('{"version": 2}', "is not a valid state file: version: is 2; this heimdall reads version 1"),
        ('{"version": 1, "extra": 1}', "is not a valid state file: document.extra: unknown key"),
        ('{"version": 1, "servers": {}}', "is not a valid state file: servers: must be a list"),
        ('{"version": 1, "servers": [{}]}', "is not a valid state file: servers[0].url: is required"),
        ('{"version": 1, "servers": [{"url": "http://a:1", "weight": "2"}]}',
         "is not a valid state file: servers[0]: weight must be an integer from 0 to 1000"),
        ('{"version": 1, "servers": [{"url": "http://a:1", "admin": "gone"}]}',
         "is not a valid state file: servers[0]: admin must be one of ready, draining, maintenance"),
        ('{"version": 1, "servers": [{"url": "http://a:1"}, {"url": "http://a:1/"}]}',
         "is not a valid state file: servers[1].url: a:1 is listed twice"),
        ('{"version": 1, "config_changes": [{"id": "a:1", "backup": 1}]}',
         "is not a valid state file: config_changes[0]: backup must be true or false"),
        ('{"version": 1, "config_removed": [3]}', "is not a valid state file: config_removed[0]: must be"),
    ],
)
def test_a_bad_file_is_an_error_naming_it(tmp_path, text, problem):
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateFileError) as caught:
        load_state(str(path))
    message = str(caught.value)
    assert message.startswith(f"state file {path} {problem}"), message
    # The file is never discarded.
    assert path.read_text() == text


def test_not_utf8_and_unreadable(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b'{"version": 1, "x": "\xff"}')
    with pytest.raises(StateFileError, match="is not valid UTF-8 \\(at byte 21\\)"):
        load_state(str(path))
    directory = tmp_path / "dir.json"
    directory.mkdir()
    with pytest.raises(StateFileError, match="cannot be read: Is a directory"):
        load_state(str(directory))


def test_save_replaces_atomically_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / "state.json")
    save_state(path, STATE)
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsynced.append(fd) or real_fsync(fd))
    save_state(path, State())
    assert len(fsynced) == 2  # the file, then its directory
    assert load_state(path) == State()
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "state.json")
    save_state(path, STATE)

    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StateFileError, match="cannot be written: No space left on device"):
        save_state(path, State())
    assert load_state(path) == STATE
    assert os.listdir(tmp_path) == ["state.json"]


def test_dump_is_stable_json():
    assert json.loads(dump_state(State())) == {
        "version": 1, "servers": [], "config_changes": [], "config_removed": [],
    }


class _ManualRun:
    """
    Runs nothing until told: each call's Deferred is kept for the test.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, function):
        d = Deferred()
        self.calls.append((function, d))
        return d

    def finish(self, index=0):
        function, d = self.calls.pop(index)
        try:
            function()
        except Exception as e:
            d.errback(e)
        else:
            d.callback(None)


def test_writer_coalesces_and_never_writes_an_older_state_last(tmp_path):
    path = str(tmp_path / "state.json")
    run = _ManualRun()
    writer = StateWriter(path, run=run)
    states = [State(config_removed=[f"10.0.0.{i}:80"]) for i in range(4)]
    done = [writer.save(state) for state in states]
    assert writer.writes == 1 and len(run.calls) == 1
    flushed = writer.flush()
    run.finish()
    assert done[0].called and not any(d.called for d in done[1:])
    assert load_state(path) == states[0]
    # The three saves made meanwhile are one write, of the newest state.
    assert writer.writes == 2 and not flushed.called
    run.finish()
    assert all(d.called for d in done) and flushed.called
    assert load_state(path) == states[3]


def test_writer_reports_a_failure_to_each_waiter(tmp_path):
    writer = StateWriter(str(tmp_path / "missing-dir" / "state.json"))
    failures = []
    writer.save(State()).addErrback(failures.append)
    assert failures and failures[0].check(StateFileError)
    # And goes on working for the next save.
    writer.path = str(tmp_path / "state.json")
    results = []
    writer.save(STATE).addCallback(results.append)
    assert results == [None] and load_state(writer.path) == STATE


def test_a_strategy_set_at_runtime_round_trips_and_a_bad_one_is_named():
    from heimdall.manager.statefile import State, dump_state, parse_state
    from heimdall.config.reader import loads

    state = State(strategy={"name": "hash", "key": "header:x-user"})
    assert parse_state(loads(dump_state(state))).strategy == {"name": "hash", "key": "header:x-user"}
    assert "strategy" not in dump_state(State())
    with pytest.raises(ValueError, match="strategy: must be an object"):
        parse_state({"version": 1, "strategy": "hash"})


def test_connection_limits_round_trip(tmp_path):
    path = str(tmp_path / "state.json")
    state = State(
        servers=[ServerRecord("http://10.0.0.5:8080", max_connections=8)],
        config_changes=[ConfigChange("10.0.0.7:8000", max_connections=0)],
    )
    save_state(path, state)
    assert load_state(path) == state
    data = json.loads(open(path).read())
    assert data["servers"][0]["max_connections"] == 8
    assert data["config_changes"] == [{"id": "10.0.0.7:8000", "max_connections": 0}]
    with pytest.raises(ValueError):
        ServerRecord("http://127.0.0.1:8081", max_connections=-1)
