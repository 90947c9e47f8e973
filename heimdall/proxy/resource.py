"""
L{BalancerResource}: the reverse proxy resource; each request is served by
a L{heimdall.proxy.exchange.ProxyExchange}, one client request's trip to a
backend and back.

The flow of one request::

    render ─► pick (strategy, avoiding backends that failed this request)
           ─► lease (pool counters) ─► acquire (pooled upstream connection)
           ─► send head, stream body ─► head_received ─► body_received…
           ─► response_finished ─► release connection, release lease, log

Failures, and what the client sees:
  - no eligible backend: 503;
  - every eligible backend at its C{max_connections}: the request waits in
    the service's queue (then as usual), or gets 503 with Retry-After when
    there is no queue, it is full, or the wait times out;
  - connect failure: retry on another backend (up to C{retries} times),
    then 502;
  - connection closed before any response byte: retried only if the
    request provably was not processed (an idempotent method, and no body
    byte sent); else 502;
  - no response head within C{response_timeout} of sending the request:
    504;
  - a response body with no byte for C{upstream_read}: the client
    connection is aborted (a truncated response), a passive failure;
  - a whole request over C{request_timeout} (0: none): 504, or the client
    cut off once a response is under way; the client-side waits
    (C{client_body}, C{client_write}) are the site's (see
    L{heimdall.proxy.timeouts});
  - a malformed response: 502, and that connection is closed;
  - the client goes away: the upstream connection is aborted, not pooled.
A request whose response head was already sent to the client cannot get an
error status any more: its client connection is aborted instead, so that
the client sees a truncated response rather than a complete-looking one.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from heimdall.clock import maybe_global_reactor
from heimdall.config.model import Config, LimitsConfig, TimeoutsConfig
from heimdall.pool.pool import BackendPool
from heimdall.pool.values import EventKind
from heimdall.proxy.exchange import ProxyExchange, RequestRecord
from heimdall.proxy.retry_budget import RETRY_ON_CHOICES
from heimdall.proxy.tunnel import TunnelStats
from heimdall.proxy.upstream import UpstreamPool

__all__ = ["BalancerResource", "ProxyExchange", "RequestRecord"]

with warnings.catch_warnings():
    # twisted.web.proxy imports the deprecated HTTPClient; we use none of it
    # but ReverseProxyResource, for embedders who expect that type.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web.proxy import ReverseProxyResource

# The defaults are the config's.
_LIMITS = LimitsConfig()
_TIMEOUTS = TimeoutsConfig()
_RETRIES = attrs.fields(Config).retries.default


class BalancerResource(ReverseProxyResource):
    """
    A reverse proxy over a L{BackendPool}: each request goes to the backend
    the pool's strategy picks, over a pooled keep-alive connection.

    It is a leaf: mounted at C{/api/} in another resource tree, a request
    for C{/api/users?id=1} is forwarded as C{/users?id=1} (the mount point
    is stripped, like nginx's C{proxy_pass http://b/;}); C{path_prefix} is
    put in front of what remains.
    """

    isLeaf = True

    def __init__(
        self,
        pool: BackendPool,
        upstream: Optional[UpstreamPool] = None,
        *,
        clock: Optional[IReactorTime] = None,
        reactor: Any = None,
        retries: int = _RETRIES,
        response_timeout: float = _TIMEOUTS.response,
        max_body_bytes: int = _LIMITS.max_body_bytes,
        trusted_proxies: Sequence = (),
        path_prefix: bytes = b"",
        access_log=None,
        request_observers: Sequence = (),
        retry_on: Sequence[str] = (),
        retry_budget=None,
        service: str = "default",
        queue=None,
        tunnel_idle: float = _TIMEOUTS.tunnel_idle,
        upstream_read: float = _TIMEOUTS.upstream_read,
        request_timeout: float = _TIMEOUTS.request,
    ) -> None:
        """
        @param service: the name of the service it serves, for the access
            log and metrics.
        @param queue: a L{heimdall.proxy.queue.RequestQueue} over C{pool}
            where requests wait while every backend is at its
            C{max_connections}; None: they get 503 at once.
        @param upstream_read: the longest gap between two reads of a
            response body (then the client is cut off: a truncated
            response, and a passive health failure).
        @param request_timeout: the longest a whole request may take (0:
            no limit); see L{heimdall.proxy.timeouts}.
        @param clock: times requests (the global reactor by default).
        @param reactor: connects to the backends when no C{upstream} is
            given (by default the C{clock}, which is then the reactor).
        """
        Resource.__init__(self)
        self.clock = maybe_global_reactor(clock)
        # ReverseProxyResource's own attributes, for code that reads them
        # (its reactor is the upstream pool's: a property).
        self.host, self.port, self.path = "", 0, path_prefix
        self.pool = pool
        self.service = service
        self.queue = queue
        if upstream is None:
            upstream = UpstreamPool(reactor=reactor if reactor is not None else self.clock)
        self.upstream = upstream
        # Opt-in retries of answered requests (retry_on), for idempotent
        # methods only: "5xx" (a 5xx response head) and "timeout" (no head
        # in time).  Upgrade tunnels (WebSocket) close after tunnel_idle
        # without a byte either way.
        self.configure(
            retries=retries, retry_on=retry_on, response_timeout=response_timeout, tunnel_idle=tunnel_idle,
            max_body_bytes=max_body_bytes, trusted_proxies=trusted_proxies,
            upstream_read=upstream_read, request_timeout=request_timeout,
        )
        # Limits retries to a share of live requests during an outage (see
        # heimdall.proxy.retry_budget); None: only `retries` limits them.
        self.retry_budget = retry_budget
        self.tunnels = TunnelStats()
        self.path_prefix = path_prefix.rstrip(b"/")
        # Called with a RequestRecord once per client request (the access
        # log, metrics, ...).  An observer must not raise or block.
        self.request_observers = list(request_observers)
        if access_log is not None:
            self.request_observers.append(access_log.observe)
        # A removed backend's connections must never be reused.
        pool.subscribe(self._pool_changed)

    def configure(
        self, *, retries: int, retry_on: Sequence[str], response_timeout: float, tunnel_idle: float,
        max_body_bytes: int, trusted_proxies: Sequence,
        upstream_read: float = _TIMEOUTS.upstream_read, request_timeout: float = _TIMEOUTS.request,
    ) -> None:
        """
        New settings for the requests that start from now on (a reload);
        each exchange reads them as it goes, so none is half-changed.
        """
        unknown = set(retry_on) - set(RETRY_ON_CHOICES)
        if unknown:
            raise ValueError(f"unknown retry_on value(s): {', '.join(sorted(unknown))}")
        self.retries, self.retry_on = retries, frozenset(retry_on)
        self.response_timeout, self.tunnel_idle = response_timeout, tunnel_idle
        self.max_body_bytes, self.trusted_proxies = max_body_bytes, tuple(trusted_proxies)
        self.upstream_read, self.request_timeout = upstream_read, request_timeout

    @property
    def reactor(self) -> Any:
        """
        What connects to the backends: the upstream pool's reactor.
        """
        return self.upstream.reactor

    def _pool_changed(self, event) -> None:
        if event.kind is EventKind.REMOVED and event.backend_id:
            self.upstream.forget(event.backend_id)

    def getChild(self, path, request):
        return self

    def render(self, request):
        return self.serve(request)

    def serve(self, request, rewrite=None):
        """
        Proxy C{request}, changed by C{rewrite} (an
        L{heimdall.interfaces.IRequestRewrite}, a route's) if given: what a
        router calls.  Returns C{NOT_DONE_YET}, as C{render} does.
        """
        ProxyExchange(self, request, rewrite).start()
        return NOT_DONE_YET
