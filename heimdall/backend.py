"""
A demo backend server for trying heimdall out and for testing it.

Run it as C{heimdall backend --port 8081} or C{python -m heimdall.backend
--port 8081}; embed it with L{make_backend_site} or L{listen_backend}.

Every response carries C{X-Backend: HOST:PORT} and, unless stated, a JSON
body.  Paths:

  - anything not below: a JSON description of the request (backend, name,
    host, port, method, path with query, count, pid; C{body_bytes} and
    C{body_sha256} when the request had a body);
  - C{/health}: C{{"status": "ok", "backend": ...}};
  - C{/delay?ms=N}: the default answer after N ms, without blocking;
  - C{/status/CODE}: that status code (no body for 1xx, 204 and 304);
  - C{/bytes?n=N[&chunk=SIZE][&chunked=1]}: N bytes of L{PATTERN}, streamed
    through a pull producer (flat memory, the reader's pace);
  - C{/echo}: method, path, query, headers in received order (repeats
    kept), body size and hash, client address;
  - C{/close}: aborts the connection without answering;
  - C{/hang}: never answers.

Bad query values get a 400 with C{{"error": "..."}}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Set

from twisted.internet.interfaces import IDelayedCall, IPullProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from heimdall.clock import maybe_global_reactor

__all__ = [
    "PATTERN",
    "BackendResource",
    "expected_bytes",
    "listen_backend",
    "main",
    "make_backend_site",
]

_log = Logger()

#: /bytes serves this pattern, repeated: byte i of a response is
#: C{PATTERN[i % len(PATTERN)]}.  Position-dependent content shows up
#: reordered, dropped or duplicated chunks in proxy tests; printable so that
#: curl output stays readable.
PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"

_DEFAULT_CHUNK = 64 * 1024
_MAX_CHUNK = 1024 * 1024
_MAX_DELAY_MS = 3_600_000
# Request bodies are hashed in slices of this size, never read whole.
_READ_SLICE = 64 * 1024


def expected_bytes(n: int, offset: int = 0) -> bytes:
    """
    What C{/bytes} sends at positions C{offset .. offset+n-1}: for tests that
    check a (small) download or a slice of a big one.
    """
    start = offset % len(PATTERN)
    repeats = (start + n) // len(PATTERN) + 1
    return (PATTERN * repeats)[start : start + n]


class _BadRequest(Exception):
    """
    A query value is invalid: answered with 400 and the message.
    """


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(value: bytes) -> str:
    # Latin-1 maps every byte to one code point: lossless for header values.
    return value.decode("latin-1")


def _body_digest(request: Request) -> Optional[Dict[str, Any]]:
    """
    Size and SHA-256 of the request body, or None if the request had none
    (neither Content-Length nor Transfer-Encoding).
    """
    headers = request.requestHeaders
    if not (headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")):
        return None
    digest = hashlib.sha256()
    size = 0
    content = request.content
    if content is not None:
        content.seek(0)
        while True:
            piece = content.read(_READ_SLICE)
            if not piece:
                break
            size += len(piece)
            digest.update(piece)
        content.seek(0)
    return {"body_bytes": size, "body_sha256": digest.hexdigest()}


def _int_arg(request: Request, name: str, default: Optional[int], low: int, high: Optional[int]) -> int:
    values = request.args.get(name.encode("ascii"))
    if not values:
        if default is None:
            raise _BadRequest(f"query parameter {name!r} is required")
        return default
    raw = values[0].decode("latin-1")
    try:
        value = int(raw, 10)
    except ValueError:
        raise _BadRequest(f"query parameter {name!r} must be an integer, not {raw!r}") from None
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and at most {high}"
        raise _BadRequest(f"query parameter {name!r} must be at least {low}{upper}, not {value}")
    return value


def _bool_arg(request: Request, name: str) -> bool:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return False
    raw = values[0].decode("latin-1").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise _BadRequest(f"query parameter {name!r} must be 0 or 1, not {raw!r}")


@implementer(IPullProducer)
class _PatternProducer:
    """
    Writes C{total} bytes of L{PATTERN} to a request, one chunk per
    C{resumeProducing}: the channel asks for the next chunk only when the
    socket has drained, so memory stays at one chunk whatever the size.
    """

    def __init__(self, request: Request, total: int, chunk: int, on_done: Callable[["_PatternProducer"], None]) -> None:
        self.request = request
        self.total = total
        self.chunk = chunk
        self.sent = 0
        self.done = False
        self._on_done = on_done
        # One chunk plus a pattern's length: any chunk is a slice of it.
        self._buffer = expected_bytes(chunk + len(PATTERN))

    def start(self) -> None:
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.done:
            return
        if self.sent >= self.total:
            self._finish()
            return
        size = min(self.chunk, self.total - self.sent)
        start = self.sent % len(PATTERN)
        self.sent += size
        self.request.write(self._buffer[start : start + size])

    def stopProducing(self) -> None:
        # The client went away: stop without finishing the request.
        if not self.done:
            self.done = True
            self._on_done(self)

    def _finish(self) -> None:
        self.done = True
        self.request.unregisterProducer()
        self.request.finish()
        self._on_done(self)


class BackendResource(Resource):
    """
    The demo backend's single resource: dispatches on the path itself
    (C{isLeaf}), so every method and every path ends up in L{render}.

    @ivar count: requests received so far.
    @ivar active_streams: C{/bytes} responses in progress (tests check
        backpressure through their C{sent} attribute).
    @ivar active_delays: pending C{/delay} timers.
    """

    isLeaf = True

    def __init__(
        self,
        name: Optional[str],
        host: str,
        port_getter: Callable[[], int],
        reactor: Any = None,
    ) -> None:
        super().__init__()
        self._name = name
        self.host = host
        self._port_getter = port_getter
        self._reactor = reactor
        self.count = 0
        self.active_streams: Set[_PatternProducer] = set()
        self.active_delays: Set[IDelayedCall] = set()

    # -- identity --------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port_getter()

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)

    @property
    def name(self) -> str:
        return self._name if self._name is not None else f"backend-{self.port}"

    def _get_reactor(self) -> Any:
        return maybe_global_reactor(self._reactor)

    # -- dispatch --------------------------------------------------------

    def render(self, request: Request) -> Any:
        self.count += 1
        count = self.count
        request.setHeader(b"X-Backend", self.address.encode("ascii"))
        path = request.path
        try:
            if path == b"/health":
                self._send_json(request, 200, {"status": "ok", "backend": self.address})
            elif path == b"/delay":
                self._render_delay(request, count)
            elif path.startswith(b"/status/"):
                self._render_status(request, path[len(b"/status/") :])
            elif path == b"/bytes":
                self._render_bytes(request)
            elif path == b"/echo":
                self._send_json(request, 200, self._describe_exchange(request))
            elif path == b"/close":
                request.channel.transport.abortConnection()
            elif path == b"/hang":
                # Nothing to cancel later; the errback only keeps a client
                # that leaves from being logged as an unhandled error.
                request.notifyFinish().addErrback(lambda _: None)
            else:
                self._send_json(request, 200, self._describe_request(request, count))
        except _BadRequest as error:
            self._send_json(request, 400, {"error": str(error), "backend": self.address})
        return NOT_DONE_YET

    # -- paths -----------------------------------------------------------

    def _describe_request(self, request: Request, count: int) -> Dict[str, Any]:
        description: Dict[str, Any] = {
            "backend": self.address,
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "method": _text(request.method),
            "path": _text(request.uri),
            "count": count,
            "pid": os.getpid(),
        }
        body = _body_digest(request)
        if body is not None:
            description.update(body)
        return description

    def _describe_exchange(self, request: Request) -> Dict[str, Any]:
        uri = request.uri
        query = uri.split(b"?", 1)[1] if b"?" in uri else b""
        headers: List[List[str]] = [
            [_text(name), _text(value)]
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        client = request.getClientAddress()
        body = _body_digest(request) or {
            "body_bytes": 0,
            "body_sha256": hashlib.sha256(b"").hexdigest(),
        }
        return {
            "backend": self.address,
            "method": _text(request.method),
            "path": _text(request.path),
            "uri": _text(uri),
            "query": _text(query),
            "http_version": _text(request.clientproto),
            "headers": headers,
            **body,
            "client": {
                "host": getattr(client, "host", None),
                "port": getattr(client, "port", None),
            },
        }

    def _render_delay(self, request: Request, count: int) -> None:
        delay_ms = _int_arg(request, "ms", 0, 0, _MAX_DELAY_MS)

        def answer() -> None:
            self.active_delays.discard(call)
            self._send_json(request, 200, self._describe_request(request, count))

        def client_gone(reason: Failure) -> None:
            # notifyFinish also errbacks after a failed write; only a still
            # pending timer needs cancelling.
            if call.active():
                call.cancel()
            self.active_delays.discard(call)

        call = self._get_reactor().callLater(delay_ms / 1000.0, answer)
        self.active_delays.add(call)
        request.notifyFinish().addErrback(client_gone)

    def _render_status(self, request: Request, raw_code: bytes) -> None:
        try:
            code = int(raw_code.decode("latin-1"), 10)
        except ValueError:
            code = 0
        if not 100 < code < 600:
            raise _BadRequest(f"status code must be an integer from 101 to 599, not {_text(raw_code)!r}")
        if code in (204, 304) or code < 200:
            request.setResponseCode(code)
            request.finish()
            return
        self._send_json(request, code, {"status": code, "backend": self.address})

    def _render_bytes(self, request: Request) -> None:
        total = _int_arg(request, "n", None, 0, None)
        chunk = _int_arg(request, "chunk", _DEFAULT_CHUNK, 1, _MAX_CHUNK)
        chunked = _bool_arg(request, "chunked")
        request.setHeader(b"Content-Type", b"application/octet-stream")
        if not chunked:
            request.setHeader(b"Content-Length", b"%d" % (total,))
        if request.method == b"HEAD":
            request.finish()
            return
        producer = _PatternProducer(request, total, chunk, self.active_streams.discard)
        self.active_streams.add(producer)
        producer.start()

    # -- helpers ---------------------------------------------------------

    @staticmethod
    def _send_json(request: Request, code: int, payload: Dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8") + b"\n"
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        # On HEAD, Request.write sends the headers and drops the body.
        request.write(body)
        request.finish()


class _BackendSite(Site):
    """
    A L{Site} whose access log is optional (off by default: the stock one
    writes a line per request through the legacy log).
    """

    noisy = False
    access_log = False

    def log(self, request: Request) -> None:
        if self.access_log:
            super().log(request)


def make_backend_site(
    name: Optional[str],
    host: str,
    port_getter: Callable[[], int],
    *,
    access_log: bool = False,
    reactor: Any = None,
) -> Site:
    """
    Build the demo backend's site.

    @param name: reported as C{name}; None means C{backend-PORT}.
    @param host: the listening host, reported in C{X-Backend}.
    @param port_getter: returns the listening port; a callable because with
        port 0 the port is known only after listening.
    @param access_log: write a Combined Log Format line per request to the
        (legacy) log.
    """
    resource = BackendResource(name, host, port_getter, reactor=reactor)
    site = _BackendSite(resource, parsePOSTFormSubmission=False, reactor=reactor)
    site.access_log = access_log
    return site


def listen_backend(
    *,
    reactor: Any = None,
    host: str = "127.0.0.1",
    port: int = 0,
    name: Optional[str] = None,
    access_log: bool = False,
) -> Any:
    """
    Serve a demo backend in this process; returns the L{IListeningPort}
    (C{getHost().port} is the port; C{stopListening()} to clean up).  Its
    L{BackendResource} is C{listening_port.factory.resource}.
    """
    reactor = maybe_global_reactor(reactor)
    holder: List[Any] = []
    site = make_backend_site(
        name, host, lambda: holder[0].getHost().port, access_log=access_log, reactor=reactor
    )
    listening = reactor.listenTCP(port, site, interface=host)
    holder.append(listening)
    return listening


def _parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="heimdall backend",
        description="Run a demo HTTP backend server (JSON answers, test paths).",
    )
    parser.add_argument("--port", type=int, default=8081, help="port to listen on; 0 picks a free one (default 8081)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--name", default=None, help="name reported in answers (default backend-PORT)")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """
    Run the demo backend until SIGTERM or SIGINT; returns the exit status.
    """
    args = _parse_args(list(sys.argv[1:] if argv is None else argv))

    reactor = maybe_global_reactor()
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Errors always reach stderr; info (the access log, port messages) only
    # when asked.  stdout stays for the one "listening" line.
    level = LogLevel.info if args.access_log else LogLevel.warn
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    # A spawner may signal us as soon as the port accepts connections, which
    # is before reactor.run installs its handlers: stop cleanly from then on.
    import signal

    def stop_soon(signum, frame) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop_soon)
    signal.signal(signal.SIGINT, stop_soon)

    try:
        listening = listen_backend(
            reactor=reactor,
            host=args.host,
            port=args.port,
            name=args.name,
            access_log=args.access_log,
        )
    except CannotListenError as error:
        sys.stderr.write(f"heimdall backend: cannot listen on {args.host}:{args.port}: {error.socketError}\n")
        return 1
    address = _format_address(args.host, listening.getHost().port)

    def announce() -> None:
        sys.stdout.write(f"heimdall backend listening on http://{address}\n")
        sys.stdout.flush()

    # Announced once running: reactor.run has then installed the SIGTERM and
    # SIGINT handlers that stop it, so whoever reads the line may signal us.
    reactor.callWhenRunning(announce)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
