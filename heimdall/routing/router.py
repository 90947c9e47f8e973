"""
L{Router}: the resource at the front door.  It looks each request up in a
L{heimdall.routing.table.RouteTable} and hands it to the chosen service's
L{heimdall.proxy.resource.BalancerResource} (with the route's rewrites),
or answers itself: a redirect, a fixed response, or 404 when nothing
matched and the C{default} service has no backends.

What it routes with is one immutable L{Routing} value (the table and the
service resources by name), replaced by reference (L{Router.swap}): a
request sees the old routing or the new one, never a mix.

Embedders build one in code::

    router = Router.build(
        [RouteConfig(match=MatchConfig(path_prefix="/api"), service="api", strip_prefix=True)],
        {"api": balancer_resource(["http://127.0.0.1:8081"], service="api"),
         "default": balancer_resource(["http://127.0.0.1:8082"])},
    )
    site = HeimdallSite(router)
"""

from __future__ import annotations

import json
from typing import Any, Callable, List, Mapping, Optional, Sequence

import attrs
from twisted.logger import Logger
from twisted.web.http import datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from heimdall.clock import maybe_global_reactor
from heimdall.config.routes import RouteConfig
from heimdall.config.services import DEFAULT_SERVICE
from heimdall.proxy.exchange import RequestRecord, upstream_target
from heimdall.routing.table import PROXY, REDIRECT, CompiledRoute, RouteTable, match_path, request_host

__all__ = ["Router", "Routing"]

_log = Logger()


def _check_services(instance, attribute, value) -> None:
    for route in instance.table.routes:
        if route.service is not None and route.service not in value:
            raise ValueError(f"route {route.index} names service {route.service!r}, which is not given")


@attrs.frozen
class Routing:
    """
    What a router routes with: the table and the resource of each service
    it names (by name; C{default} for requests no route takes).
    """

    table: RouteTable
    services: Mapping[str, Any] = attrs.field(validator=_check_services)
    default: str = DEFAULT_SERVICE


class Router(Resource):
    """
    A leaf resource that routes each request (see the module docstring).

    @ivar request_observers: called with a L{RequestRecord} for every
        request the router answers itself (the services' resources have
        their own observers for the requests they proxy).
    """

    isLeaf = True

    def __init__(self, routing: Routing, *, clock=None, request_observers: Sequence[Callable] = ()) -> None:
        Resource.__init__(self)
        self.routing = routing
        self.clock = maybe_global_reactor(clock)
        self.request_observers: List[Callable] = list(request_observers)

    @classmethod
    def build(cls, routes: Sequence[RouteConfig], services: Mapping[str, Any], **options: Any) -> "Router":
        """
        A router over C{routes} (L{RouteConfig} values) and C{services}
        (name to L{heimdall.proxy.resource.BalancerResource}).
        """
        return cls(Routing(RouteTable.compile(routes), dict(services)), **options)

    def swap(self, routing: Routing) -> None:
        """
        Route every request from now on with C{routing}.
        """
        self.routing = routing

    def getChild(self, path, request):
        return self

    def render(self, request):
        routing = self.routing
        table = routing.table
        route: Optional[CompiledRoute] = None
        if table.routes:
            path = upstream_target(request)[0]
            route = table.lookup(request, request_host(request.getHeader(b"host")), match_path(path))
        if route is None:
            resource = routing.services.get(routing.default)
            # With no routes at all, everything is the default service's
            # (503 while it has no backend, as without a router).
            if resource is not None and (not table.routes or len(resource.pool)):
                return resource.serve(request)
            self._answer(request, 404, b"application/json", _json_error(404, "no route matches this request"))
            return NOT_DONE_YET
        if route.action is PROXY:
            return routing.services[route.service].serve(request, route.rewrite)
        if route.action is REDIRECT:
            location = _redirect_location(route.config.redirect, request)
            status = route.config.redirect_status
            body = b"Redirecting to " + location + b"\n"
            self._answer(request, status, b"text/plain; charset=utf-8", body, ((b"Location", location),))
        else:
            self._answer(request, route.config.respond.status, route.respond_type, route.respond_body)
        return NOT_DONE_YET

    def _answer(self, request, status: int, content_type: bytes, body: bytes, headers=()) -> None:
        started = self.clock.seconds()
        request.setResponseCode(status)
        out = request.responseHeaders
        out.setRawHeaders(b"Date", [datetimeToString(started)])
        out.setRawHeaders(b"Content-Type", [content_type])
        out.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        for name, value in headers:
            out.setRawHeaders(name, [value])
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
        if self.request_observers:
            self._record(request, status, len(body), started)

    def _record(self, request, status: int, size: int, started: float) -> None:
        peer = request.getClientAddress()
        record = RequestRecord(
            client=getattr(peer, "host", None),
            method=request.method,
            path=request.uri,
            status=status,
            backend=None,
            upstream_time=None,
            total_time=self.clock.seconds() - started,
            bytes_in=0,
            bytes_out=size,
            attempts=0,
            protocol=request.clientproto.decode("ascii", "replace"),
        )
        for observer in self.request_observers:
            try:
                observer(record)
            except Exception:
                _log.failure("request observer {observer!r} failed", observer=observer)


def _json_error(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}).encode() + b"\n"


class _Placeholders(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _redirect_location(template: str, request) -> bytes:
    """
    The Location of a redirect route for C{request} (see
    L{heimdall.config.routes.RouteConfig.redirect} for the placeholders).
    """
    uri = request.uri
    path, _, query = uri.partition(b"?")
    raw_host = (request.getHeader(b"host") or b"").decode("latin-1")
    host = request_host(raw_host.encode("latin-1")).decode("latin-1")
    port = raw_host[len(host):].lstrip(":") if raw_host.lower().startswith(host) else ""
    values = _Placeholders(
        scheme="https" if request.isSecure() else "http",
        host=host,
        port=port,
        path=path.decode("latin-1"),
        query=query.decode("latin-1"),
        uri=uri.decode("latin-1"),
    )
    location = template.format_map(values)
    if query and "?" not in template and "{query}" not in template and "{uri}" not in template:
        location += "?" + values["query"]
    return location.encode("latin-1")
