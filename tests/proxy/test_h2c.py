"""
h2c with prior knowledge on the plain port (config key C{h2c}): curl
--http2-prior-knowledge and an `h2` client over a plain socket get HTTP/2,
HTTP/1.1 clients on the same port are unaffected, and without C{h2c} the
preface gets no HTTP/2.  The preface sniffing is also tested byte by byte
over a StringTransport.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest
import pytest_twisted

pytest.importorskip("h2", reason="Twisted's HTTP/2 needs the h2 package")
from twisted.internet import threads  # noqa: E402

from heimdall.config.model import parse_config  # noqa: E402
from heimdall.errors import ConfigError  # noqa: E402
from heimdall.proxy.h2 import H2_ENABLED  # noqa: E402
from tests.netutil import require  # noqa: E402

pytestmark = pytest.mark.skipif(not H2_ENABLED, reason="Twisted's HTTP/2 is not enabled")

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture
def plain_proxy(start_backends, tracked, reactor):
    """
    plain_proxy(n_backends, **config) -> (request records, port): heimdall's proxy as
    heimdall builds it (build_proxy), on a plain port.
    """
    from heimdall.service import build_proxy

    def start(n=1, **data):
        ports = start_backends(n)
        config = parse_config(dict(data, backends=[f"http://127.0.0.1:{p}" for p in ports], access_log={"enabled": False}))
        proxy = build_proxy(config, reactor)
        for entry in proxy.default.settings.backends:
            proxy.default.pool.add(entry.backend)
        tracked.cleanups.append(proxy.default.upstream.close_all)
        records = []
        proxy.resource.request_observers.append(records.append)
        return records, tracked.listen(proxy.site).getHost().port

    return start


def _curl(port, *options, path="/echo"):
    command = ["curl", "-sS", "--max-time", "20", "-w", "\\n%{http_version}\\n", *options,
               f"http://127.0.0.1:{port}{path}"]  # fmt: skip
    return subprocess.run(command, capture_output=True)


@pytest_twisted.inlineCallbacks
def test_curl_with_prior_knowledge_gets_http2_and_http11_still_works(plain_proxy):
    require(shutil.which("curl") is not None, "curl (Debian's, with nghttp2)")
    records, port = plain_proxy(2, h2c=True)
    answers = []
    for options in (["--http2-prior-knowledge"], ["--http2-prior-knowledge"], ["--http1.1"]):
        result = yield threads.deferToThread(_curl, port, *options, path=f"/echo?{len(answers)}")
        assert result.returncode == 0, result.stderr
        body, version = result.stdout.decode().rsplit("\n", 2)[:2]
        answers.append((version, json.loads(body)))
    assert [version for version, _ in answers] == ["2", "2", "1.1"]
    assert [echo["query"] for _, echo in answers] == ["0", "1", "2"]
    assert len({echo["backend"] for _, echo in answers[:2]}) == 2
    headers = {n.lower(): v for n, v in answers[0][1]["headers"]}
    # Upstream as HTTP/1.1, the client's protocol in Via, and plain http.
    assert answers[0][1]["http_version"] == "HTTP/1.1" and headers["via"] == "2 heimdall"
    assert headers["x-forwarded-proto"] == "http"
    assert sorted((r.protocol, r.tls) for r in records) == [("HTTP/1.1", None), ("HTTP/2", None), ("HTTP/2", None)]


@pytest_twisted.inlineCallbacks
def test_many_streams_on_one_cleartext_connection(plain_proxy):
    import h2.config
    import h2.connection
    import h2.events

    _, port = plain_proxy(3, h2c=True)

    def run():
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            conn.initiate_connection()
            streams = {}
            for i in range(20):
                stream = conn.get_next_available_stream_id()
                conn.send_headers(stream, [(":method", "GET"), (":path", f"/echo?i={i}"), (":scheme", "http"),
                                           (":authority", "site.test")], end_stream=True)  # fmt: skip
                streams[stream] = {"data": b""}
            sock.sendall(conn.data_to_send())
            ended = set()
            deadline = time.monotonic() + 20
            while ended != set(streams) and time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        streams[event.stream_id]["status"] = dict(event.headers)[":status"]
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id]["data"] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        ended.add(event.stream_id)
                sock.sendall(conn.data_to_send())
            return [streams[s] for s in sorted(streams)]

    answers = yield threads.deferToThread(run)
    assert [a.get("status") for a in answers] == ["200"] * 20
    echoes = [json.loads(a["data"]) for a in answers]
    assert [e["query"] for e in echoes] == [f"i={i}" for i in range(20)]
    assert len({e["backend"] for e in echoes}) == 3


@pytest_twisted.inlineCallbacks
def test_without_h2c_the_preface_gets_no_http2(plain_proxy):
    require(shutil.which("curl") is not None, "curl (Debian's, with nghttp2)")
    _, port = plain_proxy(1)
    result = yield threads.deferToThread(_curl, port, "--http2-prior-knowledge")
    assert result.returncode != 0 or not result.stdout.decode().endswith("\n2\n")
    result = yield threads.deferToThread(_curl, port, "--http1.1")
    assert result.returncode == 0 and result.stdout.decode().endswith("\n1.1\n")


def _switch(reactor_clock):
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from heimdall.proxy.h2 import switching_channel_factory
    from heimdall.proxy.site import HeimdallSite

    class Ok(Resource):
        isLeaf = True

        def render(self, request):
            return b"ok"

    site = HeimdallSite(Ok(), reactor=reactor_clock)
    site.protocol = switching_channel_factory(cleartext=True)
    switch = site.buildProtocol(None)
    transport = StringTransport()
    switch.makeConnection(transport)
    return switch, transport


def test_the_preface_is_recognised_when_it_comes_byte_by_byte():
    from twisted.internet.testing import MemoryReactorClock

    from heimdall.proxy.h2 import HeimdallH2Connection

    clock = MemoryReactorClock()
    switch, transport = _switch(clock)
    for index in range(len(_PREFACE) - 1):
        switch.dataReceived(_PREFACE[index : index + 1])
        assert transport.value() == b"" and switch._negotiatedProtocol is None
    switch.dataReceived(_PREFACE[-1:])
    assert isinstance(switch._channel, HeimdallH2Connection)
    assert transport.value()[3:4] == b"\x04"  # the server's SETTINGS frame
    switch.connectionLost(None)
    for call in clock.getDelayedCalls():
        call.cancel()


@pytest.mark.parametrize("first", [b"P", b"PR", b"PUT /x HTTP/1.1\r\n", b"GET / HTTP/1.1\r\n"])
def test_http11_that_starts_like_the_preface_stays_http11(first):
    from twisted.internet.testing import MemoryReactorClock

    from heimdall.proxy.site import HeimdallChannel

    clock = MemoryReactorClock()
    switch, transport = _switch(clock)
    request = b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" if first.startswith(b"P") else first + b"Host: a\r\n\r\n"
    switch.dataReceived(request[: len(first)])
    switch.dataReceived(request[len(first) :])
    assert switch._negotiatedProtocol == b"http/1.1"
    assert isinstance(switch._channel, HeimdallChannel)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    switch.connectionLost(None)
    for call in clock.getDelayedCalls():
        call.cancel()


def test_h2c_is_a_boolean_off_by_default():
    assert parse_config({}).h2c is False
    assert parse_config({"h2c": True}).h2c is True
    with pytest.raises(ConfigError) as error:
        parse_config({"h2c": "yes"})
    assert error.value.path == "h2c" and "true or false" in error.value.problem
