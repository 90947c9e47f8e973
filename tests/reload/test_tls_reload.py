"""
A reload reads the TLS port's certificates again (new connections get the
new ones; an open TLS connection is served on) and moves tls.listen (new
port first); an unreadable certificate refuses the reload, naming the
field, and the old certificates stay.
"""

from __future__ import annotations

import socket

import pytest_twisted
import trustme
from twisted.internet import threads

from tests.netutil import free_port
from tests.reload.conftest import base_config, call
from tests.tlsutil import client_context, tls_request, write_ca, write_cert


def _names(port, context):
    return threads.deferToThread(lambda: tls_request(port, context, None).names)


def _keep_alive_get(tls_socket):
    tls_socket.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls_socket.recv(65536)
    return data.split(b" ")[1]


@pytest_twisted.inlineCallbacks
def test_a_reload_rereads_certificates_and_moves_the_tls_port(tmp_path, start_backends, run_from_file, http):
    (a,) = start_backends(1)
    ca = trustme.CA()
    first = write_cert(ca, tmp_path, "site", "first.test")
    ca_path = write_ca(ca, tmp_path)
    tls_port, moved = free_port(), free_port()
    config = base_config(
        tmp_path, backends=[f"http://127.0.0.1:{a}"],
        tls={"listen": f"tcp:{tls_port}:interface=127.0.0.1",
             "certificates": [{"cert": first.cert, "key": first.key}]},
    )
    running = yield run_from_file(config)
    context = client_context(ca_path, check_hostname=False)
    assert (yield _names(tls_port, context)) == ("first.test",)
    raw = socket.create_connection(("127.0.0.1", tls_port), timeout=5)
    # The handshake needs the reactor: in a thread.
    open_connection = yield threads.deferToThread(context.wrap_socket, raw)
    try:
        assert (yield threads.deferToThread(_keep_alive_get, open_connection)) == b"200"
        # The same files, new content, and another port.
        renewed = write_cert(ca, tmp_path, "renewed", "renewed.test")
        for source, target in ((renewed.cert, first.cert), (renewed.key, first.key)):
            with open(source, "rb") as src, open(target, "wb") as dst:
                dst.write(src.read())
        config["tls"]["listen"] = f"tcp:{moved}:interface=127.0.0.1"
        running.write(config)
        code, report = yield call(http, "POST", running.manager + "/reload")
        assert code == 200 and report["changes"]["listeners_changed"] == ["tls.listen"]
        assert (yield _names(moved, context)) == ("renewed.test",)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", tls_port)) != 0
        # The connection made before is served on, with its certificate.
        assert (yield threads.deferToThread(_keep_alive_get, open_connection)) == b"200"
        # An unreadable key: refused, naming the field; the certificates stay.
        with open(first.key, "wb") as broken:
            broken.write(b"not a key")
        code, error = yield call(http, "POST", running.manager + "/reload")
        assert code == 400 and error["detail"]["field"].startswith("tls.certificates[0]"), error
        assert (yield _names(moved, context)) == ("renewed.test",)
    finally:
        open_connection.close()
