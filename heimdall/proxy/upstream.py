"""
heimdall's upstream HTTP/1.1 client.

L{UpstreamConnection} is one keep-alive connection to a backend: it writes a
request (streaming its body, with a length or chunked) and parses the
response strictly: a bad status line, conflicting Content-Length values,
malformed chunks or an oversized head make it fail with C{bad_response}
and close the connection, never guess.  L{UpstreamPool} keeps idle
connections per backend (most recently used first) and opens new ones
through one cached endpoint per backend.

Not C{twisted.web.client.Agent}: with a tuned pool it ran at half this
client's throughput here (per-request endpoints, IDNA work; see the GUIDE).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from heimdall.clock import maybe_global_reactor
from heimdall.config.model import TimeoutsConfig, UpstreamConfig
from heimdall.interfaces import IRequestBodyConsumer
from heimdall.pool.values import Backend, FailureKind
from heimdall.proxy.endpoints import backend_endpoint

_log = Logger()

MAX_RESPONSE_HEAD = 64 * 1024
_HEX = b"0123456789abcdefABCDEF"

_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DEAD = range(6)  # parser states
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)  # chunked sub-states

_NO_BODY_STATUS = frozenset({204, 304})
_WS = (32, 9)  # space, tab
# Lengths of Content-Length, Transfer-Encoding and Connection: most header
# names are rejected as framing headers by their length alone.
_FRAMING_LENGTHS = frozenset({14, 17, 10})


class _BadResponse(Exception):
    pass


def _content_length(values: List[bytes]) -> int:
    """The one Content-Length C{values} agree on (RFC 9110 8.6), else L{_BadResponse}."""
    found = None
    for value in values:
        for part in value.split(b","):
            part = part.strip()
            if not part.isdigit():
                raise _BadResponse(f"invalid Content-Length {value!r}")
            n = int(part)
            if found is not None and n != found:
                raise _BadResponse("conflicting Content-Length values")
            found = n
    if found is None:
        raise _BadResponse("empty Content-Length")
    return found


def _read_head(head: bytes) -> tuple:
    """
    Parse a response head (without its final blank line): C{(status,
    reason, http10, headers, lengths, transfer_codings, connection)}, where
    C{headers} are the C{(name, value)} pairs as received, C{lengths} the
    Content-Length values (or None), C{transfer_codings} the joined
    Transfer-Encoding values (or None) and C{connection} the lower-cased
    Connection values, each after a comma.  Raises L{_BadResponse}.
    """
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        # A bare CR or LF: header values reach the client unsanitised
        # (see heimdall.proxy.headers.response_headers), so the head must
        # be clean.
        raise _BadResponse("bare CR or LF in response head")
    lines = head.split(b"\r\n")

    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if (
        len(parts) < 2
        or not parts[0].startswith(b"HTTP/1.")
        or len(parts[0]) != 8
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise _BadResponse(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else b""
    http10 = parts[0] == b"HTTP/1.0"

    headers = []
    lengths = None
    transfer_codings = None
    connection = b""
    for line in lines[1:]:
        colon = line.find(b":")
        # No name, or whitespace around it (which includes obsolete line
        # folding, which RFC 9112 lets a client reject).
        if colon <= 0 or line[colon - 1] in _WS or line[0] in _WS:
            raise _BadResponse(f"bad header line {line[:80]!r}")
        name = line[:colon]
        value = line[colon + 1 :].strip(b" \t")
        if len(name) in _FRAMING_LENGTHS:
            lower = name.lower()
            if lower == b"content-length":
                lengths = [value] if lengths is None else lengths + [value]
            elif lower == b"transfer-encoding":
                transfer_codings = value if transfer_codings is None else transfer_codings + b"," + value
            elif lower == b"connection":
                connection += b"," + value.lower()
        headers.append((name, value))
    return status, reason, http10, headers, lengths, transfer_codings, connection


@implementer(IPushProducer, IRequestBodyConsumer)
class UpstreamConnection(Protocol):
    """
    One HTTP/1.1 connection to a backend: L{send_request}, then
    L{write_body}/L{end_body} for a body.  Also the push producer the client
    side registers, so that a slow client pauses reading from the backend.
    """

    def __init__(self, pool: "UpstreamPool", backend: Backend, generation: int) -> None:
        self._pool = pool
        self.backend = backend
        self.generation = generation
        self.requests_sent = 0
        self.reused = False
        self.idle_since = 0.0
        self._state = _DEAD
        self._handler = None
        self._buffer = b""
        self._remaining = 0
        self._chunk_state = _SIZE
        self._keep_alive = True
        self._head_request = False
        self._response_started = False
        self._request_complete = True
        self._chunked_body = False
        self._paused = False
        self._lost = False
        self._lost_waiters: List[defer.Deferred] = []
        self._deadline: Optional[float] = None
        self._deadline_call = None
        # Set for a request with an Upgrade: a 101 then hands the connection to a tunnel.
        self.expect_upgrade = False
        self._tunnel = None

    # -- IProtocol -------------------------------------------------------------

    def connectionMade(self) -> None:
        self._state = _IDLE
        transport = self.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)

    def connectionLost(self, reason) -> None:
        self._lost = True
        self._cancel_deadline()
        state, handler = self._state, self._handler
        self._state = _DEAD
        self._handler = None
        self._pool._connection_lost(self)
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.upstream_lost(reason)
        if handler is not None:
            if state == _UNTIL_CLOSE:
                handler.response_finished()
            else:
                handler.response_failed(
                    FailureKind.RESET, reason.getErrorMessage(), self._response_started
                )
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- requests ----------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """
        Whether the connection may carry another request: the last response
        was complete and allowed keep-alive, and the request body was sent
        in full.
        """
        return (
            self._state == _IDLE
            and self._keep_alive
            and self._request_complete
            and not self._lost
            and not self.transport.disconnecting
        )

    def send_request(self, method: bytes, target: bytes, host: Optional[bytes], headers, body_length, handler) -> None:
        """
        Write a request head.

        @param headers: (name, value) pairs, already end-to-end only.
        @param body_length: L{None} for no body, an int for a body of that
            length, -1 for a body of unknown length (sent chunked).
        @param handler: an L{IUpstreamResponseHandler}.
        """
        assert self._state == _IDLE, "connection is busy"
        self._handler = handler
        self._state = _HEAD
        self._buffer = b""
        self._keep_alive = True
        self._response_started = False
        self._head_request = method == b"HEAD"
        self.requests_sent += 1
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        if host is not None:
            parts += [b"Host: ", host, b"\r\n"]
        for name, value in headers:
            parts += [name, b": ", value, b"\r\n"]
        if body_length is None:
            self._request_complete = True
            self._chunked_body = False
            if method in (b"POST", b"PUT", b"PATCH"):
                parts.append(b"Content-Length: 0\r\n")
        elif body_length >= 0:
            self._request_complete = body_length == 0
            self._chunked_body = False
            parts += [b"Content-Length: ", str(body_length).encode("ascii"), b"\r\n"]
        else:
            self._request_complete = False
            self._chunked_body = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        self.transport.write(b"".join(parts))

    def write_body(self, data: bytes) -> None:
        if self._state == _DEAD or self._request_complete or not data:
            return
        if self._chunked_body:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.transport.write(data)

    def end_body(self) -> None:
        if self._state == _DEAD or self._request_complete:
            return
        if self._chunked_body:
            self.transport.write(b"0\r\n\r\n")
        self._request_complete = True

    def abort(self) -> None:
        """
        Drop the connection at once; no handler method is called after this.
        """
        self._handler = None
        self._state = _DEAD
        self._cancel_deadline()
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    # -- response deadline ---------------------------------------------------------
    #
    # One lazy timer per connection instead of a callLater per request: the
    # deadline moves with each request, and the timer re-arms itself for the
    # time left when it fires early.  Keep-alive connections serve many
    # requests per timeout period, so it rarely fires at all.

    def set_deadline(self, seconds_from_now: float) -> None:
        """
        Call the handler's C{response_timed_out()} unless a response head
        arrives within C{seconds_from_now}.
        """
        clock = self._pool.reactor
        self._deadline = clock.seconds() + seconds_from_now
        if self._deadline_call is None:
            self._deadline_call = clock.callLater(seconds_from_now, self._check_deadline)

    def clear_deadline(self) -> None:
        self._deadline = None

    def _check_deadline(self) -> None:
        self._deadline_call = None
        deadline = self._deadline
        if deadline is None or self._handler is None:
            return
        clock = self._pool.reactor
        left = deadline - clock.seconds()
        if left > 0:
            self._deadline_call = clock.callLater(left, self._check_deadline)
            return
        self._deadline = None
        handler = self._handler
        self.abort()
        handler.response_timed_out()

    def _cancel_deadline(self) -> None:
        self._deadline = None
        if self._deadline_call is not None:
            if self._deadline_call.active():
                self._deadline_call.cancel()
            self._deadline_call = None

    def wait_closed(self) -> defer.Deferred:
        if self._lost:
            return defer.succeed(None)
        d = defer.Deferred()
        self._lost_waiters.append(d)
        return d

    # -- IPushProducer (driven by the client side) ------------------------------

    def pauseProducing(self) -> None:
        if not self._paused and not self._lost:
            self._paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._paused and not self._lost:
            self._paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()

    # -- parsing -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.upstream_data(data)
            return
        if self._handler is None:
            # Bytes nobody asked for: the connection cannot be trusted.
            self.abort()
            return
        self._response_started = True
        try:
            self._parse(data)
        except _BadResponse as e:
            self._fail_bad_response(str(e))

    def _fail_bad_response(self, detail: str) -> None:
        handler = self._handler
        self.abort()
        if handler is not None:
            handler.response_failed(FailureKind.BAD_RESPONSE, detail, True)

    def _parse(self, data: bytes) -> None:
        while data and self._handler is not None:
            state = self._state
            if state == _LENGTH:
                remaining = self._remaining
                if len(data) < remaining:
                    self._remaining = remaining - len(data)
                    self._handler.body_received(data)
                    return
                chunk, data = data[:remaining], data[remaining:]
                self._remaining = 0
                self._handler.body_received(chunk)
                self._finish(data)
                return
            if state == _HEAD:
                data = self._parse_head(data)
            elif state == _CHUNKED:
                data = self._parse_chunked(data)
            elif state == _UNTIL_CLOSE:
                self._handler.body_received(data)
                return
            else:
                return

    def _parse_head(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_RESPONSE_HEAD:
                raise _BadResponse("response head too large")
            self._buffer = buffer
            return b""
        self._buffer = b""
        if end > MAX_RESPONSE_HEAD:
            raise _BadResponse("response head too large")
        status, reason, http10, headers, lengths, transfer_codings, connection = _read_head(buffer[:end])
        rest = buffer[end + 4 :]
        if 100 <= status < 200:
            if status == 101:
                if not self.expect_upgrade:
                    raise _BadResponse("unexpected 101 Switching Protocols")
                return self._switch(reason, headers, rest)
            return rest  # interim response: the real head follows

        self._deadline = None  # a final response head arrived in time
        tokens = {t.strip() for t in connection.split(b",")}
        keep_alive = (b"keep-alive" in tokens) if http10 else (b"close" not in tokens)
        return self._start_body(status, reason, headers, lengths, transfer_codings, keep_alive, rest)

    def _switch(self, reason: bytes, headers: list, rest: bytes) -> bytes:
        """
        A 101 to an upgrade request: the connection leaves HTTP (it is
        never reused) and the handler builds a tunnel over it.
        """
        handler = self._handler
        self._handler = None
        self._state = _DEAD
        self._keep_alive = False
        self._deadline = None
        handler.switched_protocols(reason, headers, rest)
        return b""

    def attach_tunnel(self, tunnel) -> None:
        """From now on bytes go to C{tunnel.upstream_data}, the end to C{upstream_lost}."""
        self._tunnel = tunnel

    def _start_body(
        self,
        status: int,
        reason: bytes,
        headers: list,
        lengths: Optional[List[bytes]],
        transfer_codings: Optional[bytes],
        keep_alive: bool,
        rest: bytes,
    ) -> bytes:
        """
        Hand a final response head to the handler and set up the body's
        framing; returns the bytes left to parse.
        """
        handler = self._handler
        if self._head_request or status in _NO_BODY_STATUS:
            length = lengths and _content_length(lengths)
            self._keep_alive = keep_alive
            handler.head_received(status, reason, headers, length if self._head_request and length else 0)
            self._finish(rest)
            return b""
        if transfer_codings is not None:
            codings = [c.strip().lower() for c in transfer_codings.split(b",") if c.strip()]
            if codings and codings[-1] == b"chunked":
                self._state = _CHUNKED
                self._chunk_state = _SIZE
                # Both framings at once smell of request smuggling: answer
                # this response, then close (RFC 9112 6.3).
                self._keep_alive = keep_alive and lengths is None
            else:
                self._state = _UNTIL_CLOSE
                self._keep_alive = False
            handler.head_received(status, reason, headers, None)
            return rest
        if lengths is not None:
            length = _content_length(lengths)
            self._keep_alive = keep_alive
            handler.head_received(status, reason, headers, length)
            if length == 0:
                self._finish(rest)
                return b""
            self._state = _LENGTH
            self._remaining = length
            return rest
        self._state = _UNTIL_CLOSE
        self._keep_alive = False
        handler.head_received(status, reason, headers, None)
        return rest

    def _parse_chunked(self, data: bytes) -> bytes:
        while data and self._handler is not None:
            cs = self._chunk_state
            if cs == _DATA:
                remaining = self._remaining
                if len(data) <= remaining:
                    self._remaining = remaining - len(data)
                    self._handler.body_received(data)
                    if self._remaining == 0:
                        self._chunk_state = _DATA_END
                    return b""
                self._handler.body_received(data[:remaining])
                data = data[remaining:]
                self._remaining = 0
                self._chunk_state = _DATA_END
                continue
            buffer = self._buffer + data if self._buffer else data
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 8192:
                    raise _BadResponse("chunk line too long")
                self._buffer = buffer
                return b""
            self._buffer = b""
            line, data = buffer[:end], buffer[end + 2 :]
            if cs == _SIZE:
                size = line.split(b";", 1)[0].strip(b" \t")
                if not size or size.strip(_HEX) or len(size) > 16:
                    raise _BadResponse(f"bad chunk size {line[:40]!r}")
                n = int(size, 16)
                if n == 0:
                    self._chunk_state = _TRAILER
                else:
                    self._remaining = n
                    self._chunk_state = _DATA
            elif cs == _DATA_END:
                if line:
                    raise _BadResponse("chunk data longer than its size")
                self._chunk_state = _SIZE
            else:  # _TRAILER: trailer fields are dropped; an empty line ends them
                if not line:
                    self._finish(data)
                    return b""
        return b""

    def _finish(self, leftover: bytes) -> None:
        handler = self._handler
        self._handler = None
        self._state = _IDLE
        if leftover:
            # The backend sent more than the framing allowed.
            self._keep_alive = False
        handler.response_finished()


# The defaults are the config's.
_TIMEOUTS = TimeoutsConfig()
_UPSTREAM = UpstreamConfig()


@attrs.define(eq=False)
class UpstreamPool:
    """
    Keep-alive connections per backend.

    L{acquire} hands out an idle connection (the most recently used, so
    that cold ones age out) or opens a new one; L{release} takes it back if
    it is still L{UpstreamConnection.reusable}; L{discard} drops it.
    Connections of a backend that was L{forget}-ed (removed) are never
    reused.  Idle connections are closed after C{idle_timeout} by one
    sweeper, not a timer per connection, to keep the hot path cheap.
    """

    reactor: object = None
    connect_timeout: float = _TIMEOUTS.connect
    idle_timeout: float = _TIMEOUTS.idle_upstream
    max_idle_per_backend: int = _UPSTREAM.max_idle_per_backend
    tls: object = None  # an IBackendTls for https:// backends (None: the system's trust store)
    opened: int = 0  # connections established
    reused: int = 0  # requests sent on a pooled connection
    connect_failures: int = 0
    _idle: Dict[str, List[UpstreamConnection]] = attrs.field(factory=dict)
    _endpoints: Dict[str, object] = attrs.field(factory=dict)
    _generations: Dict[str, int] = attrs.field(factory=dict)
    _connections: Set[UpstreamConnection] = attrs.field(factory=set)
    _connecting: Set[defer.Deferred] = attrs.field(factory=set)
    _sweeper: object = None

    def __attrs_post_init__(self) -> None:
        self.reactor = maybe_global_reactor(self.reactor)

    def acquire(self, backend: Backend) -> defer.Deferred:
        """
        A connection to C{backend}: idle and reusable if there is one, else
        new.  Fails with the connect error.
        """
        conn = self.take_idle(backend)
        if conn is not None:
            return defer.succeed(conn)
        return self.connect(backend)

    def take_idle(self, backend: Backend) -> Optional[UpstreamConnection]:
        """
        An idle reusable connection to C{backend}, or L{None}: the
        synchronous fast path of L{acquire}, without a Deferred.
        """
        idle = self._idle.get(backend.id)
        while idle:
            conn = idle.pop()
            if conn.reusable:
                conn.reused = True
                self.reused += 1
                return conn
            conn.abort()
        return None

    def connect(self, backend: Backend) -> defer.Deferred:
        """
        A new connection to C{backend}.
        """
        generation = self._generations.setdefault(backend.id, 0)
        factory = Factory.forProtocol(lambda: UpstreamConnection(self, backend, generation))
        factory.noisy = False
        d = self._endpoint(backend).connect(factory)
        self._connecting.add(d)

        def connected(conn):
            self._connecting.discard(d)
            self._connections.add(conn)
            self.opened += 1
            return conn

        def failed(f):
            self._connecting.discard(d)
            self.connect_failures += 1
            return f

        return d.addCallbacks(connected, failed)

    def release(self, conn: UpstreamConnection) -> None:
        """
        Take C{conn} back after a complete exchange; keep it if reusable.
        """
        backend_id = conn.backend.id
        if (
            not conn.reusable
            or self._generations.get(backend_id, 0) != conn.generation
        ):
            conn.abort()
            return
        conn.resumeProducing()  # a client may have paused it last
        idle = self._idle.setdefault(backend_id, [])
        if len(idle) >= self.max_idle_per_backend:
            conn.abort()
            return
        conn.idle_since = self.reactor.seconds()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.reactor.callLater(self.idle_timeout / 2, self._sweep)

    def discard(self, conn: UpstreamConnection) -> None:
        conn.abort()

    def configure(self, connect_timeout: float, idle_timeout: float, max_idle_per_backend: int) -> None:
        """New settings (a reload) for new connections; pooled ones stay."""
        if connect_timeout != self.connect_timeout:
            self._endpoints.clear()  # each carries the connect timeout
        self.connect_timeout, self.idle_timeout = connect_timeout, idle_timeout
        self.max_idle_per_backend = max_idle_per_backend

    def forget(self, backend_id: str) -> None:
        """
        C{backend_id} left the pool: close its idle connections, and make
        sure none in use now is ever reused.
        """
        self._generations[backend_id] = self._generations.get(backend_id, 0) + 1
        self._endpoints.pop(backend_id, None)
        for conn in self._idle.pop(backend_id, []):
            conn.abort()

    def idle_count(self, backend_id: Optional[str] = None) -> int:
        if backend_id is not None:
            return len(self._idle.get(backend_id, ()))
        return sum(len(v) for v in self._idle.values())

    def close_all(self) -> defer.Deferred:
        """
        Close every connection and pending connect; fires when all are gone.
        """
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        for d in list(self._connecting):
            d.cancel()
        waits = []
        for conn in list(self._connections):
            waits.append(conn.wait_closed())
            conn.abort()
        self._idle.clear()
        return defer.gatherResults(waits, consumeErrors=True)

    def _connection_lost(self, conn: UpstreamConnection) -> None:
        self._connections.discard(conn)
        idle = self._idle.get(conn.backend.id)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self.reactor.seconds() - self.idle_timeout
        for backend_id, idle in list(self._idle.items()):
            # Oldest first: the list is used as a stack.
            while idle and idle[0].idle_since <= deadline:
                idle.pop(0).abort()
            if not idle:
                del self._idle[backend_id]
        if self._idle:
            self._sweeper = self.reactor.callLater(self.idle_timeout / 2, self._sweep)

    def _endpoint(self, backend: Backend):
        endpoint = self._endpoints.get(backend.id)
        if endpoint is None:
            endpoint = self._endpoints[backend.id] = self._make_endpoint(backend)
        return endpoint

    def _make_endpoint(self, backend: Backend):
        return backend_endpoint(self.reactor, backend, self.connect_timeout, self.tls)
