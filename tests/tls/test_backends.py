"""
https backends through real sockets: a private CA, the name sent by SNI and
verified, mutual TLS, pooled TLS connections, health probes with the same
settings, verify false, and the checks at start.

The backends are Twisted sites behind TLS with certificates made here
(trustme); each counts its TCP connections and completed handshakes.
"""

from __future__ import annotations

import json
import socket

import attrs
import pytest
import pytest_twisted
import trustme
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from heimdall.config.model import parse_config
from heimdall.errors import ConfigError
from heimdall.pool.values import Backend, FailureKind, Health
from heimdall.tls.certificates import certificate_names
from heimdall.tls.client import load_backend_tls
from tests.tlsutil import write_ca, write_cert


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    other_ca = trustme.CA()
    return attrs.make_class("Pki", ["ca", "ca_path", "other_ca_path", "dir"])(
        ca, write_ca(ca, tmp_path), write_ca(other_ca, tmp_path, "other-ca"), tmp_path
    )


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTls:
    """A backend's TLS: one certificate, optionally a required client certificate."""

    def __init__(self, cert, client_ca=None):
        self.handshakes = 0
        self.client_subjects = []
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_chain_file(cert.cert)
        context.use_privatekey_file(cert.key)
        context.set_session_id(b"test-backend")
        if client_ca is not None:
            context.load_verify_locations(client_ca)
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: args[-1])

        def info(connection, where, ret):
            if where & SSL.SSL_CB_HANDSHAKE_DONE:
                self.handshakes += 1
                peer = connection.get_peer_certificate()
                if peer is not None:
                    self.client_subjects.append(certificate_names(peer.to_cryptography()))

        context.set_info_callback(info)
        self.context = context

    def serverConnectionForTLS(self, protocol):
        return SSL.Connection(self.context, None)


def _echo_site(reactor):
    from twisted.web import resource, server

    class Echo(resource.Resource):
        isLeaf = True

        def render(self, request):
            request.setHeader(b"Content-Type", b"application/json")
            proto = request.getHeader(b"x-forwarded-proto")
            return json.dumps({"path": request.path.decode(), "proto": proto and proto.decode()}).encode()

    return server.Site(Echo(), reactor=reactor)


@pytest.fixture
def tls_backend(tracked, reactor, pki):
    """
    tls_backend(*names, client_ca=None) -> (port, _ServerTls, connections):
    an https backend on 127.0.0.1 with a certificate for C{names} signed by
    the test CA; C{connections()} counts the TCP connections it accepted.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    def start(*names, client_ca=None):
        cert = write_cert(pki.ca, pki.dir, f"backend{len(tracked.ports)}", *names)
        server_tls = _ServerTls(cert, client_ca)
        factory = TLSMemoryBIOFactory(server_tls, False, _echo_site(reactor))
        listening = tracked.listen(factory)
        accepted = []
        tracked_build = factory.buildProtocol

        def build(addr):
            accepted.append(addr)
            return tracked_build(addr)

        factory.buildProtocol = build
        return listening.getHost().port, server_tls, lambda: len(accepted)

    return start


@pytest.fixture
def https_proxy(tracked, reactor):
    """
    https_proxy(config_data) -> (service, proxy port): heimdall's default
    service built from a config as heimdall builds it (the backends' TLS
    read by load_backend_tls), its backends in the pool, on 127.0.0.1:0.
    """
    from heimdall.service import build_proxy

    def start(data):
        config = parse_config(data)
        proxy = build_proxy(config, reactor, load_backend_tls(config))
        service = proxy.default
        for entry in service.settings.backends:
            service.pool.add(entry.backend)
        tracked.cleanups.append(service.upstream.close_all)
        listening = tracked.listen(proxy.site)
        return service, listening.getHost().port

    return start


def _get(http, port, path="/x"):
    return http.get(f"http://127.0.0.1:{port}{path}")


class _Log:
    def __init__(self):
        self.events = []

    def __enter__(self):
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc):
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self.events.append)

    def lines(self):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


@pytest_twisted.inlineCallbacks
def test_private_ca_works_with_ca_and_is_a_connect_failure_without(pki, tls_backend, https_proxy, http):
    port, server_tls, _ = tls_backend("127.0.0.1")
    url = f"https://127.0.0.1:{port}"
    service, proxy_port = https_proxy({"backends": [{"url": url, "tls": {"ca": pki.ca_path}}]})
    response = yield _get(http, proxy_port, "/hello")
    assert response.code == 200
    body = json.loads((yield response.content()))
    assert body == {"path": "/hello", "proto": "http"}  # X-Forwarded-Proto: the client's, as over http
    assert server_tls.handshakes == 1

    # Without the CA: the system trust store does not know the test CA.
    service, proxy_port = https_proxy({"backends": [url], "retries": 0})
    outcomes = []
    service.pool.subscribe_outcomes(lambda member, outcome: outcomes.append(outcome))
    with _Log() as log:
        response = yield _get(http, proxy_port)
        assert response.code == 502
        yield response.content()
    assert [o.failure for o in outcomes] == [FailureKind.CONNECT]
    assert service.upstream.connect_failures == 1
    [line] = [line for line in log.lines() if line.startswith("connect to")]
    assert line == (
        f"connect to 127.0.0.1:{port} failed: TLS handshake failed: "
        "certificate verify failed: unable to get local issuer certificate"
    )


@pytest_twisted.inlineCallbacks
def test_a_ca_that_did_not_sign_it_is_refused(pki, tls_backend, https_proxy, http):
    port, _, _ = tls_backend("127.0.0.1")
    service, proxy_port = https_proxy(
        {"backends": [{"url": f"https://127.0.0.1:{port}", "tls": {"ca": pki.other_ca_path}}], "retries": 0}
    )
    response = yield _get(http, proxy_port)
    assert response.code == 502
    yield response.content()
    assert service.pool.get(f"127.0.0.1:{port}").failures_total == 1


@pytest_twisted.inlineCallbacks
def test_server_name_is_sent_by_sni_and_verified(pki, tls_backend, https_proxy, http):
    port, server_tls, _ = tls_backend("internal.example")
    sni = []
    server_tls.context.set_tlsext_servername_callback(lambda connection: sni.append(connection.get_servername()))
    url = f"https://127.0.0.1:{port}"
    # Service-level ca, backend-level server_name: merged key by key.
    service, proxy_port = https_proxy(
        {"services": {"default": {"backends": [{"url": url, "tls": {"server_name": "internal.example"}}],
                                  "tls": {"ca": pki.ca_path}}}}
    )
    response = yield _get(http, proxy_port)
    assert response.code == 200
    yield response.content()
    assert sni == [b"internal.example"]

    # The URL's host (127.0.0.1) is not a name in the certificate.
    service, proxy_port = https_proxy({"backends": [url], "retries": 0, "services": {"default": {"tls": {"ca": pki.ca_path}}}})
    with _Log() as log:
        response = yield _get(http, proxy_port)
        assert response.code == 502
        yield response.content()
    assert any(
        "certificate verify failed: it is for internal.example, not 127.0.0.1" in line for line in log.lines()
    ), log.lines()


@pytest_twisted.inlineCallbacks
def test_mutual_tls_needs_the_client_certificate(pki, tls_backend, https_proxy, http):
    client_ca = trustme.CA()
    client = write_cert(client_ca, pki.dir, "client", "heimdall.client")
    port, server_tls, _ = tls_backend("127.0.0.1", client_ca=write_ca(client_ca, pki.dir, "client-ca"))
    url = f"https://127.0.0.1:{port}"
    tls = {"ca": pki.ca_path, "cert": client.cert, "key": client.key}
    service, proxy_port = https_proxy({"backends": [{"url": url, "tls": tls}]})
    response = yield _get(http, proxy_port)
    assert response.code == 200
    yield response.content()
    assert server_tls.client_subjects == [("heimdall.client",)]
    assert server_tls.handshakes == 1

    service, proxy_port = https_proxy({"backends": [{"url": url, "tls": {"ca": pki.ca_path}}], "retries": 0})
    outcomes = []
    service.pool.subscribe_outcomes(lambda member, outcome: outcomes.append(outcome))
    response = yield _get(http, proxy_port)
    assert response.code == 502
    yield response.content()
    # TLS 1.3: the client's handshake ends before the server checks its
    # certificate, so the refusal arrives as a broken connection.
    assert [o.is_backend_failure for o in outcomes] == [True]
    assert server_tls.handshakes == 1


@pytest_twisted.inlineCallbacks
def test_tls_connections_are_pooled_and_reused(pki, tls_backend, https_proxy, http):
    port, server_tls, connections = tls_backend("127.0.0.1")
    service, proxy_port = https_proxy({"backends": [{"url": f"https://127.0.0.1:{port}", "tls": {"ca": pki.ca_path}}]})
    for index in range(5):
        response = yield _get(http, proxy_port, f"/{index}")
        assert response.code == 200
        assert json.loads((yield response.content()))["path"] == f"/{index}"
    assert (connections(), server_tls.handshakes) == (1, 1)
    assert (service.upstream.opened, service.upstream.reused) == (1, 4)
    # TCP_NODELAY under TLS too, as on the plain path.
    [conn] = service.upstream._connections
    tcp = conn.transport.transport.getHandle()
    assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest_twisted.inlineCallbacks
def test_a_handshake_that_never_ends_times_out_as_a_connect_failure(tracked, https_proxy, http):
    from twisted.internet.protocol import Factory, Protocol

    silent = tracked.listen(Factory.forProtocol(Protocol))  # accepts, never answers
    url = f"https://127.0.0.1:{silent.getHost().port}"
    service, proxy_port = https_proxy({"backends": [url], "retries": 0, "timeouts": {"connect": "200ms"}})
    with _Log() as log:
        response = yield _get(http, proxy_port)
        assert response.code == 502
        yield response.content()
    assert f"connect to 127.0.0.1:{silent.getHost().port} failed: TLS handshake failed: no handshake within 0.2s" in log.lines()


@pytest_twisted.inlineCallbacks
def test_health_probes_use_the_same_tls_settings(pki, tls_backend, https_proxy, reactor):
    from twisted.internet import defer, task

    port, _, _ = tls_backend("127.0.0.1")
    url = f"https://127.0.0.1:{port}"
    health = {"interval": "50ms", "down_interval": "50ms", "rise": 1, "fall": 1, "jitter": 0}

    @defer.inlineCallbacks
    def wait_for(service, state):
        member = service.pool.get(f"127.0.0.1:{port}")
        for _ in range(250):
            if member.health is state:
                return member
            yield task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"still {member.health}: {member.last_check}")

    trusted, _ = https_proxy({"backends": [{"url": url, "tls": {"ca": pki.ca_path}}], "health": health})
    untrusted, _ = https_proxy({"backends": [url], "health": health})
    for service in (trusted, untrusted):
        service.health.prober.start()
    try:
        member = yield wait_for(trusted, Health.UP)
        assert member.last_check.detail == "HTTP 200"
        member = yield wait_for(untrusted, Health.DOWN)
        assert "certificate verify failed: unable to get local issuer certificate" in member.last_check.detail
    finally:
        for service in (trusted, untrusted):
            service.health.prober.stop()


@pytest_twisted.inlineCallbacks
def test_verify_false_works_and_is_logged_at_start(pki, tls_backend, https_proxy, http):
    port, _, _ = tls_backend("somewhere.else")
    url = f"https://127.0.0.1:{port}"
    with _Log() as log:
        service, proxy_port = https_proxy({"backends": [{"url": url, "tls": {"verify": False}}]})
    warnings = [line for line in log.lines() if "not verified" in line]
    assert warnings == [f"TLS to backend {url} (service default) is not verified: backends[0].tls.verify is false"]
    response = yield _get(http, proxy_port)
    assert response.code == 200
    yield response.content()


def test_files_are_checked_at_start_naming_the_field_and_the_file(pki):
    other = write_cert(pki.ca, pki.dir, "other", "other.test")
    leaf = write_cert(pki.ca, pki.dir, "leaf", "leaf.test")
    missing = str(pki.dir / "missing.pem")
    cases = [
        ({"ca": missing}, "backends[0].tls.ca", missing),
        ({"ca": leaf.key}, "backends[0].tls.ca", "holds no PEM certificate"),
        ({"cert": leaf.cert, "key": other.key}, "backends[0].tls.key", "does not match the certificate"),
        ({"cert": leaf.cert, "key": missing}, "backends[0].tls.key", missing),
    ]
    for tls, path, words in cases:
        config = parse_config({"backends": [{"url": "https://127.0.0.1:8443", "tls": tls}]})
        with pytest.raises(ConfigError) as error:
            load_backend_tls(config)
        assert error.value.path == path, error.value
        assert words in error.value.problem
    config = parse_config({"services": {"api": {"backends": ["https://127.0.0.1:8443"], "tls": {"ca": missing}}}})
    with pytest.raises(ConfigError) as error:
        load_backend_tls(config)
    assert error.value.path == "services.api.tls.ca"


def test_preflight_refuses_a_bad_backend_file(pki, tmp_path):
    from heimdall.service import preflight

    config = parse_config(
        {"backends": [{"url": "https://127.0.0.1:8443", "tls": {"ca": str(tmp_path / "nope.pem")}}],
         "manager": {"state_file": str(tmp_path / "state.json")}}
    )
    with pytest.raises(ConfigError) as error:
        preflight(config, environ={})
    assert error.value.path == "backends[0].tls.ca"


@pytest.mark.parametrize(
    "data, path, words",
    [
        ({"backends": [{"url": "http://127.0.0.1:1", "tls": {}}]}, "backends[0].tls", "https:// backends only"),
        ({"backends": [{"url": "https://a:1", "tls": {"cert": "c.pem"}}]}, "backends[0].tls.key", "is required with cert"),
        ({"backends": [{"url": "https://a:1", "tls": {"key": "k.pem"}}]}, "backends[0].tls.cert", "is required with key"),
        ({"services": {"s": {"tls": {"verfy": False}}}}, "services.s.tls.verfy", '"verify"'),
        ({"services": {"s": {"tls": {"verify": "no"}}}}, "services.s.tls.verify", "true or false"),
        ({"services": {"s": {"tls": {"server_name": "a b"}}}}, "services.s.tls.server_name", "host name"),
        ({"services": {"s": {"tls": []}}}, "services.s.tls", "object"),
    ],
)
def test_tls_keys_are_checked_when_the_config_is_read(data, path, words):
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert error.value.path == path, error.value
    assert words in str(error.value)


def test_settings_merge_backend_over_service_and_creators_are_built_once(pki):
    from zope.interface.verify import verifyObject

    from heimdall.interfaces import IBackendTls

    client = write_cert(pki.ca, pki.dir, "client", "client.test")
    config = parse_config(
        {"services": {"default": {
            "backends": ["https://10.0.0.1:443", {"url": "https://10.0.0.2:443", "tls": {"server_name": "b.internal", "verify": False}}],
            "tls": {"ca": pki.ca_path, "cert": client.cert, "key": client.key}}}}
    )
    tls = load_backend_tls(config)["default"]
    verifyObject(IBackendTls, tls)
    first, second = Backend.from_url("https://10.0.0.1:443"), Backend.from_url("https://10.0.0.2:443")
    own = tls.settings_for(second)
    assert (own.server_name, own.verify, own.source) == ("b.internal", False, "services.default.backends[1].tls")
    assert own.trust == tls.default.trust and own.client is tls.default.client  # taken from the service
    assert tls.creator_for(first) is tls.creator_for(first)
    assert (tls.creator_for(first).name, tls.creator_for(first).verify) == ("10.0.0.1", True)
    assert (tls.creator_for(second).name, tls.creator_for(second).verify) == ("b.internal", False)
    # A backend added at runtime takes the service's settings (and its context).
    runtime = Backend.from_url("https://10.0.0.3:443")
    assert tls.creator_for(runtime).context is tls.creator_for(first).context


def test_verify_error_text_is_openssls():
    from heimdall.tls.client import verify_error_text

    assert verify_error_text(20) == "unable to get local issuer certificate"
    assert verify_error_text(10) == "certificate has expired"


class _FakeTcp:
    """A TCP endpoint that connects at once to a StringTransport."""

    def __init__(self):
        self.transports = []
        self.protocols = []

    def connect(self, factory):
        from twisted.internet import defer
        from twisted.internet.testing import StringTransport

        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return defer.succeed(protocol)


def _endpoint(timeout=5.0):
    from twisted.internet.testing import MemoryReactorClock

    from heimdall.proxy.endpoints import TlsClientEndpoint
    from heimdall.tls.client import BackendTls

    clock = MemoryReactorClock()
    tcp = _FakeTcp()
    creator = BackendTls().creator_for(Backend.from_url("https://backend.test:443"))
    return clock, tcp, TlsClientEndpoint(clock, tcp, creator, timeout)


def test_handshake_timeout_is_a_tls_error_and_leaves_no_timer():
    from twisted.internet.protocol import Factory, Protocol

    from heimdall.errors import BackendTlsError

    clock, tcp, endpoint = _endpoint()
    failures = []
    endpoint.connect(Factory.forProtocol(Protocol)).addErrback(failures.append)
    [transport] = tcp.transports
    assert transport.value().startswith(b"\x16\x03")  # a ClientHello went out
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(5)
    assert transport.disconnecting
    # StringTransport never reports the loss itself: do it as a reactor would.
    from twisted.internet.error import ConnectionAborted
    from twisted.python.failure import Failure

    tcp.protocols[0].connectionLost(Failure(ConnectionAborted()))
    [failure] = failures
    assert failure.check(BackendTlsError)
    assert str(failure.value) == "TLS handshake failed: no handshake within 5s"
    assert clock.getDelayedCalls() == []


def test_cancelling_during_the_handshake_aborts_and_stops_the_timer():
    from twisted.internet.defer import CancelledError
    from twisted.internet.protocol import Factory, Protocol

    clock, tcp, endpoint = _endpoint()
    d = endpoint.connect(Factory.forProtocol(Protocol))
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    [transport] = tcp.transports
    assert transport.disconnecting
    assert failures[0].check(CancelledError)
    assert clock.getDelayedCalls() == []
