"""
Opt-in retries of answered requests (5xx, timeouts), idempotent methods
only, and the retry budget hook; through real sockets.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.rawhttp import ScriptedBackend


def _backend(tracked, reply):
    backend = ScriptedBackend(lambda protocol, head: reply and protocol.transport.write(reply))
    port = tracked.listen(backend).getHost().port
    return backend, f"http://127.0.0.1:{port}"


FAIL = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nfail"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Budget:
    def __init__(self, allow):
        self.allow = allow
        self.active = 0
        self.started = 0

    def can_retry(self):
        return self.allow

    def retry_started(self):
        self.active += 1
        self.started += 1

    def retry_finished(self):
        self.active -= 1

    def request_started(self):
        pass

    def request_finished(self):
        pass


def _records(proxy):
    records = []
    proxy.resource.request_observers.append(records.append)
    return records


@pytest_twisted.inlineCallbacks
def test_5xx_retried_for_get_when_opted_in(tracked, start_proxy, http):
    failing, failing_url = _backend(tracked, FAIL)
    good, good_url = _backend(tracked, OK)
    budget = Budget(allow=True)
    proxy = start_proxy([failing_url, good_url], retry_on=["5xx"], retry_budget=budget)
    records = _records(proxy)
    for _ in range(4):
        response = yield http.get(proxy.url + "/")
        assert response.code == 200
        assert (yield response.content()) == b"ok"
    # Every request the failing backend answered was retried on the other.
    retried = [r.retry_reasons for r in records].count(("5xx",))
    assert retried == len(failing.heads) >= 2
    assert len(good.heads) == 4
    assert budget.started == retried and budget.active == 0
    # The 503s count against the failing backend's outcomes, not as client errors.
    assert proxy.pool.get(failing_url[7:]).in_flight == 0


@pytest_twisted.inlineCallbacks
def test_5xx_not_retried_for_post_or_without_opt_in(tracked, start_proxy, http):
    failing, failing_url = _backend(tracked, FAIL)
    proxy = start_proxy([failing_url], retry_on=["5xx"])
    response = yield http.post(proxy.url + "/", data=b"")
    assert response.code == 503
    assert (yield response.content()) == b"fail"
    plain = start_proxy([failing_url])
    response = yield http.get(plain.url + "/")
    assert response.code == 503
    yield response.content()
    assert len(failing.heads) == 2


@pytest_twisted.inlineCallbacks
def test_timeout_retried_when_opted_in(tracked, start_proxy, http):
    hanging, hanging_url = _backend(tracked, None)
    good, good_url = _backend(tracked, OK)
    proxy = start_proxy([hanging_url, good_url], retry_on=["timeout"], response_timeout=0.2)
    records = _records(proxy)
    for _ in range(2):
        response = yield http.get(proxy.url + "/")
        assert response.code == 200
        yield response.content()
    assert ("timeout",) in [r.retry_reasons for r in records]


@pytest_twisted.inlineCallbacks
def test_exhausted_budget_stops_retries(tracked, start_proxy, http):
    failing, failing_url = _backend(tracked, FAIL)
    good, good_url = _backend(tracked, OK)
    proxy = start_proxy([failing_url, good_url], retry_on=["5xx"], retry_budget=Budget(allow=False))
    codes = []
    for _ in range(2):
        response = yield http.get(proxy.url + "/")
        codes.append(response.code)
        yield response.content()
    assert sorted(codes) == [200, 503]


def test_unknown_retry_on_is_refused():
    from heimdall.pool.pool import BackendPool
    from heimdall.proxy.resource import BalancerResource
    from heimdall.strategies.round_robin import RoundRobin
    from twisted.internet.task import Clock
    import random

    with pytest.raises(ValueError, match="unknown retry_on"):
        BalancerResource(BackendPool(RoundRobin(random.Random(0)), clock=Clock()), clock=Clock(), retry_on=["4xx"])


@pytest_twisted.inlineCallbacks
def test_connect_failure_retries_do_not_spend_the_budget(tracked, start_proxy, http):
    from tests.netutil import free_port

    good, good_url = _backend(tracked, OK)
    budget = Budget(allow=False)
    proxy = start_proxy([f"http://127.0.0.1:{free_port()}", good_url], retry_budget=budget)
    for _ in range(4):
        response = yield http.get(proxy.url + "/")
        assert response.code == 200
        yield response.content()
    assert budget.started == 0
