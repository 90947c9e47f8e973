"""
L{ProxyExchange}: one client request's round trip through a backend (see
L{heimdall.proxy.resource} for the flow and the failures), and the
L{RequestRecord} it leaves for the access log and metrics.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import attrs
from twisted.logger import Logger
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from heimdall.config.model import TimeoutsConfig
from heimdall.errors import BackendsBusy, NoBackendAvailable
from heimdall.interfaces import IClientExchange, ITimedExchange, IUpstreamResponseHandler
from heimdall.pool.context import RequestContext
from heimdall.pool.values import FailureKind, Outcome
from heimdall.proxy.body import RequestBody
from heimdall.proxy.h2 import tls_version
from heimdall.proxy.headers import response_headers, upstream_request_headers
from heimdall.proxy.site import HeimdallRequest
from heimdall.proxy.timeouts import CLIENT_BODY, RESPONSE, UPSTREAM_READ, ExchangeTimer
from heimdall.proxy.tunnel import Tunnel, switching_head, upgrade_token

__all__ = ["IDEMPOTENT_METHODS", "ProxyExchange", "RequestRecord", "STALE", "response_headers", "upstream_target"]

_log = Logger()

#: The retry reason of a pooled connection the backend had closed while
#: idle (the keep-alive race): not a failure of the backend.
STALE = "stale"

_CONNECT = FailureKind.CONNECT
_TIMEOUT = FailureKind.TIMEOUT
_BAD_RESPONSE = FailureKind.BAD_RESPONSE
_CLIENT_GONE = FailureKind.CLIENT_GONE
_BODY_TOO_LARGE = FailureKind.BODY_TOO_LARGE
_TIMEOUTS = TimeoutsConfig()

# RFC 9110 9.2.2.  Only these may be replayed after the request was sent.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Retries that cost the backends nothing, so the retry budget does not
# count them: the request never reached a backend's application.
_FREE_RETRIES = frozenset({FailureKind.CONNECT.value, STALE})

_REASONS = {
    408: b"Request Timeout",
    413: b"Content Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@attrs.frozen
class RequestRecord:
    """
    How one client request went, for the access log and metrics.

    @ivar status: the status the client got (499: the client went away
        before an answer).
    @ivar backend: the id of the last backend tried, if any.
    @ivar upstream_time: seconds from the last upstream request being sent
        to its end; L{None} if none was sent.
    @ivar total_time: seconds from the request reaching heimdall to its end.
    @ivar attempts: how many backends were tried (retries are attempts - 1).
    @ivar ttfb: seconds to the upstream response head, if one came.
    @ivar retry_reasons: why each retry was made: C{connect}, C{reset},
        C{stale}, C{bad_response}, C{5xx}, C{timeout}.
    @ivar protocol: what the client spoke: C{HTTP/1.0}, C{HTTP/1.1}, C{HTTP/2}.
    @ivar tls: the TLS version it came over (C{TLSv1.3}), L{None} if plain.
    @ivar timeout: the kind of timeout that ended it, L{None} if none did.
    """

    client: Optional[str]
    method: bytes
    path: bytes
    status: int
    backend: Optional[str]
    upstream_time: Optional[float]
    total_time: float
    bytes_in: int
    bytes_out: int
    attempts: int
    ttfb: Optional[float] = None
    retry_reasons: tuple = ()
    request_id: Optional[str] = None
    #: The service that served it; None when heimdall answered itself
    #: (a redirect or respond route, or no route).
    service: Optional[str] = None
    protocol: str = "HTTP/1.1"
    tls: Optional[str] = None
    #: The timeout that ended it (heimdall.proxy.timeouts.TIMEOUT_KINDS:
    #: "upstream_read", "client_write", ...), or None.
    timeout: Optional[str] = None


_REQUEST_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(incoming: Optional[bytes]) -> tuple:
    """
    C{(id, generated)}: the client's X-Request-ID if it is 1-128 characters
    of letters, digits and C{-_.:} (anything else could smuggle text into
    logs), else a new random 128-bit hex id.
    """
    if incoming and len(incoming) <= 128 and not set(incoming) - _REQUEST_ID_CHARS:
        return incoming, False
    return os.urandom(16).hex().encode("ascii"), True


def upstream_target(request, prefix: bytes = b"", rewrite=None) -> tuple:
    """
    The path (raw, as the client sent it, minus the mount point, changed
    by C{rewrite} if given, then after C{prefix}) and query to send
    upstream.
    """
    uri = request.uri
    path, _, query = uri.partition(b"?")
    if not path.startswith(b"/"):
        # Absolute-form (http://host/path) from a client talking to us as
        # a forward proxy: keep only the path.
        after_scheme = path.split(b"://", 1)[-1]
        slash = after_scheme.find(b"/")
        path = after_scheme[slash:] if slash >= 0 else b"/"
    consumed = len(request.prepath)
    if consumed:
        segments = path.split(b"/")
        path = b"/" + b"/".join(segments[1 + consumed :])
    if rewrite is not None:
        path = rewrite.path(path)
    if prefix:
        path = prefix + path
    return path, query


@implementer(IUpstreamResponseHandler, IClientExchange, ITimedExchange, IPushProducer)
class ProxyExchange:
    """
    One client request's round trip.  It owns the lease and the upstream
    connection for the current attempt and releases both exactly once.

    Its waits are timed by an L{ExchangeTimer} (L{timed_out}); it is the
    client's push producer for the response body (forwarding to the
    upstream connection), so that it knows when the client stalls.
    """

    # Rarely anything but these per request: class defaults, not one more
    # attribute set per exchange.
    #: Waiting in the resource's queue (heimdall.proxy.queue).
    queued = False
    #: The TLS version the client came over; None over plain TCP.
    tls: Optional[str] = None
    #: The Upgrade value sent upstream (a tunnel on 101), or None.
    upgrade: Optional[bytes] = None
    #: The tunnel a 101 opened (heimdall.proxy.tunnel), or None.
    tunnel = None
    #: The timeout that ended the exchange (a TIMEOUT_KINDS name), or None.
    timeout: Optional[str] = None
    #: Times its waits (set by start).
    timer: Optional[ExchangeTimer] = None

    def __init__(self, resource, request, rewrite=None) -> None:
        self.resource = resource
        self.request = request
        # An IRequestRewrite (a route's), or None.
        self.rewrite = rewrite
        self.clock = resource.clock
        self.started_at = self.clock.seconds()
        self.attempts = 0
        self.avoid: list = []
        self.member = None
        self.lease = None
        self.conn = None
        self.sent_at: Optional[float] = None
        self.ttfb: Optional[float] = None
        self.status: Optional[int] = None
        self.bytes_out = 0
        self.client_gone = False
        self.done = False
        self.body: Optional[RequestBody] = None
        self.retry_reasons: list = []
        self.budgeted_retries = 0
        # (id, generated): taken from the client's X-Request-ID when it is
        # sane, else generated; forwarded upstream and returned.
        self.request_id = None

    # -- start -------------------------------------------------------------

    def start(self) -> None:
        request = self.request
        resource = self.resource
        budget = resource.retry_budget
        if budget is not None:
            budget.request_started()
        if isinstance(request, HeimdallRequest):
            # Tells us of a lost client and of a body over the limit,
            # without a notifyFinish() Deferred per request.
            request.exchange = self
            self.body = request.body
        else:
            request.notifyFinish().addErrback(self.client_lost)
            # A plain twisted.web Site read the whole body already.
            length = request.getHeader(b"content-length")
            chunked = request.getHeader(b"transfer-encoding")
            limit = resource.max_body_bytes
            if length is not None or chunked is not None:
                size = request.content.seek(0, 2)
                if limit and size > limit:
                    self._respond_error(413, "request body too large")
                    return
                self.body = RequestBody.from_content(request.content)
        rewrite = self.rewrite
        path, query = upstream_target(request, resource.path_prefix, rewrite)
        self.target = path + b"?" + query if query else path
        self.context = RequestContext.from_request(request, path, query)
        if self.context.secure:
            self.tls = tls_version(request)
        self.host = request.getHeader(b"host")
        self.headers = upstream_request_headers(
            request.requestHeaders.getAllRawHeaders(),
            self.context.client_address,
            self.context.secure,
            request.clientproto,
            resource.trusted_proxies,
        )
        if rewrite is not None:
            if rewrite.host is not None:
                self.host = rewrite.host
            self.headers = rewrite.request_headers(self.headers)
        self._start_timer(request, resource)
        upgrade = upgrade_token(request)
        if upgrade is not None and getattr(request.channel, "hand_over", None) is not None:
            # Only a HeimdallChannel can hand its connection to a tunnel.
            self.upgrade = upgrade
            self.headers += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
        self.request_id = _request_id(request.getHeader(b"x-request-id"))
        if self.request_id is not None and self.request_id[1]:
            self.headers.append((b"X-Request-ID", self.request_id[0]))
        self._attempt()

    def _start_timer(self, request, resource) -> None:
        # An HTTP/1.1 connection's timer serves all its requests.
        make = getattr(request, "exchange_timer", None)
        timer = make() if make is not None else ExchangeTimer(self.clock, _TIMEOUTS.client_body, _TIMEOUTS.client_write)
        self.timer = timer
        body = self.body
        body_pending = body is not None and not body.complete
        if body_pending:
            body.timer = timer
        timer.start(self, resource.upstream_read, resource.request_timeout, body_pending)

    def _attempt(self) -> None:
        pool = self.resource.pool
        try:
            member = pool.pick(self.context, self.avoid)
        except BackendsBusy:
            queue = self.resource.queue
            if queue is not None and queue.enqueue(self):
                self.queued = True
            else:
                self._respond_error(503, "every backend is busy and the queue is full", self._retry_after())
            return
        except NoBackendAvailable:
            self._respond_error(503, "no backend available")
            return
        self.member = member
        self.lease = pool.lease(member)
        self.attempts += 1
        upstream = self.resource.upstream
        conn = upstream.take_idle(member.backend)
        if conn is not None:
            self._connected(conn)
        else:
            upstream.connect(member.backend).addCallbacks(self._connected, self._connect_failed)

    # -- the queue (heimdall.proxy.queue) -------------------------------------

    def queue_dispatched(self) -> None:
        self.queued = False
        self._attempt()

    def queue_timed_out(self) -> None:
        self.queued = False
        self._respond_error(503, "timed out waiting for a free backend", self._retry_after())

    def _retry_after(self) -> int:
        queue = self.resource.queue
        return max(1, math.ceil(queue.timeout)) if queue is not None else 1

    def _retry(self, reason: str) -> bool:
        """
        Start another attempt if the retry limit and the retry budget allow;
        whether it did.  The caller has released the failed attempt.
        """
        if self.attempts > self.resource.retries:
            return False
        budget = self.resource.retry_budget
        if budget is not None and reason not in _FREE_RETRIES:
            if not budget.can_retry():
                _log.info("retry budget exhausted; not retrying after {reason}", reason=reason)
                return False
            budget.retry_started()
            self.budgeted_retries += 1
        self.retry_reasons.append(reason)
        self._attempt()
        return True

    def _replayable_after_answer(self) -> bool:
        """
        Whether a request a backend answered (or may have processed) may go
        to another: idempotent, and no body byte already sent.
        """
        return self.request.method in IDEMPOTENT_METHODS and (
            self.body is None or self.body.replayable
        )

    def _connect_failed(self, failure) -> None:
        gone = self.client_gone or self.done  # done: a timeout answered
        self.lease.release(Outcome(failure=_CONNECT if not gone else _CLIENT_GONE))
        if gone:
            return
        _log.info(
            "connect to {backend} failed: {reason}",
            backend=self.member.id,
            reason=failure.getErrorMessage(),
        )
        self.avoid.append(self.member)
        if not self._retry(_CONNECT.value):
            self._respond_error(502, "could not connect to a backend")

    def _connected(self, conn) -> None:
        if self.client_gone or self.done:
            self.resource.upstream.release(conn)  # fresh and unused
            self.lease.release(Outcome(failure=_CLIENT_GONE))
            return
        self.conn = conn
        request = self.request
        body = self.body
        if body is None:
            body_length = None
        else:
            body_length = body.length if body.length is not None else -1
        self.sent_at = self.clock.seconds()
        conn.expect_upgrade = self.upgrade is not None
        # HTTP/1.1 upstream needs a Host, and an HTTP/1.0 client may send none.
        host = self.host if self.host is not None else conn.backend.id.encode("ascii", "replace")
        conn.send_request(request.method, self.target, host, self.headers, body_length, self)
        if body is None:
            self._request_sent()
        else:
            body.attach(conn, self._request_sent)

    def _request_sent(self) -> None:
        if self.conn is not None and self.status is None:
            self.conn.set_deadline(self.resource.response_timeout)

    # -- IUpstreamResponseHandler ---------------------------------------------

    def head_received(self, status, reason, headers, content_length) -> None:
        now = self.clock.seconds()
        self.ttfb = now - self.sent_at
        if status >= 500 and "5xx" in self.resource.retry_on and self._replayable_after_answer():
            if self._retry_answered(status):
                return
        self.status = status
        request = self.request
        request.setResponseCode(status, reason)
        request.responseHeaders = response_headers(headers)
        if self.request_id is not None:
            request.responseHeaders._rawHeaders[b"X-Request-Id"] = [self.request_id[0]]
        if self.rewrite is not None:
            self.rewrite.response_headers(request.responseHeaders)
        _announce_close(request)
        observer = self.resource.pool.response_observer
        if observer is not None:
            observer.response_started(self.context, self.member, request)
        # The client pauses the upstream read through us (pauseProducing).
        request.registerProducer(self, True)
        self.timer.reading()
        # Forward the head now, not with the first body bytes: a streaming
        # response (server-sent events, long polls) must not wait.
        request.write(b"")

    def switched_protocols(self, reason, headers, rest) -> None:
        """
        The backend answered 101 to an upgrade: forward it and tunnel both
        connections (L{heimdall.proxy.tunnel}); the lease is held, and the
        access log written, until the tunnel closes.
        """
        conn, self.conn = self.conn, None
        self.ttfb = self.clock.seconds() - self.sent_at
        self.status = 101
        self._stop_timer()  # the tunnel has its own idle timeout
        request = self.request
        request.exchange = None  # the tunnel tells us when it ends
        client_headers = response_headers(headers)
        upgrade = b", ".join(v for n, v in headers if n.lower() == b"upgrade") or self.upgrade
        resource = self.resource
        self.tunnel = Tunnel(request.channel, conn, resource.tunnels, self.clock, resource.tunnel_idle, self._tunnel_closed)
        self.tunnel.start(switching_head(reason, client_headers, upgrade), b"", rest)

    def _tunnel_closed(self, tunnel) -> None:
        self.lease.release(Outcome(status=101, ttfb=self.ttfb, ttlb=tunnel.duration))
        self.bytes_out = tunnel.bytes_downstream
        self.done = True
        self._log_access(101)

    def _retry_answered(self, status: int) -> bool:
        """
        Drop a 5xx answer (its connection, unread body and all) and try
        another backend, if allowed.
        """
        if self.attempts > self.resource.retries:
            return False
        budget = self.resource.retry_budget
        if budget is not None and not budget.can_retry():
            return False
        conn, self.conn = self.conn, None
        conn.abort()
        if self.body is not None:
            self.body.detach()
        self.lease.release(Outcome(status=status, ttfb=self.ttfb))
        self.avoid.append(self.member)
        return self._retry("5xx")

    def body_received(self, data: bytes) -> None:
        self.timer.read()
        self.bytes_out += len(data)
        self.request.write(data)

    # -- IPushProducer: the client's channel pauses the response ---------------

    def pauseProducing(self) -> None:
        # The client's socket is full: from now on we wait on the client.
        self.timer.writes_paused()
        if self.conn is not None:
            self.conn.pauseProducing()

    def resumeProducing(self) -> None:
        self.timer.writes_resumed()
        if self.conn is not None:
            self.conn.resumeProducing()

    def stopProducing(self) -> None:
        if self.conn is not None:
            self.conn.stopProducing()

    def response_finished(self) -> None:
        conn, self.conn = self.conn, None
        request = self.request
        request.unregisterProducer()
        ttlb = self.clock.seconds() - self.sent_at
        if self.body is not None:
            self.body.detach()
        self.resource.upstream.release(conn)
        self.lease.release(Outcome(status=self.status, ttfb=self.ttfb, ttlb=ttlb))
        self._finish(self.status)

    def response_failed(self, kind: FailureKind, detail: str, response_started: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        if self.body is not None:
            self.body.detach()
        if self.client_gone:
            return
        if self.status is not None:
            # Head already forwarded: the client must see a broken response.
            self.lease.release(Outcome(status=self.status, failure=kind, ttfb=self.ttfb))
            _log.info(
                "response from {backend} broke after the head: {detail}",
                backend=self.member.id,
                detail=detail,
            )
            self._abort_client()
            return
        stale = conn is not None and conn.reused and not response_started
        # A reused connection that the backend had closed is not a backend
        # failure, just the keep-alive race.
        self.lease.release(Outcome(failure=None if stale else kind))
        if not response_started and self._replayable_after_answer():
            if not stale:
                self.avoid.append(self.member)
            if self._retry(STALE if stale else kind.value):
                return
        _log.info(
            "{kind} from {backend}: {detail}", kind=kind, backend=self.member.id, detail=detail
        )
        self._respond_error(502, "bad response from backend" if kind is _BAD_RESPONSE else "backend connection failed")

    # -- timeouts, limits and the client going away --------------------------------

    def response_timed_out(self) -> None:
        self.conn = None  # already aborted
        if self.body is not None:
            self.body.detach()
        self.lease.release(Outcome(failure=_TIMEOUT))
        if "timeout" in self.resource.retry_on and self._replayable_after_answer():
            self.avoid.append(self.member)
            if self._retry(_TIMEOUT.value):
                return
        self.timeout = RESPONSE
        self._respond_error(504, "backend did not answer in time")

    def timed_out(self, kind: str) -> None:
        """
        A wait ran out (see L{heimdall.proxy.timeouts}): stop the upstream
        side (the connection is closed, never pooled) and answer, or cut
        the client off if a response is under way: C{client_body} gets 408
        while no body byte went upstream, C{request} 504 before a head;
        the rest abort the client connection (a truncated response).
        C{upstream_read}, and C{request} while waiting on the backend,
        count against the backend (a passive health failure).
        """
        if self.done or self.client_gone:
            return
        self.timeout = kind
        timer = self.timer
        on_backend = kind == UPSTREAM_READ or (
            kind != CLIENT_BODY and self.conn is not None and timer.write_at is None and timer.body_at is None
        )
        nothing_sent = self.body is None or self.body.nothing_forwarded
        conn = self._stop_upstream()
        if conn is not None and self.lease is not None and not self.lease.released:
            self.lease.release(
                Outcome(status=self.status, failure=_TIMEOUT if on_backend else _CLIENT_GONE, ttfb=self.ttfb)
            )
        # While connecting, the connect's callbacks release the lease: done
        # is set below, by the answer or the abort.
        _log.info("{kind} timeout: {method} {path}", kind=kind, method=self.request.method, path=self.request.uri)
        if self.status is None and kind == CLIENT_BODY and nothing_sent:
            self._respond_error(408, "request body not received in time")
        elif self.status is None and kind != CLIENT_BODY:
            self._respond_error(504, "request took too long")
        else:
            self._abort_client()

    def _stop_upstream(self):
        """
        Leave the queue, abort the upstream connection (returned, or None)
        and stop sending the body: nothing more of the request goes up.
        """
        if self.queued:
            self.queued = False
            self.resource.queue.cancel(self)
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        if self.body is not None:
            self.body.detach()
        return conn

    def body_too_large(self) -> None:
        """
        The client's streamed body went over the limit.
        """
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()  # the backend must not take a truncated body as whole
        if self.lease is not None and not self.lease.released:
            self.lease.release(Outcome(failure=_BODY_TOO_LARGE))
        if self.status is None:
            self._respond_error(413, "request body too large")
        else:
            self._abort_client()

    def client_lost(self, failure, status: Optional[int] = None) -> None:
        """
        The client went away, or (C{status}: what the channel answered it)
        its request turned out malformed: nothing more goes upstream.
        """
        self.client_gone = True
        conn = self._stop_upstream()
        if self.lease is not None and not self.lease.released and conn is not None:
            self.lease.release(Outcome(status=self.status, failure=_CLIENT_GONE))
        if not self.done:
            self.done = True
            self._log_access(self.status or status or 499)

    # -- answering -------------------------------------------------------------------

    def _respond_error(self, code: int, message: str, retry_after: Optional[int] = None) -> None:
        if self.client_gone or self.done:
            return
        request = self.request
        if request.startedWriting:
            self._abort_client()
            return
        body = json.dumps({"error": message, "status": code}).encode() + b"\n"
        request.setResponseCode(code, _REASONS.get(code))
        request.responseHeaders = Headers({b"Date": [datetimeToString(self.clock.seconds())]})
        if self.request_id is not None:
            request.responseHeaders.setRawHeaders(b"X-Request-ID", [self.request_id[0]])
        request.responseHeaders.setRawHeaders(b"Content-Type", [b"application/json"])
        if retry_after is not None:
            request.responseHeaders.setRawHeaders(b"Retry-After", [b"%d" % retry_after])
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        _announce_close(request)
        request.write(body)
        self._finish(code)

    def _finish(self, code: int) -> None:
        if self.client_gone or self.done:
            return
        self.done = True
        request = self.request
        request.finish()
        # Break the request <-> exchange cycle so refcounting frees both.
        request.exchange = None
        self._log_access(code)

    def _abort_client(self) -> None:
        if self.done:
            return
        self.done = True
        request = self.request
        if request.producer is not None:
            request.unregisterProducer()
        channel = request.channel
        # An HTTP/2 stream has no transport of its own: it resets itself.
        (channel.transport or channel).abortConnection()
        self._log_access(self.status or 502)

    def _stop_timer(self) -> None:
        timer = self.timer
        if timer is not None and timer.owner is self:
            timer.stop()
        if self.body is not None:
            self.body.timer = None

    def _log_access(self, status: int) -> None:
        """
        The exchange ended (called once): stop timing it, give back
        retry-budget slots and tell the request observers.
        """
        self._stop_timer()
        budget = self.resource.retry_budget
        if budget is not None:
            budget.request_finished()
            for _ in range(self.budgeted_retries):
                budget.retry_finished()
        observers = self.resource.request_observers
        if not observers:
            return
        now = self.clock.seconds()
        context = getattr(self, "context", None)
        record = RequestRecord(
            client=context.client_address if context is not None else None,
            method=self.request.method,
            path=self.request.uri,
            status=status,
            backend=self.member.id if self.member is not None else None,
            upstream_time=(now - self.sent_at) if self.sent_at is not None else None,
            total_time=now - self.started_at,
            bytes_in=self.body.received if self.body is not None else (
                self.tunnel.bytes_upstream if self.tunnel is not None else 0),
            bytes_out=self.bytes_out,
            attempts=self.attempts,
            ttfb=self.ttfb,
            retry_reasons=tuple(self.retry_reasons),
            request_id=self.request_id[0].decode("ascii") if self.request_id is not None else None,
            service=self.resource.service,
            protocol=self.request.clientproto.decode("ascii", "replace"),
            tls=self.tls,
            timeout=self.timeout,
        )
        for observer in observers:
            try:
                observer(record)
            except Exception:
                _log.failure("request observer {observer!r} failed", observer=observer)


def _announce_close(request) -> None:
    """
    Say C{Connection: close} in a response on an HTTP/1.x connection that
    closes after it (the client asked, an HTTP/1.0 client, or heimdall is
    draining): RFC 9112 9.6, as nginx and HAProxy do.  Twisted's channel set
    it in C{checkPersistence}, but the exchange replaces the response
    headers with the backend's.  An HTTP/2 stream has no C{persistent} and
    must never carry a Connection header.
    """
    if not getattr(request.channel, "persistent", True):
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])

