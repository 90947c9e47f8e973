"""
https backends as users run them: `twistd heimdall` with a service-level
`tls`, an https server added through the manager API (it takes the
service's settings), health checks marking it up through TLS, the
verify-false warning at start, and a bad file refused at start naming the
field and the file.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import urllib.request

import pytest
import trustme

from tests.netutil import free_port
from tests.processes import free_base, wait_until
from tests.tlsutil import write_ca, write_cert


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"path": self.path, "proto": self.headers.get("X-Forwarded-Proto")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def https_server(tmp_path):
    """An https server in a thread with a certificate for 127.0.0.1 from a test CA: (port, ca path)."""
    ca = trustme.CA()
    cert = write_cert(ca, tmp_path, "backend", "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], write_ca(ca, tmp_path)
    server.shutdown()
    server.server_close()


def _config(tmp_path, **top):
    return dict(
        {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "manager": {
                "listen": f"tcp:{free_port()}:interface=127.0.0.1",
                "base_port": free_base(1),
                "state_file": str(tmp_path / "state.json"),
            },
            "health": {"interval": "200ms", "down_interval": "200ms", "rise": 1, "fall": 1},
        },
        **top,
    )


def _port(endpoint: str) -> int:
    return int(endpoint.split(":")[1])


def test_an_https_server_added_by_the_api_takes_the_services_tls(run_heimdall, tmp_path, https_server):
    port, ca_path = https_server
    config = _config(tmp_path, services={"default": {"tls": {"ca": ca_path}}})
    h = run_heimdall(config)
    h.wait_for("heimdall manager listening", timeout=20)
    manager = f"http://127.0.0.1:{_port(config['manager']['listen'])}"
    add = urllib.request.Request(
        f"{manager}/servers/add", data=json.dumps({"url": f"https://127.0.0.1:{port}"}).encode(), method="POST"
    )
    with urllib.request.urlopen(add, timeout=5) as response:
        assert response.status == 201

    def health():
        with urllib.request.urlopen(f"{manager}/servers/get?id=127.0.0.1:{port}", timeout=5) as response:
            row = json.loads(response.read())
        return row["health"]["status"] == "up" and row

    row = wait_until(health, 15.0, 0.1, "health up over TLS")
    assert row["url"] == f"https://127.0.0.1:{port}" and row["health"]["last_check_detail"] == "HTTP 200"
    with urllib.request.urlopen(f"http://127.0.0.1:{_port(config['listen'])}/hi", timeout=5) as response:
        assert json.loads(response.read()) == {"path": "/hi", "proto": "http"}


def test_verify_false_is_a_warning_at_start_and_works(run_heimdall, tmp_path, https_server):
    port, _ = https_server
    url = f"https://127.0.0.1:{port}"
    config = _config(tmp_path, backends=[{"url": url, "tls": {"verify": False}}])
    h = run_heimdall(config)
    h.wait_for("heimdall manager listening", timeout=20)
    assert f"TLS to backend {url} (service default) is not verified: backends[0].tls.verify is false" in h.output()

    def get():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{_port(config['listen'])}/v", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(get, 15.0, 0.1, "a 200 through an unverified backend")


def test_a_missing_ca_file_is_refused_at_start_naming_the_field(run_heimdall, tmp_path):
    missing = str(tmp_path / "nowhere-ca.pem")
    config = _config(tmp_path, backends=[{"url": "https://127.0.0.1:8443", "tls": {"ca": missing}}])
    h = run_heimdall(config)
    assert h.proc.wait(timeout=20) != 0
    output = h.output()
    assert "backends[0].tls.ca" in output and missing in output, output
