"""
The load loop of one generator process: non-blocking sockets on epoll (or
C{selectors} where there is no epoll), prebuilt request bytes,
L{ResponseReader} for responses.

Two ways to pace the load:

  - closed loop (like wrk): each connection sends its next request as soon
    as the previous response is complete; latency is measured from the
    actual send.
  - open loop (like wrk2 or vegeta): requests are scheduled at a fixed
    rate, request i at C{start + i / rate}, whether or not earlier ones are
    done; a request waits for a free connection if all are busy, and its
    latency is measured from its I{scheduled} time.  A server that stalls
    for a second then shows a second of latency for every request that
    should have been sent meanwhile, instead of one slow request
    ("coordinated omission").

The loop reports every C{interval} seconds through C{emit} (the
coordinator's pipe) and returns its final numbers.
"""

from __future__ import annotations

import errno
import math
import resource
import select
import socket
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import attrs

from heimdall.stress.histogram import LatencyRecorder, encode
from heimdall.stress.http import ProtocolError, ResponseReader

#: Distinct values of the tracked header (backends) kept; more go to "(other)".
MAX_BACKEND_VALUES = 256
OTHER_BACKEND = "(other)"
#: Failure events kept with their time, for the failover phases.
MAX_FAILURE_EVENTS = 100_000
#: After a stop by signal, in-flight requests get this long to finish.
STOP_GRACE = 1.0
# One receive buffer for all connections: recv() of a large size allocates
# (mmap), shrinks (mremap) and frees (munmap) a buffer on every call.
_RECV_SIZE = 256 * 1024

ERROR_KINDS = ("connect", "timeout", "reset", "protocol")

# Connection states.
_FREE, _CONNECTING, _BUSY, _IDLE = range(4)

_EPOLLIN = getattr(select, "EPOLLIN", 1)
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)
_EPOLLERR = getattr(select, "EPOLLERR", 8)
_EPOLLHUP = getattr(select, "EPOLLHUP", 16)


@attrs.frozen
class WorkerPlan:
    """
    What one generator process does.  Times are C{time.monotonic()}
    seconds, which all processes of a machine share.
    """

    index: int
    family: int
    address: Tuple
    request: bytes
    head_request: bool
    keep_alive: bool
    connections: int
    requests: Optional[int] = None  # stop after this many (this worker's share)
    duration: Optional[float] = None  # stop issuing after this long
    rate: Optional[float] = None  # open loop: requests per second (this worker's share)
    timeout: float = 10.0
    interval: float = 1.0
    backend_header: Optional[str] = "X-Backend"
    #: The port of a backend to follow closely (the failover scenario's
    #: victim): the time of each of its responses is kept.
    watch_port: Optional[int] = None


def _names_port(label: str, port: int) -> bool:
    """
    Whether a backend header value names C{port}: C{host:PORT} or C{PORT}.
    """
    return label == str(port) or label.endswith(f":{port}")


class _Poller:
    """
    epoll where there is one, else the best C{selectors} selector, behind
    the three calls the loop needs.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        if self._epoll is None:
            import selectors

            self._selector = selectors.DefaultSelector()

    def register(self, fd: int, write: bool) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, _EPOLLIN | (_EPOLLOUT if write else 0))
        else:
            import selectors

            self._selector.register(fd, selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0))

    def modify(self, fd: int, write: bool) -> None:
        if self._epoll is not None:
            self._epoll.modify(fd, _EPOLLIN | (_EPOLLOUT if write else 0))
        else:
            import selectors

            self._selector.modify(fd, selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0))

    def unregister(self, fd: int) -> None:
        try:
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                self._selector.unregister(fd)
        except (KeyError, OSError, ValueError):
            pass

    def poll(self, timeout: float) -> List[Tuple[int, int]]:
        if self._epoll is not None:
            return self._epoll.poll(timeout)
        import selectors

        events = []
        for key, mask in self._selector.select(timeout):
            flags = (_EPOLLIN if mask & selectors.EVENT_READ else 0) | (
                _EPOLLOUT if mask & selectors.EVENT_WRITE else 0
            )
            events.append((key.fd, flags))
        return events

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        else:
            self._selector.close()


class _Conn:
    """
    One connection slot: a socket (or none yet) and the request on it.
    """

    __slots__ = ("fd", "out", "reader", "scheduled", "sent_at", "sock", "state", "used")

    def __init__(self, reader: ResponseReader) -> None:
        self.sock: Optional[socket.socket] = None
        self.fd = -1
        self.state = _FREE
        self.reader = reader
        self.scheduled = 0.0  # latency is measured from here
        self.sent_at = 0.0  # the timeout from here
        self.out: Optional[memoryview] = None  # unsent request bytes
        self.used = 0  # requests completed on this socket


class Worker:
    """
    The state of one load loop; L{run} drives it.
    """

    def __init__(self, plan: WorkerPlan, emit: Callable[[Dict[str, Any]], None], clock=time.monotonic) -> None:
        self.plan = plan
        self.emit = emit
        self.clock = clock
        self.poller = _Poller()
        self.conns: Dict[int, _Conn] = {}
        self.slots = [_Conn(ResponseReader(plan.backend_header, plan.head_request)) for _ in range(plan.connections)]
        self.ready: Deque[_Conn] = deque()  # open loop: slots free for the next request
        self.recorder = LatencyRecorder()
        self.issued = 0
        self.responses = 0
        self.bytes_received = 0
        self.status: Dict[int, int] = {}
        self.errors: Dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.backends: Dict[str, int] = {}
        self.backend_last_seen: Dict[str, float] = {}
        self.watched_times: List[float] = []
        self._receive_buffer = bytearray(_RECV_SIZE)
        self._receive_view = memoryview(self._receive_buffer)
        self._watched: Dict[str, bool] = {}  # backend label -> names the watched port
        self.failure_events: List[Tuple[float, str]] = []
        self.failed = 0  # transport errors + 5xx
        self.stopping = False
        self.stopped_by_signal = False
        self.unsent = 0
        self.in_flight = 0
        self._last_index = -1
        # Per-interval deltas for the coordinator.
        self._tick_status: Dict[int, int] = {}
        self._tick_backends: Dict[str, int] = {}
        self._tick_errors = 0
        self._tick_failed = 0
        self._tick_responses = 0
        self.start_at = 0.0

    # -- the loop ---------------------------------------------------------------

    def run(self, start_at: float) -> Dict[str, Any]:
        plan = self.plan
        clock = self.clock
        self.start_at = start_at
        delay = start_at - clock()
        if delay > 0:
            time.sleep(delay)
        usage_start = resource.getrusage(resource.RUSAGE_SELF)
        wall_start = clock()
        deadline = start_at + plan.duration if plan.duration is not None else None
        open_loop = plan.rate is not None
        next_tick = start_at + plan.interval
        next_timeout_scan = wall_start + min(0.1, plan.timeout / 4)
        stop_deadline: Optional[float] = None
        poll = self.poller.poll
        dispatch = self._dispatch

        ready = self.ready
        ready.extend(self.slots)
        while True:
            now = clock()
            if deadline is not None and now >= deadline and not self.stopping:
                self._stop(now)
            if ready and not self.stopping:
                if open_loop:
                    self._send_due(now)
                else:
                    while ready and self._may_issue():
                        self._issue(ready.popleft(), clock())
            if now >= next_tick:
                self._tick(now, scheduled=next_tick)
                next_tick += plan.interval
                if next_tick <= now:  # a long stall: skip missed ticks
                    next_tick = now + plan.interval
            if now >= next_timeout_scan:
                self._scan_timeouts(now)
                next_timeout_scan = now + min(0.1, plan.timeout / 4)
            if self.stopping:
                if self.stopped_by_signal and stop_deadline is None:
                    stop_deadline = now + STOP_GRACE
                if not self.in_flight or (stop_deadline is not None and now >= stop_deadline):
                    break
            elif not self.in_flight and not self._may_issue():
                break  # a request count, all done
            wait = self._io_wait(now, min(next_tick, next_timeout_scan) - now)
            if wait is None:
                continue
            events = poll(wait)
            if events:
                dispatch(events)
        end = clock()
        self._abandon_in_flight()
        self.recorder.flush()
        usage_end = resource.getrusage(resource.RUSAGE_SELF)
        self._tick(end, final=True)
        self.poller.close()
        cpu = (usage_end.ru_utime - usage_start.ru_utime) + (usage_end.ru_stime - usage_start.ru_stime)
        return self._final_report(wall_start, end, cpu)

    def _dispatch(self, events) -> None:
        now = self.clock()
        conns = self.conns
        on_event = self._on_event
        for fd, flags in events:
            conn = conns.get(fd)
            if conn is not None:
                on_event(conn, flags, now)

    def _io_wait(self, now: float, wait: float) -> Optional[float]:
        """
        How long the loop may block in poll(), at most C{wait}; None when
        this call already polled (the last millisecond before a scheduled
        send) and the loop should go round again.
        """
        if self.ready and not self.stopping and self._may_issue():
            if self.plan.rate is None:
                return 0.0  # slots whose connection failed: reissue now
            due_in = self.start_at + self.issued / self.plan.rate - now
            if due_in < wait:
                if due_in > 0.0015:
                    # epoll rounds its timeout up to whole ms: this
                    # wakes at most 1 ms early, never late.
                    wait = due_in - 0.001
                else:
                    # The last millisecond: look for I/O, then nap
                    # at most 200 µs, so sends leave within ~0.2 ms
                    # of their schedule without spinning a core.
                    events = self.poller.poll(0)
                    if not events and due_in > 0:
                        time.sleep(min(due_in, 0.0002))
                    if events:
                        self._dispatch(events)
                    return None
        return wait if wait > 0 else 0.0

    def _final_report(self, wall_start: float, end: float, cpu: float) -> Dict[str, Any]:
        start_at = self.start_at
        return {
            "kind": "final",
            "worker": self.plan.index,
            "histogram": encode(self.recorder.total),
            "issued": self.issued,
            "responses": self.responses,
            "bytes_received": self.bytes_received,
            "status": dict(self.status),
            "errors": dict(self.errors),
            "failed": self.failed,
            "unsent": self.unsent,
            "backends": dict(self.backends),
            "backend_last_seen": dict(self.backend_last_seen),
            "watched_times": self.watched_times,
            "failure_events": self.failure_events,
            "started": wall_start - start_at,
            "ended": end - start_at,
            "cpu_seconds": cpu,
            "wall_seconds": end - wall_start,
            "stopped_by_signal": self.stopped_by_signal,
            "abandoned": self.in_flight,
        }

    def request_stop(self) -> None:
        """
        Stop issuing (a signal handler calls this); in-flight requests get
        L{STOP_GRACE} to finish.
        """
        self.stopped_by_signal = True
        self.stopping = True

    def _stop(self, now: float) -> None:
        if self.plan.rate is not None:
            # Send what was scheduled before the end; what still cannot go
            # (no free connection) was never sent: the target, or this
            # generator, could not keep up.
            self._send_due(now)
            self.unsent = max(0, self._scheduled_total(now) - self.issued)
        self.stopping = True

    def _scheduled_total(self, now: float) -> int:
        """
        How many requests the open-loop schedule has due by C{now}: request
        i is due at C{start + i / rate}, up to the end of the duration and
        the request count.
        """
        plan = self.plan
        due = int((now - self.start_at) * plan.rate) + 1
        if plan.duration is not None:
            due = min(due, math.ceil(plan.duration * plan.rate - 1e-9))
        if plan.requests is not None:
            due = min(due, plan.requests)
        return max(due, 0)

    def _may_issue(self) -> bool:
        if self.stopping:
            return False
        if self.plan.requests is not None and self.issued >= self.plan.requests:
            return False
        return True

    def _send_due(self, now: float) -> None:
        due = self._scheduled_total(now)
        if self.issued >= due:
            return
        ready = self.ready
        start_at = self.start_at
        rate = self.plan.rate
        while self.issued < due and ready:
            self._issue(ready.popleft(), start_at + self.issued / rate)

    # -- requests -----------------------------------------------------------------

    def _issue(self, conn: _Conn, scheduled: float) -> None:
        """
        Start the next request on C{conn}, timed from C{scheduled}.
        """
        self.issued += 1
        self.in_flight += 1
        conn.scheduled = scheduled
        conn.reader.reset()
        if conn.state == _IDLE:
            conn.state = _BUSY
            self._send(conn, self.plan.request)
        else:
            self._connect(conn)

    def _connect(self, conn: _Conn) -> None:
        plan = self.plan
        sock = socket.socket(plan.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = sock
        conn.fd = sock.fileno()
        conn.used = 0
        conn.sent_at = self.clock()
        code = sock.connect_ex(plan.address)
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            self._close(conn)
            self._failed(conn, "connect", conn.sent_at)
            return
        conn.state = _CONNECTING
        self.conns[conn.fd] = conn
        self.poller.register(conn.fd, write=True)

    def _send(self, conn: _Conn, data) -> None:
        now = self.clock()
        conn.sent_at = now
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._failed(conn, "reset", now)
            return
        if sent < len(data):
            conn.out = memoryview(data)[sent:]
            self.poller.modify(conn.fd, write=True)

    def _on_event(self, conn: _Conn, flags: int, now: float) -> None:
        state = conn.state
        if state == _CONNECTING:
            error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._failed(conn, "connect", now)
                return
            if not flags & (_EPOLLOUT | _EPOLLIN):
                return
            conn.state = _BUSY
            self.poller.modify(conn.fd, write=False)
            self._send(conn, self.plan.request)
            return
        if flags & _EPOLLOUT and conn.out is not None:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._failed(conn, "reset", now)
                return
            conn.out = conn.out[sent:] if sent < len(conn.out) else None
            if conn.out is None:
                self.poller.modify(conn.fd, write=False)
        if flags & (_EPOLLIN | _EPOLLERR | _EPOLLHUP):
            try:
                size = conn.sock.recv_into(self._receive_buffer)
                data = self._receive_view[:size].tobytes()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                if state == _BUSY:
                    self._failed(conn, "reset", now)
                else:
                    self._close(conn)
                return
            if not data:
                if state != _BUSY:
                    # An idle keep-alive connection closed: no request lost;
                    # the slot reconnects for its next request.
                    self._close(conn)
                elif conn.reader.eof():
                    self._complete(conn, now)
                else:
                    self._failed(conn, "reset", now)
                return
            if state != _BUSY:
                self._close(conn)  # bytes nobody asked for: drop the connection
                return
            self.bytes_received += len(data)
            try:
                done = conn.reader.feed(data)
            except ProtocolError:
                self._failed(conn, "protocol", now)
                return
            if done:
                self._complete(conn, now)

    def _complete(self, conn: _Conn, now: float) -> None:
        reader = conn.reader
        self.recorder.pending.append(int((now - conn.scheduled) * 1_000_000))
        self.responses += 1
        self._tick_responses += 1
        status = reader.status
        counts = self._tick_status
        counts[status] = counts.get(status, 0) + 1
        if status >= 500:
            self._failure_event(now, "http_5xx")
        backend = reader.backend
        if backend is not None:
            tick_backends = self._tick_backends
            if backend not in tick_backends and backend not in self.backends:
                if len(self.backends) + len(tick_backends) >= MAX_BACKEND_VALUES:
                    backend = OTHER_BACKEND
            tick_backends[backend] = tick_backends.get(backend, 0) + 1
            self.backend_last_seen[backend] = now - self.start_at
            if self.plan.watch_port is not None:
                watched = self._watched.get(backend)
                if watched is None:
                    watched = self._watched[backend] = _names_port(backend, self.plan.watch_port)
                if watched and len(self.watched_times) < MAX_FAILURE_EVENTS:
                    self.watched_times.append(now - self.start_at)
        conn.used += 1
        self.in_flight -= 1
        if reader.close or not self.plan.keep_alive:
            self._close(conn)
            conn.state = _FREE
        else:
            conn.state = _IDLE
        self._slot_free(conn, now)

    def _slot_free(self, conn: _Conn, now: float) -> None:
        if self.plan.rate is not None:
            self.ready.append(conn)
            if not self.stopping:
                self._send_due(now)
        elif self._may_issue():
            self._issue(conn, self.clock())

    def _failed(self, conn: _Conn, kind: str, now: float) -> None:
        """
        The request on C{conn} failed.  The slot goes back to the ready
        queue, not straight to a new request: a target that refuses
        connections at once would otherwise recurse.
        """
        self.errors[kind] += 1
        self.in_flight -= 1
        self._tick_errors += 1
        self._failure_event(now, kind)
        self._close(conn)
        self.ready.append(conn)

    def _failure_event(self, now: float, kind: str) -> None:
        self.failed += 1
        self._tick_failed += 1
        if len(self.failure_events) < MAX_FAILURE_EVENTS:
            self.failure_events.append((now - self.start_at, kind))

    def _close(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is None:
            return
        self.conns.pop(conn.fd, None)
        self.poller.unregister(conn.fd)
        try:
            sock.close()
        except OSError:
            pass
        conn.sock = None
        conn.fd = -1
        conn.out = None
        conn.state = _FREE

    def _scan_timeouts(self, now: float) -> None:
        limit = now - self.plan.timeout
        for conn in self.slots:
            state = conn.state
            if state == _BUSY or state == _CONNECTING:
                if conn.sent_at < limit:
                    self._failed(conn, "connect" if state == _CONNECTING else "timeout", now)

    def _abandon_in_flight(self) -> None:
        for conn in self.slots:
            self._close(conn)

    # -- reporting ------------------------------------------------------------------

    def _tick(self, now: float, final: bool = False, scheduled: Optional[float] = None) -> None:
        status, self._tick_status = self._tick_status, {}
        for code, count in status.items():
            self.status[code] = self.status.get(code, 0) + count
        backends, self._tick_backends = self._tick_backends, {}
        for name, count in backends.items():
            self.backends[name] = self.backends.get(name, 0) + count
        at = now - self.start_at
        interval = self.plan.interval
        if scheduled is not None:
            # The interval that ends at the scheduled tick (which may run late).
            index = int(round((scheduled - self.start_at) / interval)) - 1
        else:
            # The final tick closes a partial interval; a short remainder
            # joins the last whole one rather than make a noisy point.
            index = int(at // interval)
            if self._last_index >= 0 and at - (self._last_index + 1) * interval < interval / 2:
                index = self._last_index
        self._last_index = index
        message = {
            "kind": "tick",
            "worker": self.plan.index,
            "index": index,
            "at": at,
            "responses": self._tick_responses,
            "errors": self._tick_errors,
            "failed": self._tick_failed,
            "status": status,
            "backends": backends,
            "histogram": self.recorder.take_interval(),
            "issued": self.issued,
            "final": final,
        }
        self._tick_responses = self._tick_errors = self._tick_failed = 0
        self.emit(message)
