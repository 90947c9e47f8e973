"""
HTTP/2 to clients, through real sockets: ALPN on the TLS port, a client
made of the `h2` package over Python's ssl module (run in a thread), and
curl --http2.  Many streams on one connection, a big download beside a
small one, a stalled stream beside live ones, streamed uploads, limits
as answers on their stream; and the private Twisted API heimdall's switch
relies on, pinned.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time

import pytest
import pytest_twisted

# Twisted's HTTP/2 needs the h2 package (not in the PyPy test venv).
pytest.importorskip("h2", reason="Twisted's HTTP/2 needs the h2 package")
import trustme  # noqa: E402
from twisted.internet import threads  # noqa: E402

from heimdall.backend import expected_bytes
from heimdall.config.tls import CertificateConfig, TlsConfig
from heimdall.proxy.h2 import H2_ENABLED, HeimdallChannelSwitch, switching_channel_factory
from heimdall.proxy.site import HeimdallChannel
from heimdall.tls.server import ServerTls
from tests.netutil import require
from tests.tlsutil import client_context, write_ca, write_cert

pytestmark = pytest.mark.skipif(not H2_ENABLED, reason="Twisted's HTTP/2 is not enabled")


@pytest.fixture
def h2_proxy(start_backends, start_proxy, tracked, tmp_path):
    """
    h2_proxy(n_backends, **site_options) -> (proxy, tls port, ca path)
    """

    def start(n=1, **site_options):
        ca = trustme.CA()
        cert = write_cert(ca, tmp_path, "site", "site.test")
        ports = start_backends(n)
        proxy = start_proxy([f"http://127.0.0.1:{p}" for p in ports], site_options=site_options)
        proxy.site.protocol = switching_channel_factory()
        server_tls = ServerTls(TlsConfig(listen="tcp:0", certificates=(CertificateConfig(cert.cert, cert.key),)))
        port = tracked.listen(server_tls.wrap(proxy.site)).getHost().port
        proxy.records = []
        proxy.resource.request_observers.append(proxy.records.append)
        return proxy, port, write_ca(ca, tmp_path)

    return start


class H2Client:
    """
    A blocking HTTP/2 client on one TLS connection (ALPN h2), for a
    thread.  C{stalled} streams get no window updates of their own (the
    connection window is still opened), so the server must stop sending
    on them only.
    """

    def __init__(self, port: int, ca_path: str) -> None:
        import h2.config
        import h2.connection

        context = client_context(ca_path, alpn=["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock = context.wrap_socket(raw, server_hostname="site.test")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.streams = {}
        self.ended = []
        self.stalled = set()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes = None, headers=()) -> int:
        stream = self.conn.get_next_available_stream_id()
        request_headers = [(":method", method), (":path", path), (":scheme", "https"), (":authority", "site.test")]
        request_headers += list(headers)
        if body is not None:
            request_headers.append(("content-length", str(len(body))))
        self.conn.send_headers(stream, request_headers, end_stream=body is None)
        self.streams[stream] = {"headers": None, "data": [], "size": 0, "reset": None}
        self.flush()
        if body is not None:
            self._send_body(stream, body)
        return stream

    def _send_body(self, stream: int, body: bytes) -> None:
        import h2.events

        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
            if window <= 0:
                self._read_once()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream, chunk.tobytes(), end_stream=not view)
            self.flush()

    def _read_once(self) -> None:
        import h2.events

        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        for event in self.conn.receive_data(data):
            record = self.streams.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                record["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                record["size"] += len(event.data)
                if record.get("keep", True):
                    record["data"].append(event.data)
                if event.stream_id in self.stalled:
                    self.conn.increment_flow_control_window(event.flow_controlled_length)
                else:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.append(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                record["reset"] = event.error_code
                self.ended.append(event.stream_id)
        self.flush()

    def wait(self, predicate, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("HTTP/2 client: condition not met in time")
            self._read_once()

    def body(self, stream: int) -> bytes:
        return b"".join(self.streams[stream]["data"])

    def close(self) -> None:
        self.sock.close()


def _in_thread(function):
    return threads.deferToThread(function)


@pytest_twisted.inlineCallbacks
def test_many_concurrent_streams_reach_different_backends(h2_proxy):
    proxy, port, ca = h2_proxy(3)

    def run():
        client = H2Client(port, ca)
        try:
            streams = [client.request("GET", f"/echo?i={i}") for i in range(30)]
            client.wait(lambda: set(streams) <= set(client.ended))
            return [(client.streams[s]["headers"], json.loads(client.body(s))) for s in streams]
        finally:
            client.close()

    answers = yield _in_thread(run)
    assert all(headers[":status"] == "200" for headers, _ in answers)
    assert [echo["query"] for _, echo in answers] == [f"i={i}" for i in range(30)]
    backends = {echo["backend"] for _, echo in answers}
    assert len(backends) == 3
    # Upstream as HTTP/1.1, with the client's protocol in Via.
    headers = {n.lower(): v for n, v in answers[0][1]["headers"]}
    assert answers[0][1]["http_version"] == "HTTP/1.1" and headers["via"] == "2 heimdall"
    assert headers["x-forwarded-proto"] == "https"
    assert {(r.protocol, r.tls) for r in proxy.records} == {("HTTP/2", "TLSv1.3")}
    assert len(proxy.records) == 30


@pytest_twisted.inlineCallbacks
def test_a_20mb_download_beside_another_stream(h2_proxy):
    proxy, port, ca = h2_proxy(1)
    size = 20 * 1024 * 1024

    def run():
        client = H2Client(port, ca)
        try:
            big = client.request("GET", f"/bytes?n={size}")
            client.streams[big]["keep"] = False
            client.wait(lambda: client.streams[big]["size"] > 1024 * 1024)
            small = client.request("GET", "/echo")
            client.wait(lambda: small in client.ended)
            size_when_small_ended = client.streams[big]["size"]
            client.wait(lambda: big in client.ended, timeout=60)
            return size_when_small_ended, client.streams[big]["size"], client.streams[small]["headers"][":status"]
        finally:
            client.close()

    at_small, total, small_status = yield _in_thread(run)
    assert small_status == "200"
    assert at_small < size  # served while the big one was still going
    assert total == size


@pytest_twisted.inlineCallbacks
def test_a_stalled_stream_does_not_stall_the_others(h2_proxy):
    proxy, port, ca = h2_proxy(1)
    size = 8 * 1024 * 1024

    def run():
        client = H2Client(port, ca)
        try:
            slow = client.request("GET", f"/bytes?n={size}")
            client.stalled.add(slow)
            client.wait(lambda: client.streams[slow]["size"] > 0)
            others = [client.request("GET", f"/echo?i={i}") for i in range(5)]
            client.wait(lambda: set(others) <= set(client.ended))
            time.sleep(0.3)
            return client.streams[slow]["size"], [client.streams[s]["headers"][":status"] for s in others]
        finally:
            client.close()

    stalled_size, statuses = yield _in_thread(run)
    assert statuses == ["200"] * 5
    assert stalled_size <= 65535  # the stream's initial window: heimdall waits for its update
    # ... and its backend read is paused, not buffered into memory.
    assert any(conn._paused for conn in proxy.upstream._connections)


@pytest_twisted.inlineCallbacks
def test_upload_streams_and_limits_answer_on_their_stream(h2_proxy):
    proxy, port, ca = h2_proxy(1, max_body_bytes=2 * 1024 * 1024, max_uri_bytes=1000, max_header_bytes=4000)
    upload = expected_bytes(1024 * 1024 + 7)

    def run():
        client = H2Client(port, ca)
        try:
            ok = client.request("POST", "/echo", upload)
            client.wait(lambda: ok in client.ended)
            big = client.conn.get_next_available_stream_id()
            client.conn.send_headers(big, [(":method", "POST"), (":path", "/echo"), (":scheme", "https"),
                                           (":authority", "site.test"), ("content-length", str(3 * 1024 * 1024))])  # fmt: skip
            client.streams[big] = {"headers": None, "data": [], "size": 0, "reset": None}
            client.flush()
            long_uri = client.request("GET", "/" + "a" * 2000)
            fat = client.request("GET", "/echo", headers=[("x-fat", "b" * 5000)])
            after = client.request("GET", "/echo?after")
            client.wait(lambda: {big, long_uri, fat, after} <= set(client.ended))
            return {name: (client.streams[s]["headers"] or {}).get(":status") for name, s in
                    [("ok", ok), ("big", big), ("long_uri", long_uri), ("fat", fat), ("after", after)]}, json.loads(client.body(ok))  # fmt: skip
        finally:
            client.close()

    statuses, echoed = yield _in_thread(run)
    assert statuses == {"ok": "200", "big": "413", "long_uri": "414", "fat": "431", "after": "200"}
    assert echoed["body_bytes"] == len(upload)
    assert echoed["body_sha256"] == hashlib.sha256(upload).hexdigest()


@pytest_twisted.inlineCallbacks
def test_curl_http2(h2_proxy):
    require(shutil.which("curl") is not None, "curl (Debian's, with nghttp2)")
    proxy, port, ca = h2_proxy(2)

    def run(query):
        command = ["curl", "-sS", "--http2", "--max-time", "20", "--cacert", ca,
                   "--resolve", f"site.test:{port}:127.0.0.1", "-w", "\\n%{http_version}\\n",
                   f"https://site.test:{port}/echo?{query}"]  # fmt: skip
        return subprocess.run(command, capture_output=True)

    answers = []
    for query in ("a", "b"):
        result = yield threads.deferToThread(run, query)
        assert result.returncode == 0, result.stderr
        body, version = result.stdout.decode().rsplit("\n", 2)[:2]
        answers.append((version, json.loads(body)))
    assert [version for version, _ in answers] == ["2", "2"]
    assert [echo["query"] for _, echo in answers] == ["a", "b"]
    assert len({echo["backend"] for _, echo in answers}) == 2
    assert {(r.protocol, r.tls) for r in proxy.records} == {("HTTP/2", "TLSv1.3")}


def test_the_private_twisted_api_the_switch_uses():
    from twisted.web import http
    from twisted.web._http2 import H2Connection, H2Stream

    switch = switching_channel_factory()()
    assert isinstance(switch, HeimdallChannelSwitch) and isinstance(switch, http._GenericHTTPChannelProtocol)
    assert isinstance(switch._channel, HeimdallChannel)
    for name in ("_negotiatedProtocol", "_site", "_factory", "_timeOut", "_callLater"):
        assert hasattr(switch, name), name
    assert callable(H2Connection._requestReceived) and "_request" in H2Stream.__init__.__code__.co_names


@pytest.mark.skipif(not H2_ENABLED, reason="the h2 package is not installed")
def test_a_connection_switched_to_http2_is_counted_until_it_closes():
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure
    from twisted.web.resource import Resource

    from heimdall.proxy.h2 import _PREFACE
    from heimdall.proxy.site import HeimdallSite

    site = HeimdallSite(Resource(), reactor=Clock())
    site.protocol = switching_channel_factory(cleartext=True)
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    protocol.makeConnection(StringTransport())
    assert site.open_connections == 1
    protocol.dataReceived(_PREFACE)
    assert protocol._negotiatedProtocol == b"h2" and site.open_connections == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert site.open_connections == 0


@pytest_twisted.inlineCallbacks
def test_a_stalled_stream_is_reset_after_client_write_and_the_others_go_on(h2_proxy):
    proxy, port, ca = h2_proxy(1, client_write_timeout=0.3)
    size = 8 * 1024 * 1024

    def run():
        client = H2Client(port, ca)
        try:
            slow = client.request("GET", f"/bytes?n={size}")
            client.stalled.add(slow)
            client.wait(lambda: slow in client.ended)  # reset by heimdall
            other = client.request("GET", "/echo")
            client.wait(lambda: other in client.ended)
            return client.streams[slow]["reset"], client.streams[other]["headers"][":status"]
        finally:
            client.close()

    reset, status = yield _in_thread(run)
    assert reset is not None and status == "200"
    slow_record = [r for r in proxy.records if r.path.startswith(b"/bytes")][0]
    assert slow_record.timeout == "client_write"
    assert not proxy.upstream._connections or not any(c._paused for c in proxy.upstream._connections)
