"""
The timeouts of a proxied request's waits, on one lazy timer
(L{ExchangeTimer}).

An exchange waits on one side or the other, and each wait has its limit
(the C{timeouts} config section):

  - C{client_body}: the longest gap between two pieces of the request
    body, while heimdall is ready for more (a client heimdall paused,
    because the backend does not keep up, is not waited on);
  - C{upstream_read}: the longest gap between two reads of the response
    body after its head, while the client keeps up (a response paused
    for a slow client is not the backend's fault);
  - C{client_write}: the longest time the client leaves heimdall unable
    to write (its socket full: the channel paused heimdall's producer);
    a slow reader that keeps reading never reaches it;
  - C{request}: the whole request, from its head to its end (0: off).

The wait for the response head is the upstream connection's own
(C{timeouts.response}, L{heimdall.proxy.upstream.UpstreamConnection.set_deadline}).

Cost on the data path: recording activity is one clock read and one
attribute store; there is one C{DelayedCall} per timer, made only when
none is pending and moved only when a new wait ends before it; when it
fires early it re-arms itself for what is left.  An HTTP/1.1 connection
keeps one timer for all its requests (its call rarely fires at all).
"""

from __future__ import annotations

from typing import Any, Optional

from heimdall.interfaces import ITimedExchange

__all__ = [
    "CLIENT_BODY",
    "CLIENT_HEADER",
    "CLIENT_WRITE",
    "ExchangeTimer",
    "REQUEST",
    "RESPONSE",
    "TIMEOUT_KINDS",
    "UPSTREAM_READ",
]

#: The kinds of timeout, as logged (the access log's C{timeout}) and
#: counted (C{heimdall_timeouts_total{kind}}): each is named after its key.
CLIENT_HEADER = "client_header"
CLIENT_BODY = "client_body"
RESPONSE = "response"
UPSTREAM_READ = "upstream_read"
CLIENT_WRITE = "client_write"
REQUEST = "request"
TIMEOUT_KINDS = (CLIENT_HEADER, CLIENT_BODY, RESPONSE, UPSTREAM_READ, CLIENT_WRITE, REQUEST)

_INF = float("inf")


class ExchangeTimer:
    """
    The waits of one exchange at a time (its C{owner}, an
    L{heimdall.interfaces.ITimedExchange}), each the time of its last activity (None: not
    waiting), and one lazy C{DelayedCall} for the first to run out.

    @param clock: an C{IReactorTime}.
    @param body_limit: C{client_body}; C{write_limit}: C{client_write}.
    @param reusable: keep the call pending when an exchange ends, for the
        next one (an HTTP/1.1 connection's timer, L{cancel}led when the
        connection closes); else L{stop} cancels it (an HTTP/2 stream's).
    """

    __slots__ = (
        "_seconds", "_call_later", "_call", "_call_at", "reusable", "owner",
        "body_at", "read_at", "write_at", "ends_at", "body_limit", "read_limit", "write_limit",
    )  # fmt: skip

    def __init__(self, clock: Any, body_limit: float, write_limit: float, reusable: bool = False) -> None:
        self._seconds = clock.seconds
        self._call_later = clock.callLater
        self._call = None
        self._call_at = _INF
        self.reusable = reusable
        self.owner: Optional[ITimedExchange] = None
        self.body_limit = body_limit
        self.write_limit = write_limit
        self.read_limit = _INF
        self.body_at: Optional[float] = None
        self.read_at: Optional[float] = None
        self.write_at: Optional[float] = None
        self.ends_at = _INF

    # -- an exchange's life ----------------------------------------------------

    def start(self, owner: ITimedExchange, read_limit: float, request_limit: float, body_pending: bool) -> None:
        """
        Time C{owner} from now: its request body (if C{body_pending}) and,
        with a C{request_limit} (0: none), its whole life.
        """
        now = self._seconds()
        self.owner = owner
        self.read_limit = read_limit
        self.read_at = self.write_at = None
        self.body_at = now if body_pending else None
        self.ends_at = now + request_limit if request_limit else _INF
        due = min(self.ends_at, now + self.body_limit if body_pending else _INF)
        if due < _INF:
            self._ensure(due, now)

    def stop(self) -> None:
        """
        The exchange ended: nothing is timed (a reusable timer's call stays
        pending for the next exchange).
        """
        self.owner = None
        self.body_at = self.read_at = self.write_at = None
        self.ends_at = _INF
        if not self.reusable:
            self.cancel()

    def cancel(self) -> None:
        """
        Stop for good (the connection closed).
        """
        self.owner = None
        call, self._call = self._call, None
        self._call_at = _INF
        if call is not None and call.active():
            call.cancel()

    # -- the request body ---------------------------------------------------------

    def body_piece(self) -> None:
        """A piece of the request body arrived (while waiting on it)."""
        if self.body_at is not None:
            self.body_at = self._seconds()

    def body_paused(self) -> None:
        """heimdall paused the client (the backend does not keep up)."""
        self.body_at = None

    def body_resumed(self) -> None:
        """heimdall reads the client's body again."""
        if self.owner is not None:
            now = self.body_at = self._seconds()
            self._ensure(now + self.body_limit, now)

    def body_done(self) -> None:
        """The request body is complete."""
        self.body_at = None

    # -- the response body --------------------------------------------------------

    def reading(self) -> None:
        """The response head arrived: wait on its body."""
        now = self.read_at = self._seconds()
        self._ensure(now + self.read_limit, now)

    def read(self) -> None:
        """Some of the response body arrived."""
        self.read_at = self._seconds()

    def writes_paused(self) -> None:
        """The client stopped taking bytes: wait on it, not the backend."""
        now = self.write_at = self._seconds()
        self.read_at = None
        self._ensure(now + self.write_limit, now)

    def writes_resumed(self) -> None:
        """The client takes bytes again: wait on the backend again."""
        self.write_at = None
        if self.owner is not None:
            self.reading()

    def reading_done(self) -> None:
        """No more response body to wait for."""
        self.read_at = self.write_at = None

    # -- the call ---------------------------------------------------------------------

    def _ensure(self, due: float, now: float) -> None:
        if self._call is None:
            self._call_at = due
            self._call = self._call_later(max(0.0, due - now), self._fire)
        elif due < self._call_at:
            self._call_at = due
            self._call.reset(max(0.0, due - now))

    def next_due(self) -> tuple:
        """
        C{(time, kind)} of the first wait to run out, C{(inf, None)} if none.
        """
        due, kind = self.ends_at, REQUEST
        for at, limit, what in (
            (self.body_at, self.body_limit, CLIENT_BODY),
            (self.read_at, self.read_limit, UPSTREAM_READ),
            (self.write_at, self.write_limit, CLIENT_WRITE),
        ):
            if at is not None and at + limit < due:
                due, kind = at + limit, what
        return due, (kind if due < _INF else None)

    def _fire(self) -> None:
        self._call = None
        self._call_at = _INF
        owner = self.owner
        if owner is None:
            return
        now = self._seconds()
        due, kind = self.next_due()
        if kind is None:
            return
        if due > now:
            self._ensure(due, now)
            return
        owner.timed_out(kind)  # it reads the waits, then ends (and stops us)
        if self.owner is owner:
            self.stop()
