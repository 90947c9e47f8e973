"""
The TLS port as users run it: `twistd heimdall` with a `tls` section, the
plain port beside it, /metrics saying what came over TLS; and a bad key
refused at start with the file named.
"""

from __future__ import annotations

import json
import time
import urllib.request

import trustme

from tests.netutil import free_port
from tests.processes import free_base
from tests.tlsutil import client_context, tls_request, write_ca, write_cert


def _config(tmp_path, certs, spawn=1):
    return {
        "listen": f"tcp:{free_port()}:interface=127.0.0.1",
        "spawn": spawn,
        "manager": {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "base_port": free_base(max(spawn, 1)),
            "state_file": str(tmp_path / "state.json"),
        },
        "access_log": {"enabled": True, "format": "json"},
        "tls": {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "certificates": [{"cert": c.cert, "key": c.key} for c in certs],
        },
    }


def _port(endpoint: str) -> int:
    return int(endpoint.split(":")[1])


def test_tls_port_beside_the_plain_one_with_metrics(run_heimdall, tmp_path):
    ca = trustme.CA()
    cert = write_cert(ca, tmp_path, "site", "site.test")
    config = _config(tmp_path, [cert])
    h = run_heimdall(config)
    h.wait_for("spawned demo backend", timeout=20)
    h.wait_for("heimdall TLS listening", timeout=5)
    request = b"GET /echo HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"
    context = client_context(write_ca(ca, tmp_path))
    deadline = time.monotonic() + 10
    while True:  # the spawned backend joins the pool once it accepts connections
        answer = tls_request(_port(config["tls"]["listen"]), context, "site.test", request)
        if answer.response.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.response.startswith(b"HTTP/1.1 200"), answer.response[:200]
    assert b'"x-forwarded-proto", "https"' in answer.response.lower()
    with urllib.request.urlopen(f"http://127.0.0.1:{_port(config['listen'])}/", timeout=5) as plain:
        assert plain.status == 200
    records = [json.loads(line[line.index("{") :]) for line in h.output().splitlines() if '"status":200' in line]
    assert {(r["protocol"], r["tls"]) for r in records} == {("HTTP/1.1", "TLSv1.3"), ("HTTP/1.1", None)}
    with urllib.request.urlopen(f"http://127.0.0.1:{_port(config['manager']['listen'])}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'heimdall_client_requests_total{protocol="HTTP/1.1",tls="TLSv1.3"}' in metrics
    assert 'heimdall_tls_handshakes_total{alpn="http/1.1",version="TLSv1.3"}' in metrics
    assert 'heimdall_tls_certificate_expiry_seconds{names="site.test"}' in metrics


def test_a_bad_key_is_refused_at_start_naming_the_file(run_heimdall, tmp_path):
    ca = trustme.CA()
    good = write_cert(ca, tmp_path, "good", "good.test")
    other = write_cert(ca, tmp_path, "other", "other.test")
    mismatched = type(good)(good.cert, other.key, good.names)
    h = run_heimdall(_config(tmp_path, [mismatched], spawn=0))
    assert h.proc.wait(timeout=20) != 0
    output = h.output()
    assert "tls.certificates[0].key" in output and other.key in output, output
