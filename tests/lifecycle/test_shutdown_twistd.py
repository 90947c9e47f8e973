"""
The graceful shutdown of a real twistd heimdall: on SIGTERM a request in
flight finishes with 200, an idle keep-alive connection is closed, a new
connection is refused and heimdall exits within the grace; a second
SIGTERM ends it at once.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from tests.netutil import free_port
from tests.processes import free_base

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")


def _config(port, grace):
    return {
        "listen": f"tcp:{port}:interface=127.0.0.1",
        "spawn": 1,
        "manager": {"listen": f"tcp:{free_port()}:interface=127.0.0.1", "base_port": free_base(1)},
        "timeouts": {"shutdown_grace": grace},
    }


def _read_response(sock, wait_for_eof=True):
    """
    One response (Content-Length framed), then (with C{wait_for_eof})
    whether the connection closes within 5 s: (status, body, closed_after).
    """
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, data, True
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return int(head.split(b" ")[1]), rest, True
        rest += chunk
    if not wait_for_eof:
        return int(head.split(b" ")[1]), rest[:length], False
    sock.settimeout(5)
    try:
        closed = sock.recv(1) == b""
    except socket.timeout:
        closed = False
    return int(head.split(b" ")[1]), rest[:length], closed


def _get(sock, target):
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)


def _ready(h, port):
    h.wait_for("spawned demo backend")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            _get(s, b"/")
            s.settimeout(5)
            if s.recv(12).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise AssertionError(h.output())


def _cut(sock):
    """
    Whether the connection ended without a response (aborted: EOF or RST).
    """
    sock.settimeout(5)
    try:
        data = sock.recv(100)
    except ConnectionResetError:
        data = b""
    sock.close()
    return data == b""


def _in_thread(target):
    result = {}

    def run():
        result["value"] = target()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_sigterm_lets_a_request_in_flight_finish_and_refuses_new_connections(run_heimdall):
    port = free_port()
    h = run_heimdall(_config(port, "6s"))
    _ready(h, port)
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    _get(idle, b"/")
    status, _, closed = _read_response(idle, wait_for_eof=False)
    assert status == 200 and not closed
    busy = socket.create_connection(("127.0.0.1", port), timeout=5)
    _get(busy, b"/delay?ms=2000")
    thread, result = _in_thread(lambda: _read_response(busy))
    time.sleep(0.4)  # the request is with the backend
    sent = time.monotonic()
    h.proc.send_signal(signal.SIGTERM)
    h.wait_for("shutting down: no new connections", timeout=5)
    # A new connection is refused during the grace.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    # The idle keep-alive connection was closed.
    idle.settimeout(5)
    assert idle.recv(1) == b""
    idle.close()
    thread.join(timeout=10)
    status, body, closed = result["value"]
    assert status == 200 and body, h.output()
    assert closed  # no keep-alive once draining
    busy.close()
    assert h.proc.wait(timeout=10) == -signal.SIGTERM
    assert time.monotonic() - sent < 6.0, h.output()
    assert "every request finished" in h.output()
    assert "exited with status 0" in h.output()  # the spawned server was stopped


def test_a_second_sigterm_stops_at_once(run_heimdall):
    port = free_port()
    h = run_heimdall(_config(port, "60s"))
    _ready(h, port)
    busy = socket.create_connection(("127.0.0.1", port), timeout=5)
    _get(busy, b"/delay?ms=30000")
    time.sleep(0.4)
    h.proc.send_signal(signal.SIGTERM)
    h.wait_for("shutting down: no new connections", timeout=5)
    time.sleep(0.3)
    assert h.proc.poll() is None  # waiting for the request
    sent = time.monotonic()
    h.proc.send_signal(signal.SIGTERM)
    assert h.proc.wait(timeout=10) == -signal.SIGTERM
    assert time.monotonic() - sent < 5.0
    assert _cut(busy)  # no response
    output = h.output()
    assert "SIGTERM received again: stopping at once" in output
    assert "shutdown: cut short, closing 1 connection(s) still open" in output


def test_the_grace_ends_what_is_still_running(run_heimdall):
    port = free_port()
    h = run_heimdall(_config(port, "1s"))
    _ready(h, port)
    busy = socket.create_connection(("127.0.0.1", port), timeout=5)
    _get(busy, b"/delay?ms=30000")
    time.sleep(0.4)
    sent = time.monotonic()
    h.proc.send_signal(signal.SIGTERM)
    assert h.proc.wait(timeout=10) == -signal.SIGTERM
    elapsed = time.monotonic() - sent
    assert 0.9 < elapsed < 6.0
    assert "shutdown: grace over, closing 1 connection(s) still open" in h.output()
    assert _cut(busy)
