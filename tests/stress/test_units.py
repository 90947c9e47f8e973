"""
heimdall stress, piece by piece: the response parser, the request bytes,
histogram merging, the failover analysis, finding a port's process, the
HTML report, the command line's checks, and the load loop
against small plain-socket servers (threads, not the reactor: the loop
blocks, as it does in its own process).
"""

from __future__ import annotations

import html.parser
import socket
import threading
import time

import pytest

from heimdall.stress import histogram as hdr
from heimdall.stress.cli import build_parser, main, options_from_args
from heimdall.stress.engine import Worker, WorkerPlan
from heimdall.stress.http import ProtocolError, ResponseReader, Target, build_request
from heimdall.stress.report import html_report, text_report
from heimdall.stress.scenario import (
    KillResult,
    analyze_failover,
    backend_matches,
    listening_pids,
)


def _feed_all(reader, data, step=None):
    if step is None:
        return reader.feed(data)
    done = False
    for i in range(0, len(data), step):
        assert not done, "completed before the end"
        done = reader.feed(data[i : i + step])
    return done


@pytest.mark.parametrize("step", [None, 1, 7])
def test_reader_content_length_keep_alive_and_backend(step):
    reader = ResponseReader("X-Backend")
    response = b"HTTP/1.1 200 OK\r\nx-backend:  127.0.0.1:8081 \r\nContent-Length: 5\r\n\r\nhello"
    assert _feed_all(reader, response, step)
    assert (reader.status, reader.backend, reader.close, reader.body_bytes) == (200, "127.0.0.1:8081", False, 5)


@pytest.mark.parametrize("step", [None, 1, 5])
def test_reader_chunked_with_trailers_and_interim_response(step):
    reader = ResponseReader(None)
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert _feed_all(reader, response, step)
    assert (reader.status, reader.close, reader.body_bytes) == (201, True, 19)


def test_reader_close_delimited_head_and_no_body_statuses():
    reader = ResponseReader()
    assert not reader.feed(b"HTTP/1.0 200 OK\r\n\r\nsome")
    assert not reader.feed(b" more")
    assert reader.eof() and reader.body_bytes == 9 and reader.close
    head = ResponseReader(head_request=True)
    assert head.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for status in (204, 304):
        reader = ResponseReader()
        assert reader.feed(b"HTTP/1.1 %d X\r\n\r\n" % status)
    keep = ResponseReader()
    assert keep.feed(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert not keep.close


@pytest.mark.parametrize(
    "response",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2x0 Odd\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_reader_refuses_malformed_responses(response):
    with pytest.raises(ProtocolError):
        ResponseReader().feed(response)


def test_reader_accepts_repeated_identical_content_length():
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab")


def test_build_request_defaults_overrides_body_and_close():
    target = Target.from_url("http://127.0.0.1:8080/a?b=1")
    request = build_request(target, "POST", [("Host", "example"), ("X-A", "1")], b"body", keep_alive=False)
    head, body = request.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /a?b=1 HTTP/1.1"
    assert b"Host: example" in lines and b"Host: 127.0.0.1:8080" not in lines
    assert b"Content-Length: 4" in lines and b"Connection: close" in lines and body == b"body"
    with pytest.raises(ValueError):
        build_request(target, "GET", [("X", "a\r\nInjected: 1")])
    with pytest.raises(ValueError):
        Target.from_url("https://127.0.0.1/")


def test_histograms_merge_exactly_across_workers():
    recorders = [hdr.LatencyRecorder(), hdr.LatencyRecorder()]
    for i in range(1000):
        recorders[i % 2].pending.append(100 + i)  # 100 µs .. 1099 µs
    for recorder in recorders:
        recorder.flush()
    merged = hdr.merge(hdr.encode(r.total) for r in recorders)
    assert merged.get_total_count() == 1000
    summary = hdr.summary_ms(merged)
    assert summary["p50"] == pytest.approx(0.6, rel=0.01)
    assert summary["max"] == pytest.approx(1.099, rel=0.002)
    assert summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["p99_9"] <= summary["max"]
    assert sum(count for _, _, count in hdr.distribution_ms(merged)) == 1000


def test_failover_analysis_phases_and_moved_time():
    kill = KillResult(at=5.0, action="SIGKILL to pid 1", port=8082, pid=1)
    events = [(1.0, "reset"), (5.01, "http_5xx"), (5.4, "reset"), (8.0, "timeout")]
    last_seen = {"127.0.0.1:8081": 9.9, "127.0.0.1:8082": 5.2}
    timeline = [{"t": float(t), "width": 1.0, "responses": 10, "backends": {"127.0.0.1:8082": 3}} for t in range(10)]
    watched = [1.0, 2.0, 4.9, 5.1, 5.2]
    result = analyze_failover(kill, events, last_seen, timeline, 10.0, failed_total=4, watched_times=watched)
    assert result["killed_backend"] == "127.0.0.1:8082"
    assert result["killed_backend_served_before_kill"]
    assert result["moved_after_s"] == pytest.approx(0.4)
    phases = result["phases"]
    assert (phases["before"]["failed"], phases["during"]["failed"], phases["after"]["failed"]) == (1, 2, 1)
    assert not result["passed"] and result["settled"]
    assert result["killed_backend_returned_at_s"] is None
    # Restarted: it answers again after a gap; that is not "still moving".
    clean = analyze_failover(kill, [], last_seen, timeline, 10.0, failed_total=0, watched_times=watched + [7.5, 7.6])
    assert clean["passed"] and clean["moved_after_s"] == pytest.approx(0.2)
    assert clean["killed_backend_returned_at_s"] == 7.5
    assert backend_matches("8082", 8082) and not backend_matches("127.0.0.1:18082", 8082)


def test_listening_pids_finds_this_process():
    import os

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert os.getpid() in listening_pids(port)


def _result(**changes):
    result = {
        "tool": "heimdall stress", "version": "0", "target": "http://127.0.0.1:1/", "method": "GET",
        "mode": "closed", "rate": None, "latency_measured_from": "send time", "connections": 2, "workers": 1,
        "keep_alive": True, "duration_s": 1.0, "requests": 10, "responses": 10, "requests_per_second": 10.0,
        "bytes_received": 1000, "status_codes": {"200": 10}, "errors": {"connect": 0, "timeout": 0, "reset": 0,
        "protocol": 0}, "errors_total": 0, "http_5xx": 0, "failed": 0, "unsent": 0, "abandoned": 0,
        "latency_ms": {"min": 1.0, "mean": 1.0, "stdev": 0.0, "p50": 1.0, "p90": 1.0, "p99": 1.0, "p99_9": 1.0,
                       "max": 1.0},
        "latency_distribution_ms": [[0.9, 1.1, 10]], "histogram": "",
        "backends": {"header": "X-Backend", "counts": {"a<b>": 10}, "percent": {"a<b>": 100.0}},
        "cpu": {"workers": [{"worker": 0, "cpu_seconds": 0.1, "wall_seconds": 1.0, "busy": 0.1}],
                "coordinator_cpu_seconds": 0.0, "cores": 2, "saturated": False},
        "timeline": [{"t": 0.0, "width": 1.0, "responses": 10, "rate": 10.0, "errors": 0, "failed": 0,
                      "status": {"200": 10}, "backends": {"a<b>": 10}, "p50_ms": 1.0, "p99_ms": 1.0, "max_ms": 1.0}],
        "warnings": [], "scenario": None,
    }
    result.update(changes)
    return result


class _Checker(html.parser.HTMLParser):
    """
    Checks that every element that must be closed is, in order.
    """

    VOID = {"meta", "br", "img", "link", "input", "hr"}

    def __init__(self):
        super().__init__()
        self.stack = []
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            self.svgs += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def test_html_report_has_its_charts_and_escapes():
    page = html_report(_result())
    checker = _Checker()
    checker.feed(page)
    assert checker.stack == [] and checker.svgs == 3
    assert "a&lt;b&gt;" in page and "a<b>" not in page  # escaped, in the tables and the charts


def test_text_report_lists_everything():
    text = text_report(_result(warnings=["careful"]))
    for piece in ("10 in 1.00 s", "p99.9", "200: 10", "errors        none", "a<b>", "100.00%", "WARNING: careful"):
        assert piece in text


@pytest.mark.parametrize(
    "argv",
    [
        ["http://127.0.0.1:1/", "-c", "0"],
        ["http://127.0.0.1:1/", "--workers", "3", "-c", "2"],
        ["https://127.0.0.1:1/"],
        ["http://127.0.0.1:1/", "--scenario", "failover"],
        ["http://127.0.0.1:1/", "--scenario", "failover", "-d", "1s"],
        ["http://127.0.0.1:1/", "--kill-port", "9"],
        ["http://127.0.0.1:1/", "-d", "soon"],
    ],
)
def test_command_line_refuses_bad_combinations(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_help_explains_coordinated_omission(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "coordinated omission" in out and "SCHEDULED" in out


def test_options_read_a_body_file(tmp_path):
    body = tmp_path / "payload.json"
    body.write_bytes(b'{"a": 1}')
    args = build_parser().parse_args(["http://127.0.0.1:1/", "-m", "post", "--body", f"@{body}", "-k", "off",
                                      "-H", "X-A: 1"])
    options = options_from_args(args)
    assert options.body == b'{"a": 1}' and options.method == "POST" and not options.keep_alive
    assert options.headers == (("X-A", "1"),)


# -- the load loop against plain-socket servers -------------------------------------------


class _TinyServer:
    """
    A threaded HTTP/1.1 keep-alive server on 127.0.0.1:0 answering every
    request with a fixed response (or never, with C{answer=False}).
    """

    def __init__(self, answer=True, response=b"HTTP/1.1 200 OK\r\nX-Backend: tiny\r\nContent-Length: 2\r\n\r\nok"):
        self.answer = answer
        self.response = response
        self.requests = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn):
        conn.settimeout(0.2)
        buffer = b""
        with conn:
            while not self.stopping:
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.requests += 1
                    if self.answer:
                        conn.sendall(self.response)

    def close(self):
        self.stopping = True
        self.sock.close()
        for thread in self.threads:
            thread.join(timeout=2)


@pytest.fixture
def tiny():
    servers = []

    def start(**kwargs):
        server = _TinyServer(**kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _plan(port, **kwargs):
    target = Target.from_url(f"http://127.0.0.1:{port}/")
    defaults = dict(
        index=0, family=socket.AF_INET, address=("127.0.0.1", port), request=build_request(target),
        head_request=False, keep_alive=True, connections=2, timeout=5.0, interval=0.25,
    )
    defaults.update(kwargs)
    return WorkerPlan(**defaults)


def test_loop_closed_with_count_counts_every_response(tiny):
    server = tiny()
    ticks = []
    final = Worker(_plan(server.port, requests=200), ticks.append).run(time.monotonic())
    assert final["responses"] == 200 == server.requests and final["issued"] == 200
    assert final["status"] == {200: 200} and final["backends"] == {"tiny": 200}
    assert sum(t["responses"] for t in ticks) == 200 and ticks[-1]["final"]
    assert hdr.decode(final["histogram"]).get_total_count() == 200


def test_loop_open_rate_keeps_the_schedule(tiny):
    server = tiny()
    final = Worker(_plan(server.port, rate=200.0, duration=0.5), lambda m: None).run(time.monotonic())
    assert final["issued"] == 100 and final["responses"] == 100 and final["unsent"] == 0


def test_loop_keep_alive_off_uses_one_connection_per_request(tiny):
    server = tiny(response=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    final = Worker(_plan(server.port, requests=30, keep_alive=False), lambda m: None).run(time.monotonic())
    assert final["responses"] == 30 and len(server.threads) - 1 == 30


def test_loop_counts_connect_errors_and_timeouts(tiny):
    from tests.netutil import free_port

    refused = Worker(_plan(free_port(), requests=20), lambda m: None).run(time.monotonic())
    assert refused["errors"]["connect"] == 20 and refused["responses"] == 0 and refused["failed"] == 20
    silent = tiny(answer=False)
    timed_out = Worker(_plan(silent.port, requests=2, timeout=0.3), lambda m: None).run(time.monotonic())
    assert timed_out["errors"]["timeout"] == 2 and [kind for _, kind in timed_out["failure_events"]] == ["timeout"] * 2
