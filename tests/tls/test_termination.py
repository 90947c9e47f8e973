"""
TLS termination through real sockets: certificates chosen by SNI, the
first one without SNI, ALPN, the minimum version, the forwarding headers,
reloading the certificates, and the checks at start.
"""

from __future__ import annotations

import datetime
import json
import ssl

import attrs
import pytest
import pytest_twisted
import trustme

from heimdall.config.model import parse_config
from heimdall.config.tls import CertificateConfig, TlsConfig
from heimdall.errors import ConfigError
from heimdall.proxy.h2 import H2_ENABLED
from heimdall.service import preflight
from heimdall.tls.server import ServerTls
from tests.tlsutil import client_context, tls_request, write_ca, write_cert


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    first = write_cert(ca, tmp_path, "first", "first.test", "www.first.test")
    wild = write_cert(ca, tmp_path, "wild", "*.wild.test")
    return attrs.make_class("Pki", ["ca", "ca_path", "first", "wild", "dir"])(
        ca, write_ca(ca, tmp_path), first, wild, tmp_path
    )


def _tls_config(*certs, **options) -> TlsConfig:
    return TlsConfig(
        listen="tcp:0:interface=127.0.0.1",
        certificates=tuple(CertificateConfig(c.cert, c.key) for c in certs),
        **options,
    )


@pytest.fixture
def tls_proxy(start_backends, start_proxy, tracked, reactor):
    """
    tls_proxy(tls_config) -> (proxy, tls port, ServerTls): the proxy's site
    behind a ServerTls on its own port.
    """

    def start(config: TlsConfig, http2: bool = False):
        [port] = start_backends(1)
        proxy = start_proxy([f"http://127.0.0.1:{port}"])
        server_tls = ServerTls(config)
        site = proxy.site
        if http2:
            from heimdall.proxy.h2 import switching_channel_factory

            site.protocol = switching_channel_factory()
        listening = tracked.listen(server_tls.wrap(site))
        return proxy, listening.getHost().port, server_tls

    return start


def _in_thread(function, *args, **kwargs):
    from twisted.internet import threads

    return threads.deferToThread(function, *args, **kwargs)


@pytest_twisted.inlineCallbacks
def test_sni_chooses_the_certificate_and_no_sni_gets_the_first(pki, tls_proxy):
    proxy, port, _ = tls_proxy(_tls_config(pki.first, pki.wild))
    strict = client_context(pki.ca_path)
    answer = yield _in_thread(tls_request, port, strict, "www.first.test")
    assert answer.names == ("first.test", "www.first.test")
    answer = yield _in_thread(tls_request, port, strict, "api.wild.test")
    assert answer.names == ("*.wild.test",)
    # A wildcard covers one label only: a.b.wild.test gets the default.
    loose = client_context(pki.ca_path, check_hostname=False)
    answer = yield _in_thread(tls_request, port, loose, "a.b.wild.test")
    assert answer.names == ("first.test", "www.first.test")
    answer = yield _in_thread(tls_request, port, loose, None)
    assert answer.names == ("first.test", "www.first.test")
    answer = yield _in_thread(tls_request, port, loose, "unknown.test")
    assert answer.names == ("first.test", "www.first.test")


@pytest_twisted.inlineCallbacks
def test_request_over_tls_is_forwarded_as_https_and_recorded(pki, tls_proxy):
    proxy, port, server_tls = tls_proxy(_tls_config(pki.wild, pki.first))
    records = []
    proxy.resource.request_observers.append(records.append)
    request = b"GET /echo HTTP/1.1\r\nHost: api.wild.test\r\nConnection: close\r\n\r\n"
    answer = yield _in_thread(tls_request, port, client_context(pki.ca_path), "api.wild.test", request)
    head, _, body = answer.response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    headers = [(n.lower(), v) for n, v in json.loads(body)["headers"]]
    assert ("x-forwarded-proto", "https") in headers
    assert answer.version == "TLSv1.3"
    [record] = records
    assert (record.protocol, record.tls) == ("HTTP/1.1", "TLSv1.3")
    assert server_tls.handshakes == {("TLSv1.3", "http/1.1"): 1}


@pytest_twisted.inlineCallbacks
def test_min_version_refuses_older_clients(pki, tls_proxy):
    _, port, _ = tls_proxy(_tls_config(pki.first, min_version="1.3"))
    old = client_context(pki.ca_path, maximum=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        yield _in_thread(tls_request, port, old, "first.test")
    _, port12, _ = tls_proxy(_tls_config(pki.first))
    answer = yield _in_thread(tls_request, port12, old, "first.test")
    assert answer.version == "TLSv1.2"


@pytest_twisted.inlineCallbacks
def test_alpn_offers_h2_only_with_http2(pki, tls_proxy):
    _, port, _ = tls_proxy(_tls_config(pki.first), http2=True)
    answer = yield _in_thread(tls_request, port, client_context(pki.ca_path, alpn=["h2", "http/1.1"]), "first.test")
    # h2 only where Twisted's HTTP/2 support (the h2 package) is installed.
    assert answer.alpn == ("h2" if H2_ENABLED else "http/1.1")
    _, port, _ = tls_proxy(_tls_config(pki.first, http2=False))
    answer = yield _in_thread(tls_request, port, client_context(pki.ca_path, alpn=["h2", "http/1.1"]), "first.test")
    assert answer.alpn == "http/1.1"


@pytest_twisted.inlineCallbacks
def test_reload_serves_new_certificates_to_new_connections(pki, tls_proxy):
    config = _tls_config(pki.first)
    _, port, server_tls = tls_proxy(config)
    context = client_context(pki.ca_path, check_hostname=False)
    answer = yield _in_thread(tls_request, port, context, None)
    assert answer.names == ("first.test", "www.first.test")
    # The same files, new content: re-read on reload.
    replacement = write_cert(pki.ca, pki.dir, "replacement", "renewed.test")
    with open(replacement.cert, "rb") as src, open(pki.first.cert, "wb") as dst:
        dst.write(src.read())
    with open(replacement.key, "rb") as src, open(pki.first.key, "wb") as dst:
        dst.write(src.read())
    server_tls.reload()
    answer = yield _in_thread(tls_request, port, context, None)
    assert answer.names == ("renewed.test",)
    # A broken file on reload: an error naming it, and the old certificates stay.
    with open(pki.first.key, "wb") as broken:
        broken.write(b"not a key")
    with pytest.raises(ConfigError) as error:
        server_tls.reload()
    assert pki.first.key in str(error.value)
    answer = yield _in_thread(tls_request, port, context, None)
    assert answer.names == ("renewed.test",)


def test_a_key_that_does_not_match_is_refused_at_start(pki, tmp_path):
    config = parse_config(
        {
            "tls": {
                "listen": "tcp:0",
                "certificates": [
                    {"cert": pki.first.cert, "key": pki.first.key},
                    {"cert": pki.wild.cert, "key": pki.first.key},
                ],
            },
            "manager": {"state_file": str(tmp_path / "state.json")},
        }
    )
    with pytest.raises(ConfigError) as error:
        preflight(config, environ={})
    assert error.value.path == "tls.certificates[1].key"
    assert pki.first.key in error.value.problem and pki.wild.cert in error.value.problem


def test_unreadable_and_empty_files_are_named(pki, tmp_path):
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as error:
        ServerTls(TlsConfig(listen="tcp:0", certificates=(CertificateConfig(missing, pki.first.key),)))
    assert error.value.path == "tls.certificates[0].cert" and missing in error.value.problem
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(ConfigError) as error:
        ServerTls(TlsConfig(listen="tcp:0", certificates=(CertificateConfig(pki.first.cert, str(empty)),)))
    assert error.value.path == "tls.certificates[0].key" and str(empty) in error.value.problem


def test_expired_certificate_warns_unless_refused(pki):
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    old = write_cert(pki.ca, pki.dir, "old", "old.test", not_before=past, not_after=past + datetime.timedelta(days=1))
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        server_tls = ServerTls(_tls_config(old))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert server_tls.certificates[0].expired
    assert any("expired" in str(e.get("log_format", "")) and e.get("path") == old.cert for e in events)
    with pytest.raises(ConfigError) as error:
        ServerTls(_tls_config(old, allow_expired=False))
    assert error.value.path == "tls.certificates[0].cert" and old.cert in error.value.problem
    # The expiry is judged against the injected time.
    assert not ServerTls(_tls_config(old), seconds=lambda: past.timestamp() + 60).certificates[0].expired


@pytest.mark.parametrize(
    "tls, path, words",
    [
        ({"listen": "tcp:8443"}, "tls.certificates", "at least one certificate"),
        ({"certificates": [{"cert": "c.pem", "key": "k.pem"}]}, "tls.listen", "is required"),
        ({"listen": "ssl:8443", "certificates": [{"cert": "c", "key": "k"}]}, "tls.listen", "plain endpoint"),
        ({"listen": "tcp:8443", "certificates": [{"cert": "c"}]}, "tls.certificates[0]", "key"),
        ({"listen": "tcp:8443", "certificates": [{"cert": "c", "key": "k", "chian": "x"}]}, "tls.certificates[0].chian", "chain"),
        ({"listen": "tcp:8443", "certificates": [{"cert": "c", "key": "k"}], "min_version": "1.1"}, "tls.min_version", '"1.2"'),
        ({"listen": "tcp:8443", "certificates": {"cert": "c"}}, "tls.certificates", "list"),
    ],
)
def test_tls_section_errors_name_the_field(tls, path, words):
    with pytest.raises(ConfigError) as error:
        parse_config({"tls": tls})
    assert error.value.path == path, error.value
    assert words in str(error.value)


def test_tls_section_defaults_and_port_number():
    config = parse_config({"tls": {"listen": 8443, "certificates": [{"cert": "c.pem", "key": "k.pem", "chain": "i.pem"}]}})
    assert config.tls.listen == "tcp:8443:interface=127.0.0.1"
    assert config.tls.certificates == (CertificateConfig("c.pem", "k.pem", "i.pem"),)
    assert (config.tls.min_version, config.tls.http2, config.tls.allow_expired) == ("1.2", True, True)
    assert not parse_config({}).tls.enabled


def test_sni_lookup_exact_names_then_one_label_wildcards_first_certificate_wins():
    from heimdall.tls.server import _Contexts

    contexts = _Contexts((), "default", {"a.test": "exact", "x.wild.test": "exact-x"}, {"wild.test": "wild"})
    assert contexts.for_name("a.test") == "exact"
    assert contexts.for_name("x.wild.test") == "exact-x"
    assert contexts.for_name("y.wild.test") == "wild"
    assert contexts.for_name("a.b.wild.test") == "default"
    assert contexts.for_name("wild.test") == "default"
    assert contexts.for_name(".wild.test") == "default"
    assert contexts.for_name(None) == contexts.for_name("") == "default"


def test_the_first_certificate_with_a_wildcard_serves_it(pki):
    other = write_cert(pki.ca, pki.dir, "wild2", "*.wild.test")
    for order in ((pki.wild, other, pki.first), (other, pki.wild, pki.first)):
        server_tls = ServerTls(_tls_config(*order))
        # The first certificate is also the default: the later wildcard did not replace it.
        assert server_tls.context_for("api.wild.test") is server_tls._current.default
        assert server_tls.context_for("API.Wild.Test.") is server_tls._current.default
        assert server_tls.context_for("first.test") is not server_tls._current.default
