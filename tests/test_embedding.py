"""
heimdall embedded in another Twisted web application, through real
sockets: a plain C{Site} serving the app's own resources, with
C{heimdall.balancer_resource} mounted under C{/api/}.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import Site

import heimdall

REPO = Path(__file__).resolve().parent.parent
HELLO = b"hello from the app\n"


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return HELLO


class App:
    def __init__(self, url, backend_ports, api, v1):
        self.url = url
        self.backend_ports = backend_ports
        self.api = api
        self.v1 = v1


def _urls(ports):
    return [f"http://127.0.0.1:{p}" for p in ports]


@pytest.fixture
def app(start_backends, tracked, reactor):
    ports = start_backends(2)
    root = Resource()
    root.putChild(b"hello", Hello())
    api = heimdall.balancer_resource(_urls(ports), clock=reactor)
    root.putChild(b"api", api)
    v1 = heimdall.balancer_resource(_urls(ports), clock=reactor, path_prefix=b"/v1")
    root.putChild(b"v1api", v1)
    for balancer in (api, v1):
        tracked.cleanups.append(balancer.upstream.close_all)
    site = Site(root)
    site.noisy = False
    listening = tracked.listen(site)
    return App(f"http://127.0.0.1:{listening.getHost().port}", ports, api, v1)


@defer.inlineCallbacks
def _get_json(http, url):
    response = yield http.get(url)
    body = yield response.content()
    assert response.code == 200, body
    return response, json.loads(body)


# Twisted's own default 404 resource is deprecated; not ours to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.inlineCallbacks
def test_app_still_serves_its_own_resources(app, http):
    response = yield http.get(app.url + "/hello")
    assert response.code == 200
    assert (yield response.content()) == HELLO
    assert not response.headers.hasHeader(b"x-backend")
    missing = yield http.get(app.url + "/nothing-here")
    yield missing.content()
    assert missing.code == 404


@pytest_twisted.inlineCallbacks
def test_mount_point_is_stripped(app, http):
    _, body = yield _get_json(http, app.url + "/api/users?id=1")
    assert body["path"] == "/users?id=1"
    _, body = yield _get_json(http, app.url + "/api/a/b/c")
    assert body["path"] == "/a/b/c"


@pytest_twisted.inlineCallbacks
def test_requests_alternate_between_backends(app, http):
    seen = []
    for _ in range(4):
        response, body = yield _get_json(http, app.url + "/api/x")
        seen.append(response.headers.getRawHeaders(b"x-backend")[0].decode())
        assert body["backend"] == seen[-1]
    assert all(a != b for a, b in zip(seen, seen[1:])), seen
    assert set(seen) == {f"127.0.0.1:{p}" for p in app.backend_ports}


@pytest_twisted.inlineCallbacks
def test_large_post_body_arrives_intact(app, http):
    body = os.urandom(1024 * 1024)
    response = yield http.post(app.url + "/api/echo", data=body)
    echoed = json.loads((yield response.content()))
    assert response.code == 200
    assert echoed["path"] == "/echo"
    assert echoed["body_bytes"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest_twisted.inlineCallbacks
def test_path_prefix(app, http):
    _, body = yield _get_json(http, app.url + "/v1api/users")
    assert body["path"] == "/v1/users"


@pytest_twisted.inlineCallbacks
def test_backends_added_and_removed_through_the_pool(app, http):
    second = _urls(app.backend_ports)[1]
    app.api.pool.remove(f"127.0.0.1:{app.backend_ports[1]}")
    for _ in range(3):
        _, body = yield _get_json(http, app.url + "/api/")
        assert body["port"] == app.backend_ports[0]
    app.api.pool.add(heimdall.Backend.from_url(second))
    ports = set()
    for _ in range(2):
        _, body = yield _get_json(http, app.url + "/api/")
        ports.add(body["port"])
    assert ports == set(app.backend_ports)


# -- the example script, as a user runs it ------------------------------------


def _read_url(proc, timeout=20.0):
    """
    The URL from C{proc}'s "... listening on http://..." line.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline().decode()
        if not line:
            break  # exited
        if "listening on http://" in line:
            return line.strip().rsplit(" ", 1)[-1]
    raise AssertionError(f"{proc.args} did not announce its port (exit status {proc.poll()})")


def test_example_script_serves_app_and_api(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = []

    def start(*args):
        log = open(tmp_path / f"stderr-{len(started)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=env
        )
        started.append((proc, log))
        return proc

    try:
        backends = [_read_url(start("-m", "heimdall.backend", "--port", "0")) for _ in range(2)]
        args = [str(REPO / "examples" / "embed_in_app.py"), "--port", "0"]
        for url in backends:
            args += ["--backend", url]
        example = start(*args)
        url = _read_url(example)

        with urllib.request.urlopen(url + "/", timeout=10) as response:
            assert response.status == 200
            assert b"Hello from the app" in response.read()
        seen = set()
        for _ in range(2):
            with urllib.request.urlopen(url + "/api/users?id=1", timeout=10) as response:
                body = json.loads(response.read())
            assert body["path"] == "/users?id=1"
            seen.add(body["backend"])
        assert {f"http://{b}" for b in seen} == set(backends)

        # SIGTERM: a clean shutdown, pooled connections closed on the way.
        example.send_signal(signal.SIGTERM)
        assert example.wait(timeout=10) == 0
    finally:
        for proc, log in started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            proc.stdout.close()
            log.close()
