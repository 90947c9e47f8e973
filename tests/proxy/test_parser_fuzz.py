"""
A request-parser fuzz test: random and mutated request heads through a
real heimdall (in-process, 127.0.0.1, port 0) to a raw recording backend
that parses what reaches it with h11, a strict HTTP/1.1 parser.

For each case the generator knows what the client meant (method, target,
body) and which outcomes are acceptable:

  - FORWARD: a valid request, oddly written at most where the RFC allows
    it: it must reach the backend as exactly that one request;
  - REJECT: faulty or ambiguous framing, or a head RFC 9112 says must get
    400: the client gets a 4xx (or 501 for an unknown transfer coding)
    and nothing of it reaches the backend;
  - EITHER: the RFC lets a recipient reject or repair it (obs-fold, bare
    LF, two identical Content-Lengths, CL with TE...): one of the two.

Whatever the case, nothing may reach the backend but the one request the
client meant (a second request there would be a smuggled one), and no case
may take longer than client_header (1 s here) plus a margin.  Seeded, 300
cases (each kind of case in turn), sequential: a second or two.
"""

from __future__ import annotations

import random
import re
from typing import Dict, List, Optional, Tuple

import attrs
import h11
import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Factory, Protocol

SEED = 20261202
CASES = 300
CLIENT_HEADER = 1.0
#: How long a case may take: the header timeout and a margin for a loaded machine.
CASE_LIMIT = CLIENT_HEADER + 2.0

FORWARD, REJECT, EITHER = "forward", "reject", "either"


# --- What the client means, and how it is written --------------------------------


@attrs.define
class Case:
    number: int
    method: str
    target: str
    body: bytes
    wire: bytes
    expect: str
    mutation: str


_SAFE_PATH = "abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@%"


def _target(rnd: random.Random, number: int) -> str:
    path = "".join(rnd.choice(_SAFE_PATH.replace("%", "")) for _ in range(rnd.randint(0, 12)))
    query = "" if rnd.random() < 0.6 else "?" + "&".join(f"k{i}=v%20{i}" for i in range(rnd.randint(1, 3)))
    return f"/case/{number}/{path}{query}"


def _chunked(rnd: random.Random, body: bytes, size_format=None, ext=False) -> bytes:
    out, rest = [], body
    while rest:
        n = rnd.randint(1, max(1, len(rest)))
        size = (size_format or "{:x}").format(n)
        out.append(size.encode() + (b";ext=1" if ext else b"") + b"\r\n" + rest[:n] + b"\r\n")
        rest = rest[n:]
    return b"".join(out) + b"0\r\n\r\n"


def _base(rnd: random.Random, number: int):
    method = rnd.choice(["GET", "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    body = b""
    if method in ("POST", "PUT", "PATCH"):
        body = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 48)))
    headers = [("Host", rnd.choice(["example.test", "example.test:8080", "127.0.0.1"]))]
    for i in range(rnd.randint(0, 3)):
        headers.append((f"X-Fuzz-{i}", rnd.choice(["a", "a b", "1, 2", "\tx", "q=0.5", "\x80\xff"])))
    framing = "cl" if body and rnd.random() < 0.6 else ("chunked" if body else rnd.choice(["none", "none", "cl0"]))
    return method, _target(rnd, number), headers, body, framing


def _encode(method, target, headers, body, framing, rnd, version="HTTP/1.1", eol=b"\r\n", chunk_eol=None):
    head = [f"{method} {target} {version}".encode("latin-1")]
    for name, value in headers:
        head.append(f"{name}: {value}".encode("latin-1") if isinstance(value, str) else name.encode() + b": " + value)
    payload = b""
    if framing == "cl":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "cl0":
        head.append(b"Content-Length: 0")
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        payload = _chunked(rnd, body)
        if chunk_eol is not None:
            payload = payload.replace(b"\r\n", chunk_eol)
    return eol.join(head) + eol + eol + payload


def _mutations():
    """
    Each: (name, expectation, function(rnd, method, target, headers, body, framing) -> wire bytes or
    None when it does not apply).
    """

    def head_lines(wire):
        head, _, payload = wire.partition(b"\r\n\r\n")
        return head.split(b"\r\n"), payload

    def join(lines, payload):
        return b"\r\n".join(lines) + b"\r\n\r\n" + payload

    def with_body(f):
        def g(rnd, m, t, h, b, fr):
            if not b:
                return None
            return f(rnd, m, t, h, b, fr)

        return g

    def add_line(line, framing=None):
        def f(rnd, m, t, h, b, fr):
            lines, payload = head_lines(_encode(m, t, h, b, framing or fr, rnd))
            lines.insert(rnd.randint(1, len(lines)), line(rnd, b) if callable(line) else line)
            return join(lines, payload)

        return f

    def replace_line(prefix, new):
        def f(rnd, m, t, h, b, fr):
            lines, payload = head_lines(_encode(m, t, h, b, fr, rnd))
            hits = [i for i, l in enumerate(lines) if l.lower().startswith(prefix.lower())]
            if not hits:
                return None
            lines[hits[0]] = new(lines[hits[0]], b) if callable(new) else new
            return join(lines, payload)

        return f

    def cl_body(value, body_len=None):
        # A Content-Length line of its own, the body sent as meant.
        def f(rnd, m, t, h, b, fr):
            lines, _ = head_lines(_encode(m, t, h, b, "none", rnd))
            lines.append(b"Content-Length: " + value(len(b)))
            return join(lines, b)

        return with_body(f)

    def chunked_with(size_format=None, ext=False, eol=None):
        def f(rnd, m, t, h, b, fr):
            lines, _ = head_lines(_encode(m, t, h, b, "none", rnd))
            lines.append(b"Transfer-Encoding: chunked")
            payload = _chunked(rnd, b, size_format, ext)
            return join(lines, payload if eol is None else payload.replace(b"\r\n", eol))

        return with_body(f)

    def te_value(value):
        def f(rnd, m, t, h, b, fr):
            lines, _ = head_lines(_encode(m, t, h, b, "none", rnd))
            lines.append(b"Transfer-Encoding: " + value)
            return join(lines, _chunked(rnd, b))

        return with_body(f)

    def bad_chunk(payload_of):
        def f(rnd, m, t, h, b, fr):
            lines, _ = head_lines(_encode(m, t, h, b, "none", rnd))
            lines.append(b"Transfer-Encoding: chunked")
            return join(lines, payload_of(b))

        return with_body(f)

    def request_line(new):
        def f(rnd, m, t, h, b, fr):
            lines, payload = head_lines(_encode(m, t, h, b, fr, rnd))
            lines[0] = new(m, t).encode("latin-1")
            return join(lines, payload)

        return f

    def all_lf(rnd, m, t, h, b, fr):
        return _encode(m, t, h, b, fr, rnd, eol=b"\n", chunk_eol=b"\n" if rnd.random() < 0.5 else None)

    def without_host(version):
        def f(rnd, m, t, h, b, fr):
            return _encode(m, t, [x for x in h if x[0] != "Host"], b, fr, rnd, version=version)

        return f

    def cl_and_te(rnd, m, t, h, b, fr):
        lines, _ = head_lines(_encode(m, t, h, b, "none", rnd))
        payload = _chunked(rnd, b)
        lines.append(b"Content-Length: %d" % rnd.choice([len(payload), len(b), 0]))
        lines.append(b"Transfer-Encoding: chunked")
        if rnd.random() < 0.5:
            lines.reverse()
            lines.insert(0, lines.pop())  # the request line first again
        return join(lines, payload)

    def te_spaced(rnd, m, t, h, b, fr):
        if not b:
            return None
        lines, _ = head_lines(_encode(m, t, h, b, "none", rnd))
        lines.append(b"Transfer-Encoding : chunked")
        return join(lines, _chunked(rnd, b))

    def cl_mismatched_chunk(b):
        n = len(b)
        return b"%x\r\n" % max(0, n - 1) + b + b"\r\n0\r\n\r\n"

    return [
        ("none", FORWARD, lambda rnd, m, t, h, b, fr: _encode(m, t, h, b, fr, rnd)),
        ("http10", FORWARD, lambda rnd, m, t, h, b, fr: _encode(m, t, h, b, "cl" if b else "none", rnd, version="HTTP/1.0")),
        ("http10 without Host", FORWARD, lambda rnd, m, t, h, b, fr: _encode(m, t, [x for x in h if x[0] != "Host"], b, "cl" if b else "none", rnd, version="HTTP/1.0")),
        ("chunk size leading zeros", FORWARD, chunked_with("{:08x}")),
        ("chunk size upper-case hex", FORWARD, chunked_with("{:X}")),
        ("chunk extension", FORWARD, chunked_with(ext=True)),
        ("TE: Chunked (case)", FORWARD, te_value(b"Chunked")),
        ("OWS around header value", FORWARD, replace_line(b"host:", lambda line, b: line.replace(b": ", b":  \t") + b" \t")),
        ("Expect: 100-continue", FORWARD, add_line(b"Expect: 100-continue")),
        ("leading empty line", EITHER, lambda rnd, m, t, h, b, fr: b"\r\n" + _encode(m, t, h, b, fr, rnd)),
        ("two identical Content-Length", EITHER, with_body(add_line(lambda rnd, b: b"Content-Length: %d" % len(b), "cl"))),
        ("Content-Length: n, n", EITHER, cl_body(lambda n: b"%d, %d" % (n, n))),
        ("Content-Length and Transfer-Encoding", EITHER, cl_and_te),
        ("TE: chunked twice", EITHER, with_body(add_line(b"Transfer-Encoding: chunked", "chunked"))),
        ("obs-fold", EITHER, add_line(b"X-Folded: first\r\n  second")),
        ("bare LF line ends", EITHER, all_lf),
        ("DEL in a value", EITHER, add_line(b"X-Del: a\x7fb")),
        ("method in lower case", EITHER, request_line(lambda m, t: f"{m.lower()} {t} HTTP/1.1")),
        ("Connection: content-length", EITHER, with_body(add_line(b"Connection: content-length", "cl"))),
        ("two different Content-Length", REJECT, with_body(add_line(lambda rnd, b: b"Content-Length: %d" % (len(b) + 1), "cl"))),
        ("Content-Length: n, m", REJECT, cl_body(lambda n: b"%d, %d" % (n, n + 3))),
        ("huge Content-Length", REJECT, cl_body(lambda n: b"9" * 30)),
        ("Content-Length 2**64", REJECT, cl_body(lambda n: b"%d" % (2**64 + n))),
        ("negative Content-Length", REJECT, cl_body(lambda n: b"-%d" % n)),
        ("Content-Length with a sign", REJECT, cl_body(lambda n: b"+%d" % n)),
        ("Content-Length in hex", REJECT, cl_body(lambda n: b"0x%x" % n)),
        ("TE: chunked, identity", REJECT, te_value(b"chunked, identity")),
        ("TE: identity, chunked", REJECT, te_value(b"identity, chunked")),
        ("TE: gzip (chunked not final)", REJECT, te_value(b"chunked, gzip")),
        ("TE: xchunked", REJECT, te_value(b"xchunked")),
        ("space before colon (CL)", REJECT, with_body(replace_line(b"content-length:", lambda line, b: line.replace(b":", b" :", 1)))),
        ("space before colon (TE)", REJECT, te_spaced),
        ("space before colon (other)", REJECT, add_line(b"X-Space : v")),
        ("tab before colon", REJECT, add_line(b"X-Tab\t: v")),
        # RFC 9110 5.5: CR, LF and NUL in a value must be refused or each
        # replaced with SP (Twisted 26.10 refuses, 26.4 on PyPy replaces);
        # a recipient MAY keep the other controls.
        ("NUL in a value", EITHER, add_line(b"X-Nul: a\x00b")),
        ("CR in a value", EITHER, add_line(b"X-Cr: a\rb")),
        ("control byte in a value", EITHER, add_line(b"X-Ctl: a\x01b")),
        ("bare LF in chunk lines", REJECT, chunked_with(eol=b"\n")),
        ("bare LF after the last chunk", REJECT, bad_chunk(lambda b: b"%x\r\n" % len(b) + b + b"\r\n0\r\n\n")),
        ("control byte in a name", REJECT, add_line(b"X-C\x01tl: v")),
        ("a line without colon", REJECT, add_line(b"NoColonHere")),
        ("empty header name", REJECT, add_line(b": v")),
        ("chunk size not hex", REJECT, bad_chunk(lambda b: b"zz\r\n" + b + b"\r\n0\r\n\r\n")),
        ("chunk size negative", REJECT, bad_chunk(lambda b: b"-%x\r\n" % len(b) + b + b"\r\n0\r\n\r\n")),
        ("chunk size overflow", REJECT, bad_chunk(lambda b: b"1" + b"0" * 20 + b"\r\n" + b + b"\r\n0\r\n\r\n")),
        ("chunk size 0x prefix", REJECT, bad_chunk(lambda b: b"0x%x\r\n" % len(b) + b + b"\r\n0\r\n\r\n")),
        ("chunk data longer than its size", REJECT, bad_chunk(cl_mismatched_chunk)),
        ("HTTP/1.1 without Host", REJECT, without_host("HTTP/1.1")),
        ("two Host lines", REJECT, add_line(b"Host: other.test")),
        ("userinfo in Host", REJECT, replace_line(b"host:", b"Host: user@example.test")),
        ("two spaces in the request line", REJECT, request_line(lambda m, t: f"{m}  {t} HTTP/1.1")),
        ("lower-case version", REJECT, request_line(lambda m, t: f"{m} {t} http/1.1")),
        ("control byte in the target", REJECT, request_line(lambda m, t: f"{m} {t}\x01x HTTP/1.1")),
        ("space in the target", REJECT, request_line(lambda m, t: f"{m} {t} x HTTP/1.1")),
    ]


MUTATIONS = _mutations()


def generate(number: int, rnd: random.Random) -> Case:
    # Every kind in turn (each gets CASES / len(MUTATIONS) cases), on a
    # random request it applies to.
    name, expect, build = MUTATIONS[number % len(MUTATIONS)]
    while True:
        method, target, headers, body, framing = _base(rnd, number)
        wire = build(rnd, method, target, headers, body, framing)
        if wire is not None:
            if method.lower() != method and name == "method in lower case":
                method = method.lower()
            return Case(number, method, target, body, wire, expect, name)


# --- The recording backend -------------------------------------------------------


@attrs.define
class Received:
    method: str
    target: str
    body: bytes
    headers: list


class _Recorder(Protocol):
    def connectionMade(self):
        self.conn = h11.Connection(h11.SERVER)
        self.raw = b""
        self.current: Optional[Received] = None

    def dataReceived(self, data):
        self.raw += data
        self.conn.receive_data(data)
        try:
            self._events()
        except h11.RemoteProtocolError as e:
            self.factory.errors.append((str(e), self.raw))
            self.transport.abortConnection()

    def _events(self):
        while True:
            event = self.conn.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                self.current = Received(event.method.decode("latin-1"), event.target.decode("latin-1"), b"", list(event.headers))
            elif isinstance(event, h11.Data):
                self.current.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.factory.received.append(self.current)
                self._respond(self.current.method)
                self.conn.start_next_cycle()

    def _respond(self, method):
        out = self.conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
        if method != "HEAD":
            out += self.conn.send(h11.Data(data=b"ok"))
        out += self.conn.send(h11.EndOfMessage())
        self.transport.write(out)


class RecordingBackend(Factory):
    protocol = _Recorder

    def __init__(self):
        self.received: List[Received] = []
        self.errors: List[Tuple[str, bytes]] = []


# --- The client ----------------------------------------------------------------


class _Client(Protocol):
    def __init__(self, head_only):
        self.head_only = head_only
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        status = _complete_response(self.data, self.head_only)
        if status is not None and not self.done.called:
            self.done.callback(("response", status))

    def connectionLost(self, reason):
        if not self.done.called:
            status = _status(self.data)
            self.done.callback(("closed", status))


def _status(data: bytes) -> Optional[int]:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(match.group(1)) if match else None


def _complete_response(data: bytes, head_only: bool) -> Optional[int]:
    while True:
        if b"\r\n\r\n" not in data:
            return None
        head, rest = data.split(b"\r\n\r\n", 1)
        status = _status(head)
        if status is None:
            return None
        if 100 <= status < 200:
            data = rest  # 100 Continue: the real answer follows
            continue
        match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        length = 0 if head_only and status < 300 else int(match.group(1)) if match else None
        if length is None or len(rest) >= length:
            return status
        return None


@defer.inlineCallbacks
def _run_case(reactor, port, case: Case):
    client = _Client(head_only=case.method.upper() == "HEAD")
    connected = defer.Deferred()

    class F(ClientFactory):
        def buildProtocol(self, addr):
            reactor.callLater(0, connected.callback, None)
            return client

        def clientConnectionFailed(self, connector, reason):
            connected.errback(reason)

    reactor.connectTCP("127.0.0.1", port, F())
    yield connected
    started = reactor.seconds()
    client.transport.write(case.wire)
    timer = reactor.callLater(CASE_LIMIT, lambda: client.done.called or client.done.callback(("hung", None)))
    how, status = yield client.done
    if timer.active():
        timer.cancel()
    elapsed = reactor.seconds() - started
    closed = defer.Deferred()
    if client.transport.connected:
        client.connectionLost = lambda reason: closed.callback(None)
        client.transport.abortConnection()
        yield closed
    return how, status, elapsed


def _rejected(status: Optional[int]) -> bool:
    return status is not None and (400 <= status < 500 or status == 501)


def _check(case: Case, how, status, received: List[Received]) -> Optional[str]:
    if how == "hung":
        return f"no answer within {CASE_LIMIT}s"
    mine = [r for r in received if f"/case/{case.number}/" in r.target]
    if _rejected(status):
        if mine:
            return f"{status} but it reached the backend: {mine}"
        return None if case.expect in (REJECT, EITHER) else f"a valid request got {status}"
    if case.expect == REJECT:
        return f"should be rejected, got {how} {status}; backend saw {mine}"
    if status != 200:
        return f"expected 200 from the backend, got {how} {status}"
    if len(mine) != 1:
        return f"{len(mine)} requests reached the backend: {mine}"
    got = mine[0]
    meant = (case.method, case.target, case.body)
    if (got.method, got.target, got.body) != meant:
        return f"backend saw {(got.method, got.target, got.body)!r}, meant {meant!r}"
    return None


@pytest_twisted.inlineCallbacks
def test_hostile_request_heads_are_rejected_or_forwarded_exactly(reactor, tracked, start_proxy):
    backend = RecordingBackend()
    backend_port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{backend_port}"], site_options={"header_timeout": CLIENT_HEADER})
    rnd = random.Random(SEED)
    failures, outcomes = [], {}
    for number in range(CASES):
        case = generate(number, rnd)
        before = len(backend.received)
        how, status, elapsed = yield _run_case(reactor, proxy.port, case)
        problem = _check(case, how, status, backend.received[before:])
        key = (case.mutation, "rejected" if _rejected(status) else "forwarded" if status == 200 else f"{how} {status}")
        outcomes[key] = outcomes.get(key, 0) + 1
        if problem is not None:
            failures.append(f"case {number} [{case.mutation}] {case.wire!r}: {problem}")
    # Every request the backend saw belongs to the case that meant it: no
    # smuggled request, no request of a rejected case arriving late.
    targets = [r.target for r in backend.received]
    duplicates = {t for t in targets if targets.count(t) > 1}
    # With -s: what heimdall did with each kind of case.
    print("\n".join(f"{name}: {verdict} x{count}" for (name, verdict), count in sorted(outcomes.items())))
    report = failures + [f"backend: {error}: {raw!r}" for error, raw in backend.errors]
    assert not report, "\n".join(report[:30]) + f"\n({len(failures)} failures, {len(backend.errors)} backend errors)"
    assert not duplicates, duplicates
    # The generator covers what it claims to (a change to it cannot
    # silently skip the framing cases).
    assert {name for name, _ in outcomes} == {name for name, _, _ in MUTATIONS}


# --- What the fuzzer found, pinned --------------------------------------------


@pytest_twisted.inlineCallbacks
def test_an_http10_request_without_host_goes_upstream_with_the_backend_s_host(reactor, tracked, start_proxy):
    backend = RecordingBackend()
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    case = Case(0, "GET", "/case/0/", b"", b"GET /case/0/ HTTP/1.0\r\n\r\n", FORWARD, "pinned")
    how, status, _ = yield _run_case(reactor, proxy.port, case)
    assert status == 200 and not backend.errors
    assert (b"host", b"127.0.0.1:%d" % port) in backend.received[0].headers


@pytest_twisted.inlineCallbacks
def test_chunk_lines_ending_in_a_bare_lf_get_400_at_once(reactor, tracked, start_proxy):
    backend = RecordingBackend()
    port = tracked.listen(backend).getHost().port
    proxy = start_proxy([f"http://127.0.0.1:{port}"])
    head = b"POST /case/0/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for body in (b"3\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\n"):
        case = Case(0, "POST", "/case/0/", b"abc", head + body, REJECT, "pinned")
        how, status, elapsed = yield _run_case(reactor, proxy.port, case)
        assert status == 400 and elapsed < 1.0, (how, status, elapsed)
    assert backend.received == []  # no complete request reached it
