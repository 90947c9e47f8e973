"""
heimdall.testing: a whole balancer in memory.  No sockets, no global
reactor: every test here is deterministic and synchronous.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from heimdall.backend import BackendResource
from heimdall.testing import ExchangeIncomplete, MemoryUpstreamPool, StubBalancer

A = "http://10.0.0.1:8081"
B = "http://10.0.0.2:8082"


class Recorder(Resource):
    """
    Answers JSON naming itself; remembers what it received.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.received = []

    def render(self, request):
        body = request.content.read()
        self.received.append((request.method, request.uri, request.requestHeaders.copy(), body))
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"name": self.name, "uri": request.uri.decode(), "body_bytes": len(body)}).encode()


class Hang(Resource):
    """
    Never answers; records whether the request was abandoned.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = []

    def render(self, request):
        request.notifyFinish().addErrback(self.abandoned.append)
        return NOT_DONE_YET


@pytest.fixture
def two():
    a, b = Recorder("a"), Recorder("b")
    stub = StubBalancer({A: a, B: b})
    yield stub, a, b
    stub.close()


def test_round_robin_alternates(two):
    stub, a, b = two
    names = [stub.request("GET", f"/items?i={i}").json()["name"] for i in range(6)]
    assert all(x != y for x, y in zip(names, names[1:])), names
    assert sorted(names) == ["a"] * 3 + ["b"] * 3
    assert len(a.received) == len(b.received) == 3


def test_response_fields(two):
    stub, _, _ = two
    response = stub.request("GET", "/items?i=1")
    assert response.code == 200
    assert response.header("content-type") == "application/json"
    assert int(response.header("content-length")) == len(response.body)
    assert response.json()["uri"] == "/items?i=1"
    assert response.text().startswith("{")


def test_headers_forwarded(two):
    stub, a, b = two
    response = stub.request(
        "GET",
        "/h",
        headers={"X-Custom": ["one", "two"], "Connection": "X-Secret", "X-Secret": "s"},
        client_ip="203.0.113.7",
    )
    assert response.code == 200
    [(_, _, headers, _)] = a.received + b.received
    assert headers.getRawHeaders(b"x-forwarded-for") == [b"203.0.113.7"]
    assert headers.getRawHeaders(b"x-forwarded-proto") == [b"http"]
    assert headers.getRawHeaders(b"host") == [b"heimdall.test"]
    assert headers.getRawHeaders(b"x-custom") == [b"one", b"two"]
    # Named in Connection: hop-by-hop, not forwarded.
    assert not headers.hasHeader(b"x-secret")


def test_post_body_arrives(two):
    stub, a, b = two
    body = bytes(range(256)) * 4096  # 1 MiB
    response = stub.request("POST", "/upload", data=body)
    assert response.code == 200
    assert response.json()["body_bytes"] == len(body)
    [(method, uri, _, received)] = a.received + b.received
    assert (method, uri, received) == (b"POST", b"/upload", body)


def test_empty_pool_is_503():
    stub = StubBalancer({})
    response = stub.request("GET", "/")
    assert response.code == 503
    assert response.json()["status"] == 503


def test_retry_when_a_backend_refuses(two):
    stub, a, b = two
    stub.upstream.refuse(A)
    codes = [stub.request("GET", "/r").code for _ in range(4)]
    assert codes == [200] * 4
    assert len(b.received) == 4 and a.received == []
    assert stub.pool.get("10.0.0.1:8081").failures_total >= 1
    assert stub.pool.get("10.0.0.2:8082").failures_total == 0
    # Accepted again: both serve.
    stub.upstream.accept(A, a)
    names = {stub.request("GET", "/r").json()["name"] for _ in range(2)}
    assert names == {"a", "b"}


def test_all_refuse_is_502():
    stub = StubBalancer({A: Recorder("a")}, retries=1)
    stub.upstream.refuse(A)
    assert stub.request("GET", "/").code == 502
    # The first try and one retry, both refused: nothing was opened.
    assert stub.upstream.connect_failures == 2
    assert stub.upstream.opened_by_backend == {}


def test_memory_pool_refuses_unknown_backend():
    from heimdall.pool.values import Backend

    upstream = MemoryUpstreamPool()
    failure = []
    upstream.connect(Backend.from_url(A)).addErrback(failure.append)
    assert failure and failure[0].check(ConnectionRefusedError)


def test_504_after_response_timeout():
    hang = Hang()
    stub = StubBalancer({A: hang}, response_timeout=5.0)
    d = stub.request_deferred("GET", "/slow")
    with pytest.raises(ExchangeIncomplete):
        stub.result(d)
    stub.clock.advance(4.9)
    with pytest.raises(ExchangeIncomplete):
        stub.result(d)
    stub.clock.advance(0.1)
    response = stub.result(d)
    assert response.code == 504
    assert stub.pool.get("10.0.0.1:8081").failures_total == 1
    # The upstream connection was closed: the backend's request ended.
    assert len(hang.abandoned) == 1
    stub.close()


def test_request_raises_when_a_backend_never_answers():
    stub = StubBalancer({A: Hang()})
    with pytest.raises(ExchangeIncomplete, match="clock"):
        stub.request("GET", "/slow")
    stub.close()


def test_keep_alive_reuse(two):
    stub, _, _ = two
    for _ in range(10):
        assert stub.request("GET", "/k").code == 200
    assert stub.upstream.opened_by_backend == {"10.0.0.1:8081": 1, "10.0.0.2:8082": 1}
    assert stub.upstream.opened == 2
    assert stub.upstream.reused == 8
    assert stub.upstream.idle_count() == 2


def test_dropped_connection_is_retried_on_a_new_one(two):
    stub, a, b = two
    stub.request("GET", "/warm")
    stub.request("GET", "/warm")
    # Both backends close their idle keep-alive connections, as on restart.
    for url, resource in ((A, a), (B, b)):
        stub.upstream.refuse(url, drop_connections=True)
        stub.upstream.accept(url, resource)
    stub.flush()
    assert stub.request("GET", "/after").code == 200
    assert stub.upstream.opened == 3


def test_backends_added_and_removed_at_runtime():
    stub = StubBalancer({A: Recorder("a")})
    stub.add_backend(B, Recorder("b"))
    assert {stub.request("GET", "/").json()["name"] for _ in range(2)} == {"a", "b"}
    stub.remove_backend(A)
    assert {stub.request("GET", "/").json()["name"] for _ in range(3)} == {"b"}
    stub.close()


def test_demo_backend_resource_in_memory():
    stub = StubBalancer()
    backend = BackendResource("demo", "10.0.0.1", lambda: 8081, reactor=stub.clock)
    stub.add_backend(A, backend)
    body = b"x" * 100_000
    response = stub.request("POST", "/echo", data=body)
    assert response.header("x-backend") == "10.0.0.1:8081"
    echoed = response.json()
    assert echoed["path"] == "/echo"
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    # /delay answers on the stub's clock.
    d = stub.request_deferred("GET", "/delay?ms=250")
    with pytest.raises(ExchangeIncomplete):
        stub.result(d)
    stub.clock.advance(0.25)
    assert stub.result(d).json()["path"] == "/delay?ms=250"
    stub.close()


def test_path_prefix_and_mount_point():
    a = Recorder("a")
    stub = StubBalancer({A: a}, path_prefix=b"/v1")
    assert stub.request("GET", "/users?id=1").json()["uri"] == "/v1/users?id=1"
    stub.close()


def test_broken_response_raises():
    class HalfAnswer(Resource):
        isLeaf = True

        def render(self, request):
            request.setHeader(b"Content-Length", b"100")
            request.write(b"only part")
            request.channel.transport.loseConnection()
            return NOT_DONE_YET

    stub = StubBalancer({A: HalfAnswer()})
    from twisted.web.client import ResponseFailed

    with pytest.raises(ResponseFailed):
        stub.request("GET", "/")
    stub.close()


def test_site_limits_apply_in_memory():
    stub = StubBalancer({A: Recorder("a")}, site_options={"max_body_bytes": 1000})
    assert stub.request("POST", "/", data=b"x" * 1001).code == 413
    assert stub.request("POST", "/", data=b"x" * 1000).code == 200
    assert stub.request("GET", "/" + "x" * 9000).code == 414
    stub.close()


def test_treq_client(two):
    stub, _, _ = two
    d = stub.treq.post("http://anything.test/form", data={"k": "v"})
    response = stub.result(d)
    assert response.code == 200
    payload = stub.result(response.json())
    assert payload["uri"] == "/form" and payload["body_bytes"] == len(b"k=v")


def test_close_leaves_nothing_behind(two):
    stub, _, _ = two
    stub.request("GET", "/")
    d = stub.request_deferred("GET", "/")
    stub.close()
    assert stub.upstream.open_connections == 0
    assert stub.upstream.idle_count() == 0
    assert stub.clock.getDelayedCalls() == []
    d.addErrback(lambda _: None)
