"""
Strategies through real sockets: what each one promises, observed at the
backends (issue 3's integration checks).
"""

from __future__ import annotations

from collections import Counter

import pytest_twisted
from twisted.internet import task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.netutil import free_port


class Delayed(Resource):
    """Answers every request after `delay` seconds, naming itself."""

    isLeaf = True

    def __init__(self, reactor, name, delay):
        super().__init__()
        self.reactor, self.name, self.delay = reactor, name, delay
        self.count = 0

    def render(self, request):
        self.count += 1

        def answer():
            if not request._disconnected and not request.finished:
                request.setHeader(b"X-Backend", self.name.encode())
                request.write(b"ok")
                request.finish()

        if self.delay:
            call = self.reactor.callLater(self.delay, answer)
            request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
            return NOT_DONE_YET
        answer()
        return NOT_DONE_YET


def _serve(tracked, reactor, name, delay):
    resource = Delayed(reactor, name, delay)
    port = tracked.listen(Site(resource)).getHost().port
    return resource, f"http://127.0.0.1:{port}"


@pytest_twisted.inlineCallbacks
def test_least_time_avoids_a_slow_backend_but_still_tries_it(reactor, tracked, start_proxy, http):
    backends = [_serve(tracked, reactor, name, delay) for name, delay in [("a", 0), ("b", 0), ("slow", 0.05)]]
    proxy = start_proxy([url for _, url in backends], strategy="least_time")
    for _ in range(300):
        response = yield http.get(proxy.url + "/")
        yield response.content()
        assert response.code == 200
    slow = backends[2][0].count
    assert 0 < slow < 0.15 * 300, slow


@pytest_twisted.inlineCallbacks
def test_least_connections_avoids_a_backend_holding_long_requests(reactor, tracked, start_proxy, http):
    holding, holding_url = _serve(tracked, reactor, "holding", 1.0)
    fast, fast_url = _serve(tracked, reactor, "fast", 0)
    proxy = start_proxy([holding_url, fast_url], strategy="least_connections")
    # Fire requests until the holding backend holds one (a request that
    # lands on the fast backend just completes).
    pending = []
    for _ in range(20):
        pending.append(http.get(proxy.url + "/"))
        yield task.deferLater(reactor, 0.05, lambda: None)
        if holding.count:
            break
    assert holding.count == 1
    seen = Counter()
    for _ in range(20):
        response = yield http.get(proxy.url + "/")
        yield response.content()
        seen[response.headers.getRawHeaders(b"X-Backend")[0]] += 1
    assert holding.count == 1
    assert seen == Counter({b"fast": 20})
    for d in pending:
        response = yield d
        yield response.content()


@pytest_twisted.inlineCallbacks
def test_sticky_round_robin_keeps_a_cookie_jar_on_one_backend(reactor, start_backends, start_proxy):
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    ports = start_backends(3)
    proxy = start_proxy([f"http://127.0.0.1:{p}" for p in ports], strategy="sticky_round_robin")
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        firsts = []
        for _client in range(3):
            client = treq.client.HTTPClient(Agent(reactor, pool=pool))  # its own cookie jar
            seen = set()
            for i in range(50):
                response = yield client.get(proxy.url + f"/page/{i}")
                yield response.content()
                seen.add(response.headers.getRawHeaders(b"X-Backend")[0])
                if i == 0:
                    cookie = response.headers.getRawHeaders(b"Set-Cookie")[0]
                    # Opaque: the backend's address is not in it.
                    for p in ports:
                        assert str(p).encode() not in cookie.split(b";")[0]
            assert len(seen) == 1, seen
            firsts.append(seen.pop())
        # New clients are spread round robin.
        assert len(set(firsts)) == 3
    finally:
        yield pool.closeCachedConnections()


@pytest_twisted.inlineCallbacks
def test_url_hash_agrees_across_two_heimdall_processes(reactor, start_backends, http, run_heimdall):
    ports = start_backends(3)
    proxy_ports = []
    for i in range(2):
        port = free_port()
        run_heimdall(
            {
                "listen": f"tcp:{port}:interface=127.0.0.1",
                "strategy": "url_hash",
                "backends": [f"http://127.0.0.1:{p}" for p in ports],
                "access_log": {"enabled": False},
                "manager": {"listen": "tcp:0:interface=127.0.0.1", "state_file": f"state-{i}.json"},
            },
            env={"PYTHONHASHSEED": str(i + 1)},  # different salts
            name=f"h{i}",
        )
        proxy_ports.append(port)
    for port in proxy_ports:
        for _ in range(200):
            try:
                response = yield http.get(f"http://127.0.0.1:{port}/ping")
                yield response.content()
                break
            except Exception:
                yield task.deferLater(reactor, 0.05, lambda: None)
    placement = []
    for port in proxy_ports:
        chosen = {}
        for n in range(30):
            response = yield http.get(f"http://127.0.0.1:{port}/item/{n}?q=1")
            yield response.content()
            chosen[n] = response.headers.getRawHeaders(b"X-Backend")[0]
        placement.append(chosen)
    assert placement[0] == placement[1]
    assert len(set(placement[0].values())) == 3  # and the paths are spread
