"""
heimdall running in this process (L{HeimdallService}, real sockets on
127.0.0.1) from a config file the tests rewrite and reload.
"""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task

from heimdall.reload.source import ConfigFile
from heimdall.service import HeimdallService


def base_config(tmp_path, **data):
    config = {
        "listen": "tcp:0:interface=127.0.0.1",
        "manager": {"listen": "tcp:0:interface=127.0.0.1", "state_file": str(tmp_path / "state.json")},
        "access_log": {"enabled": False},
        "health": {"interval": "0.2s", "down_interval": "0.1s", "jitter": 0, "timeout": "1s"},
    }
    config.update(data)
    return config


class Running:
    """
    One heimdall, its config file, and its proxy and manager URLs.
    """

    def __init__(self, service, path):
        self.service = service
        self.path = path

    @property
    def proxy(self):
        return f"http://127.0.0.1:{self.service.port.getHost().port}"

    @property
    def manager(self):
        return f"http://127.0.0.1:{self.service.manager_port.getHost().port}"

    def write(self, data):
        self.path.write_text(json.dumps(data))


@pytest.fixture
def run_from_file(tmp_path, reactor, tracked):
    """
    run_from_file(config) -> Running (a Deferred): heimdall started from
    a file holding C{config}, stopped after the test.
    """

    @defer.inlineCallbacks
    def start(data):
        path = tmp_path / "heimdall.json"
        path.write_text(json.dumps(data))
        config_file = ConfigFile(str(path))
        loaded = config_file.load(reactor.seconds)
        service = HeimdallService(loaded.config, reactor, config_file=config_file, loaded=loaded)
        service.startService()
        tracked.cleanups.append(service.stopService)
        yield service.ready
        return Running(service, path)

    return start


@defer.inlineCallbacks
def until(reactor, condition, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, defer.Deferred):
            result = yield result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        yield task.deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.inlineCallbacks
def call(http, method, url, body=None):
    kwargs = {"data": json.dumps(body).encode()} if body is not None else {}
    response = yield http.request(method, url, **kwargs)
    content = yield response.content()
    return response.code, json.loads(content) if content else None
