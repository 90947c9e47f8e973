"""
L{heimdall.health.probes}: the HTTP and TCP probes, in memory (a stub agent,
L{MemoryReactorClock} and L{StringTransport}) and once each over loopback.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import error, protocol
from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from heimdall.config.health import CheckSettings
from heimdall.health.probes import (
    HttpAnswer,
    HttpCheck,
    HttpProbe,
    ProbeOutcome,
    TcpCheck,
    accepts_connections,
    connect_once,
    default_check_factory,
    describe_failure,
    probe_agent,
    quiet_connection_pool,
)
from heimdall.interfaces import IHealthCheck
from heimdall.pool.values import Backend

class _Health(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.body = b'{"status": "ok"}'
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        request.setResponseCode(self.code)
        return self.body


def _stub_agent(resource):
    from treq.testing import RequestTraversalAgent

    return RequestTraversalAgent(resource)


def _result(d):
    results = []
    d.addBoth(results.append)
    assert results, "not fired"
    return results[0]


def test_http_check_status_body_and_headers():
    resource = _Health()
    agent = _stub_agent(resource)
    settings = CheckSettings(path="/healthz", headers={"Host": "app.example", "X-Probe": "1"}, method="GET")
    check = HttpCheck(agent, settings)
    verifyObject(IHealthCheck, check)
    backend = Backend.from_url("http://127.0.0.1:9000")
    d = check.check(backend)
    agent.flush()
    assert _result(d) == ProbeOutcome(True, "HTTP 200")
    request = resource.requests[-1]
    assert request.uri == b"/healthz"
    assert request.getHeader(b"host") == b"app.example"
    assert request.getHeader(b"x-probe") == b"1"
    assert request.getHeader(b"user-agent").startswith(b"heimdall-health-check")

    resource.code = 503
    d = check.check(backend)
    agent.flush()
    assert _result(d) == ProbeOutcome(False, "HTTP 503, expected 200-399")

    regex = HttpCheck(agent, CheckSettings(body_regex=r'"status":\s*"ok"', expect_status=["2xx"]))
    resource.code = 200
    d = regex.check(backend)
    agent.flush()
    assert _result(d).ok
    resource.body = b'{"status": "degraded"}'
    d = regex.check(backend)
    agent.flush()
    outcome = _result(d)
    assert not outcome.ok and "body does not match" in outcome.detail


def test_tcp_check_over_a_memory_reactor():
    reactor = MemoryReactorClock()
    check = TcpCheck(reactor, timeout=0.5)
    verifyObject(IHealthCheck, check)
    d = check.check(Backend.from_url("http://10.0.0.1:81"))
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("10.0.0.1", 81, 0.5)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert _result(d) == ProbeOutcome(True, "TCP connect")
    assert transport.disconnecting  # closed at once

    d = check.check(Backend.from_url("http://10.0.0.1:82"))
    factory = reactor.tcpClients[1][2]
    factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
    failure = _result(d)
    assert isinstance(failure, Failure) and describe_failure(failure) == "connect refused"


def test_describe_failure_unwraps_agent_reasons():
    from twisted.web._newclient import ResponseNeverReceived

    wrapped = Failure(ResponseNeverReceived([Failure(error.ConnectionLost())]))
    assert describe_failure(wrapped) == "connection closed"
    assert describe_failure(Failure(error.TimeoutError())) == "connect timeout"
    assert describe_failure(Failure(ValueError("x" * 500))).endswith("...")


def test_http_probe_keeps_at_most_body_limit_bytes():
    resource = _Health()
    resource.body = b"x" * 100
    agent = _stub_agent(resource)
    d = HttpProbe(agent, body_limit=10).fetch(b"http://127.0.0.1:9000/")
    agent.flush()
    assert _result(d) == HttpAnswer(200, b"x" * 10)
    d = HttpProbe(agent, method=b"HEAD", headers=[(b"X-Probe", b"2")]).fetch(b"http://127.0.0.1:9000/h")
    agent.flush()
    assert _result(d) == HttpAnswer(200, b"")
    assert resource.requests[-1].method == b"HEAD"
    assert resource.requests[-1].getHeader(b"x-probe") == b"2"


def test_default_check_factory_builds_by_type():
    reactor = MemoryReactorClock()
    build = default_check_factory(reactor, agent=object())
    assert isinstance(build(CheckSettings(type="http")), HttpCheck)
    tcp = build(CheckSettings(type="tcp", timeout=0.25))
    assert isinstance(tcp, TcpCheck) and tcp.timeout == 0.25
    assert build(CheckSettings(type="none")) is None


def test_the_quiet_pool_is_not_persistent_and_does_not_log():
    pool = quiet_connection_pool(MemoryReactorClock())
    assert pool.persistent is False
    assert pool._factory.noisy is False
    assert probe_agent(MemoryReactorClock(), connect_timeout=2.0) is not None


def test_connect_once_and_accepts_connections_in_memory():
    reactor = MemoryReactorClock()
    d = accepts_connections(reactor, "127.0.0.1", 8001, 0.5)
    factory = reactor.tcpClients[0][2]
    factory.buildProtocol(None).makeConnection(StringTransport())
    assert _result(d) is True

    d = accepts_connections(reactor, "127.0.0.1", 8002, 0.5)
    reactor.tcpClients[1][2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
    assert _result(d) is False

    d = connect_once(reactor, "127.0.0.1", 8003, 0.5)
    connector = reactor.connectors[-1]
    d.cancel()
    assert connector._disconnected  # the attempt is abandoned
    assert _result(d).check(CancelledError)


@pytest_twisted.inlineCallbacks
def test_http_and_tcp_probes_over_loopback(reactor, tracked):
    from twisted.web.server import Site

    resource = _Health()
    port = tracked.listen(Site(resource)).getHost().port
    check = HttpCheck(probe_agent(reactor), CheckSettings(path="/health", body_regex="ok"))
    outcome = yield check.check(Backend.from_url(f"http://127.0.0.1:{port}"))
    assert outcome == ProbeOutcome(True, "HTTP 200")

    outcome = yield TcpCheck(reactor, timeout=2.0).check(Backend.from_url(f"http://127.0.0.1:{port}"))
    assert outcome == ProbeOutcome(True, "TCP connect")
    assert (yield accepts_connections(reactor, "127.0.0.1", port, 2.0)) is True

    closed = tracked.listen(protocol.Factory.forProtocol(protocol.Protocol))
    free_port = closed.getHost().port
    yield closed.stopListening()
    tracked.ports.remove(closed)
    assert (yield accepts_connections(reactor, "127.0.0.1", free_port, 2.0)) is False
    with pytest.raises(error.ConnectionRefusedError):
        yield connect_once(reactor, "127.0.0.1", free_port, 2.0)
