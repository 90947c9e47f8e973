"""
The declared seams of the proxy: the exchange a request talks to
(L{IClientExchange}), the consumer a request body streams into
(L{IRequestBodyConsumer}), and the defaults that come from the config.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from heimdall.config.model import Config, LimitsConfig, TimeoutsConfig, UpstreamConfig
from heimdall.interfaces import IClientExchange, IRequestBodyConsumer, IUpstreamResponseHandler
from heimdall.pool.pool import BackendPool
from heimdall.pool.values import Backend
from heimdall.proxy.body import RequestBody
from heimdall.proxy.exchange import ProxyExchange
from heimdall.proxy.resource import BalancerResource
from heimdall.proxy.site import HeimdallChannel, HeimdallSite
from heimdall.proxy.upstream import UpstreamConnection, UpstreamPool
from heimdall.strategies.round_robin import RoundRobin


def _resource(**options):
    clock = Clock()
    return BalancerResource(BackendPool(RoundRobin(random.Random(0)), clock=clock), clock=clock, **options)


def test_the_exchange_provides_what_the_request_and_the_upstream_need():
    exchange = ProxyExchange(_resource(), DummyRequest([b""]))
    verifyObject(IClientExchange, exchange)
    verifyObject(IUpstreamResponseHandler, exchange)


def test_an_upstream_connection_consumes_request_bodies():
    pool = UpstreamPool(reactor=MemoryReactorClock())
    connection = UpstreamConnection(pool, Backend.from_url("http://127.0.0.1:9000"), 0)
    connection.makeConnection(StringTransport())
    verifyObject(IRequestBodyConsumer, connection)


def test_a_body_streams_into_its_consumer():
    written = []

    class Consumer:
        transport = None

        def write_body(self, data):
            written.append(data)

        def end_body(self):
            written.append(None)

    sent = []
    body = RequestBody(5)
    body.feed(b"ab")
    body.attach(Consumer(), lambda: sent.append(True))
    body.feed(b"cde")
    body.finish()
    assert written == [b"ab", b"cde", None] and sent == [True]


def test_the_defaults_are_the_configs():
    limits, timeouts = LimitsConfig(), TimeoutsConfig()
    site = HeimdallSite(_resource(), reactor=Clock())
    assert (site.max_uri_bytes, site.max_header_bytes, site.max_body_bytes) == (
        limits.max_uri_bytes, limits.max_header_bytes, limits.max_body_bytes,
    )  # fmt: skip
    assert (site.header_timeout, site.timeOut) == (timeouts.client_header, timeouts.client_idle)
    assert HeimdallChannel.max_body_bytes == limits.max_body_bytes
    assert HeimdallChannel.header_timeout == timeouts.client_header

    custom = HeimdallSite(
        _resource(), limits=LimitsConfig(max_body_bytes=10), timeouts=TimeoutsConfig(client_idle=5.0), header_timeout=1.0,
        reactor=Clock(),
    )
    assert (custom.max_body_bytes, custom.timeOut, custom.header_timeout) == (10, 5.0, 1.0)

    resource = _resource()
    assert resource.retries == Config.__attrs_attrs__.retries.default
    assert resource.response_timeout == timeouts.response
    assert resource.max_body_bytes == limits.max_body_bytes
    upstream = resource.upstream
    assert (upstream.connect_timeout, upstream.idle_timeout) == (timeouts.connect, timeouts.idle_upstream)
    assert upstream.max_idle_per_backend == UpstreamConfig().max_idle_per_backend
    # One name per role: the clock times, the upstream's reactor connects.
    assert resource.reactor is upstream.reactor is resource.clock


def test_tls_version_is_read_once_per_connection():
    # The version is the connection's: later requests on it (HTTP/1.1
    # keep-alive, or HTTP/2 streams of one connection) do not ask OpenSSL.
    from types import SimpleNamespace

    from heimdall.proxy.h2 import tls_version

    asked = []

    def version_name():
        asked.append(1)
        return "TLSv1.3"

    handle = SimpleNamespace(get_protocol_version_name=version_name)
    transport = SimpleNamespace(getHandle=lambda: handle)
    channel = SimpleNamespace(transport=transport)
    assert [tls_version(SimpleNamespace(channel=channel)) for _ in range(3)] == ["TLSv1.3"] * 3
    assert len(asked) == 1
    # An HTTP/2 stream has no transport: its connection's is read and kept.
    connection = SimpleNamespace(transport=transport)
    streams = [SimpleNamespace(channel=SimpleNamespace(transport=None, _conn=connection)) for _ in range(3)]
    assert [tls_version(stream) for stream in streams] == ["TLSv1.3"] * 3
    assert len(asked) == 2
    # Plain TCP: no version.
    assert tls_version(SimpleNamespace(channel=SimpleNamespace(transport=StringTransport()))) is None
