"""
The manager API's HTTP face: the route table, the OpenAPI document, strict
parsing of queries and JSON bodies, and the one place where the server
manager's domain errors (L{heimdall.errors.ManagerError}) become HTTP
statuses and JSON error bodies C{{"error": "...", "detail": ...}}.

L{ManagerApi} answers one request with an L{Answer}; the site
(L{heimdall.manager.site}) serves it.  The work itself is
L{heimdall.manager.servers.ServerManager}'s.

The endpoints, their answers and errors are described in
C{heimdall/manager/openapi.json} (served at C{/openapi.json}) and docs/manager.md.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Dict, Optional, Sequence, Tuple
from urllib.parse import quote, unquote

import attrs
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from heimdall import __version__
from heimdall.config import reader
from heimdall.errors import (
    AmbiguousServer,
    ConfigRejected,
    HeimdallError,
    InvalidChange,
    ManagerError,
    ManagerStopping,
    NoSpawnPort,
    NotAuthenticated,
    ReloadUnavailable,
    ServerConflict,
    ServerDidNotStart,
    ServerNotFound,
    ServiceNotFound,
    StateNotSaved,
)
from heimdall.manager import dashboard
from heimdall.manager.auth import authenticate
from heimdall.manager.servers import Actor, ServerManager
from heimdall.manager.services import ServiceManagers
from heimdall.pool.pool import AdminState

__all__ = [
    "MAX_BODY_BYTES",
    "ROUTES",
    "Answer",
    "ApiError",
    "ManagerApi",
    "PUBLIC_PATHS",
    "RawBody",
    "Route",
    "Stream",
    "error_answer",
    "error_payload",
    "json_bytes",
    "openapi_document",
    "status_of",
    "too_large_response",
]

_log = Logger()

#: Request bodies above this get 413.
MAX_BODY_BYTES = 64 * 1024


# -- answers and errors --------------------------------------------------------


class ApiError(HeimdallError):
    """
    A request the API itself refuses (before or besides the manager's
    work): C{status} with C{{"error": message, "detail": detail}}.
    """

    def __init__(self, status: int, message: str, detail: Any = None, headers: Sequence[Tuple[str, str]] = ()):
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = tuple(headers)
        super().__init__(f"{status} {message}")


@attrs.frozen
class RawBody:
    """
    A response that is not JSON (the metrics exposition).
    """

    body: bytes
    content_type: str


@attrs.frozen
class Stream:
    """
    A response that streams: the site sets the status and hands the
    request to C{start}, which writes and finishes it when it will (the
    event stream, L{heimdall.manager.events}).
    """

    start: Callable[[Any], Any]


@attrs.frozen
class Answer:
    """
    What to send: a status, a JSON-ready payload (or a L{RawBody}) and
    extra headers as C{(name, value)} pairs.
    """

    status: int
    payload: Any
    headers: Tuple[Tuple[str, str], ...] = attrs.field(default=(), converter=tuple)


#: The status of each domain error; the first class that matches wins.
_STATUSES: Tuple[Tuple[type, int], ...] = (
    (NotAuthenticated, 401),
    (ServerNotFound, 404),
    (ServiceNotFound, 404),
    (AmbiguousServer, 400),
    (InvalidChange, 400),
    (ConfigRejected, 400),
    (ReloadUnavailable, 409),
    (ServerConflict, 409),
    (ServerDidNotStart, 502),
    (NoSpawnPort, 503),
    (ManagerStopping, 503),
    (StateNotSaved, 500),
)

_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="heimdall manager"'),)


def status_of(error: ManagerError) -> int:
    """
    The HTTP status of a domain error (500 for one this table misses).
    """
    for cls, status in _STATUSES:
        if isinstance(error, cls):
            return status
    return 500


def error_payload(message: str, detail: Any = None) -> Dict[str, Any]:
    return {"error": message, "detail": detail}


def json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode("utf-8")


def error_answer(failure: Failure, request: Any = None) -> Answer:
    """
    The answer to a request that failed with C{failure}: a domain error's
    status and body, an L{ApiError}'s own, 503 for a wait that heimdall's
    shutdown cancelled, else 500 (logged).
    """
    error = failure.value
    if isinstance(error, ApiError):
        return Answer(error.status, error_payload(error.message, error.detail), error.headers)
    if isinstance(error, ManagerError):
        headers = _CHALLENGE if isinstance(error, NotAuthenticated) else ()
        return Answer(status_of(error), error_payload(error.message, error.detail), headers)
    if isinstance(error, CancelledError):
        return Answer(503, error_payload("heimdall is shutting down"))
    _log.failure("manager request {method} {path} failed", failure,
                 method=getattr(request, "method", None), path=getattr(request, "uri", None))
    return Answer(500, error_payload("internal error", str(error)))


def too_large_response() -> bytes:
    """
    The whole 413 response the site sends, then closes the connection, as
    soon as a body is known to exceed L{MAX_BODY_BYTES}.
    """
    body = json_bytes(error_payload("request body too large", {"limit": MAX_BODY_BYTES}))
    return (
        b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )


# -- routes --------------------------------------------------------------------


@attrs.frozen
class Route:
    """
    One endpoint: a path (C{{server}} stands for one path segment), its
    methods with a one-line summary each (for C{GET /}), and the query
    parameters it takes.
    """

    path: str
    methods: Tuple[str, ...]
    handler: str
    summaries: Tuple[str, ...]
    query: Tuple[str, ...] = ()


ROUTES: Tuple[Route, ...] = (
    Route("/", ("GET",), "index", ("this help",)),
    Route("/status", ("GET",), "status", ("version, uptime, strategy, counts and the loaded config",)),
    Route("/reload", ("POST",), "reload", ("re-read the config file and apply what changed (SIGHUP does the same)",)),
    Route("/openapi.json", ("GET",), "openapi", ("the OpenAPI 3.1 description of this API",)),
    Route("/metrics", ("GET",), "metrics", ("Prometheus metrics (text exposition, or OpenMetrics on request)",)),
    Route(
        "/events", ("GET",), "events",
        ("server-sent events (text/event-stream): pool events and alerts as they happen, stats every second",),
    ),
    Route("/dashboard", ("GET",), "dashboard", ("the live dashboard (a page; its data needs the token)",)),
    Route("/dashboard/app.js", ("GET",), "dashboard", ("the dashboard's script",)),
    Route("/dashboard/style.css", ("GET",), "dashboard", ("the dashboard's style sheet",)),
    Route("/services", ("GET",), "services", ("every service with its strategy, counts and routes",)),
    Route(
        "/services/update", ("POST",), "service_update",
        ('change a service (?service=NAME, default without it): {"strategy": "least_connections"} or '
         '{"strategy": {"name": "hash", ...options}}',),
        ("service",),
    ),
    Route("/servers/list", ("GET",), "list", ("every server, as a JSON array",), ("service",)),
    Route("/servers/get", ("GET",), "get", ("one server: ?port=N or ?id=HOST:PORT",), ("port", "id", "service")),
    Route(
        "/servers/add", ("POST",), "add",
        (
            "no body: spawn a server on the lowest free port and wait until it is ready; "
            '{"port": N}: spawn on that port; {"url": "http://host:port"}: register an existing server; '
            'optional "weight" (0-1000) and "backup"',
        ),
        ("service",),
    ),
    Route(
        "/servers/remove", ("DELETE",), "remove",
        ("drain, deregister and (if spawned) stop a server: ?port=N or ?id=HOST:PORT",), ("port", "id", "service"),
    ),
    Route(
        "/servers/update", ("POST",), "update",
        (
            'change a server (?port=N or ?id=): {"weight": N, "admin": "ready"|"draining"|"maintenance", '
            '"backup": true|false, "max_connections": N}',
        ),
        ("port", "id", "service"),
    ),
    Route(
        "/servers/{server}", ("GET", "PATCH", "DELETE"), "server",
        (
            "one server, by id (HOST:PORT) or port",
            "change it, as POST /servers/update",
            "remove it, as DELETE /servers/remove",
        ),
        ("service",),
    ),
)

_FIXED = {route.path: route for route in ROUTES if "{" not in route.path}
_BY_SERVER = next(route for route in ROUTES if route.path == "/servers/{server}")

#: Served without the token: the dashboard's static files (they hold no
#: data; every call the page makes for data carries the token).
PUBLIC_PATHS = frozenset(route.path for route in ROUTES if route.handler == "dashboard")

_ADD_FIELDS = ("url", "port", "weight", "backup")
_UPDATE_FIELDS = ("weight", "admin", "backup", "max_connections")


def openapi_document() -> Dict[str, Any]:
    """
    The OpenAPI 3.1 document shipped as C{heimdall/manager/openapi.json} (a fresh
    copy each time).
    """
    return json.loads(_openapi_text())


@functools.lru_cache(maxsize=1)
def _openapi_text() -> str:
    # Read once: no file access on the reactor thread per request.
    from importlib.resources import files

    return (files("heimdall.manager") / "openapi.json").read_text(encoding="utf-8")


# -- strict parsing ------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(field: str, problem: str) -> ApiError:
    return ApiError(400, f"{field}: {problem}", {"field": field, "problem": problem})


def _unknown_field(field: str, known: Sequence[str], where: str = "field") -> ApiError:
    close = reader.closest(field, known)
    detail: Dict[str, Any] = {"field": field, "known": list(known)}
    if close is not None:
        detail["suggestion"] = close
    return ApiError(400, f"unknown {where} {field!r}{reader.suggestion(field, known)}", detail)


def _parse_port(text: str, field: str = "port") -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _invalid(field, "must be a port number from 1 to 65535")
    return int(text)


def _json_object(body: bytes, required: bool, known: Sequence[str]) -> Optional[Dict[str, Any]]:
    """
    The body's JSON object, with only C{known} fields, each given once
    (read with the one strict reader, L{heimdall.config.reader}); None for
    an empty body that is not C{required}.
    """
    if not body.strip():
        if required:
            raise ApiError(400, "a JSON object body is required", {"problem": "empty body"})
        return None
    try:
        data = reader.loads(body.decode("utf-8"), reject_constants=True)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed JSON: the body is not UTF-8", None) from None
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"malformed JSON: {e.msg}", {"line": e.lineno, "column": e.colno, "problem": e.msg}
        ) from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"malformed JSON: {e}", None) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", {"problem": f"got {type(data).__name__}"})
    try:
        return reader.read_object(data, "", known)
    except reader.UnknownKey as e:
        raise _unknown_field(e.key, known) from None
    except reader.DuplicateKey as e:
        raise _invalid(e.key, "is given twice") from None


def _client(request: Any) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return getattr(address, "name", None) or "unix"
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _route(raw_path: bytes) -> Tuple[Route, Optional[bytes]]:
    path = raw_path.decode("latin-1")
    route = _FIXED.get(path)
    if route is not None:
        return route, None
    if path.startswith("/servers/"):
        rest = raw_path[len(b"/servers/"):]
        if rest and b"/" not in rest:
            return _BY_SERVER, rest
    raise ApiError(404, "no such endpoint", {"path": path, "endpoints": [route.path for route in ROUTES]})


def _query(request: Any, route: Route) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for raw_name, raw_values in (request.args or {}).items():
        name = raw_name.decode("utf-8", "replace")
        if name not in route.query:
            raise _unknown_field(name, route.query, "query parameter")
        if len(raw_values) != 1:
            raise _invalid(name, "must be given once")
        try:
            text = raw_values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(name, "must be UTF-8 text") from None
        values[name] = _parse_port(text) if name == "port" else text
        if name in ("id", "service") and not text:
            raise _invalid(name, "must not be empty")
    if "port" in route.query and not set(values) - {"service"}:
        raise ApiError(
            400, "a server is required: ?port=N or ?id=HOST:PORT", {"field": "port", "problem": "is required"}
        )
    return values


def _body(request: Any) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0, 2)
    size = content.tell()
    if size > MAX_BODY_BYTES or getattr(request, "body_too_large", False):
        raise ApiError(413, "request body too large", {"limit": MAX_BODY_BYTES})
    content.seek(0)
    return content.read()


# -- one request -----------------------------------------------------------------


@attrs.define(eq=False)
class ManagerApi:
    """
    Answers one manager request: checks the token, routes, parses, asks
    the L{ServerManager}, and builds the L{Answer}.  Failures are turned
    into answers by L{error_answer}.

    @ivar token: the bearer token every request must carry, or None.
    @ivar metrics: renders C{GET /metrics}: a callable taking the
        request's C{Accept} header and returning C{(body, content_type)}
        (see L{heimdall.observe.metrics.exposition}); without it, 404.
    """

    manager: ServerManager
    token: Optional[str] = None
    metrics: Optional[Callable[[str], Tuple[bytes, str]]] = None
    #: Every service's manager (C{?service=}); only C{manager}'s by default.
    services: Optional[ServiceManagers] = None
    #: Starts C{GET /events} on a request (L{heimdall.manager.events.event_streams});
    #: without it, 404.
    events: Optional[Callable[[Any], Any]] = None
    #: Reloads the config file (L{heimdall.reload.apply.Reloader}: C{reload(actor)},
    #: C{status()}); None: C{POST /reload} answers 409.
    reloader: Optional[Any] = None

    def __attrs_post_init__(self) -> None:
        if self.services is None:
            self.services = ServiceManagers({"default": self.manager})

    async def handle(self, request: Any) -> Answer:
        body = _body(request)
        public = request.path.decode("latin-1") in PUBLIC_PATHS
        actor = Actor(_client(request), False if public else authenticate(request.getHeader(b"authorization"), self.token))
        route, server_ref = _route(request.path)
        method = request.method.decode("ascii", "replace")
        allowed = route.methods + (("HEAD",) if "GET" in route.methods else ())
        if method not in allowed:
            raise ApiError(
                405,
                f"method {method} is not allowed on {route.path}",
                {"method": method, "allowed": list(allowed)},
                headers=[("Allow", ", ".join(allowed))],
            )
        head = method == "HEAD"
        if head:
            method = "GET"
        query = _query(request, route)
        manager = self.services.get(query.get("service"))
        handler = route.handler
        if handler == "index":
            return Answer(200, self._index())
        if handler == "status":
            status = manager.status()
            if self.reloader is not None:
                status["config"] = self.reloader.status()
            return Answer(200, status)
        if handler == "reload":
            _json_object(body, False, ())
            if self.reloader is None:
                raise ReloadUnavailable("heimdall was not started from a config file", None)
            return Answer(200, await self.reloader.reload(actor))
        if handler == "openapi":
            return Answer(200, openapi_document())
        if handler == "metrics":
            return self._metrics(request)
        if handler == "events":
            if self.events is None:
                raise ApiError(404, "the event stream is not enabled", None)
            return Answer(200, RawBody(b"", "text/event-stream; charset=utf-8") if head else Stream(self.events))
        if handler == "dashboard":
            body, content_type = dashboard.asset(request.path.decode("latin-1"))
            return Answer(200, RawBody(body, content_type), dashboard.HEADERS)
        if handler == "services":
            return Answer(200, self.services.describe())
        if handler == "service_update":
            data = _json_object(body, True, ("strategy",))
            if "strategy" not in data:
                raise ApiError(400, "nothing to change: give strategy", {"known": ["strategy"]})
            return Answer(200, await self.services.set_strategy(actor, query.get("service"), data["strategy"]))
        if handler == "list":
            return Answer(200, manager.servers())
        if handler == "add":
            return await self._add(manager, actor, body, query.get("service"))
        if handler == "server":
            server_id = self._server_id(manager, server_ref)
            if method == "GET":
                return Answer(200, manager.describe(server_id))
            if method == "PATCH":
                return Answer(200, await self._update(manager, actor, server_id, body))
            return Answer(200, await manager.remove(actor, server_id))
        server_id = manager.find(query.get("port"), query.get("id"))
        if handler == "get":
            return Answer(200, manager.describe(server_id))
        if handler == "remove":
            return Answer(200, await manager.remove(actor, server_id))
        return Answer(200, await self._update(manager, actor, server_id, body))

    def _metrics(self, request: Any) -> Answer:
        if self.metrics is None:
            raise ApiError(404, "metrics are not enabled", None)
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics(accept.decode("latin-1") if accept else "")
        return Answer(200, RawBody(body, content_type))

    def _server_id(self, manager: ServerManager, reference: Optional[bytes]) -> str:
        assert reference is not None
        try:
            text = unquote(reference.decode("ascii"), errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise _invalid("server", "must be a server id (HOST:PORT) or a port number") from None
        if text.isascii() and text.isdigit():
            if len(text) > 5 or not 1 <= int(text) <= 65535:
                # A path that names no server: not found, like any other.
                raise ApiError(404, f"no server {text}", {"server": text})
            return manager.find(port=int(text))
        return manager.find(server_id=text)

    async def _add(self, manager: ServerManager, actor: Actor, body: bytes, service: Optional[str]) -> Answer:
        data = _json_object(body, False, _ADD_FIELDS) or {}
        weight = data.get("weight", 1)
        if not _is_int(weight) or not 0 <= weight <= 1000:
            raise _invalid("weight", "must be an integer from 0 to 1000")
        backup = data.get("backup", False)
        if not isinstance(backup, bool):
            raise _invalid("backup", "must be true or false")
        if "url" in data:
            if "port" in data:
                raise ApiError(
                    400, 'give "url" (an existing server) or "port" (spawn one), not both', {"field": "port"}
                )
            url = data["url"]
            if not isinstance(url, str):
                raise _invalid("url", 'must be a URL string like "http://10.0.0.5:8080"')
            described = await manager.add_external(actor, url, weight, backup)
        else:
            port = data.get("port")
            if "port" in data and (not _is_int(port) or not 1 <= port <= 65535):
                raise _invalid("port", "must be a port number from 1 to 65535")
            described = await manager.add_spawned(actor, port, weight, backup)
        location = "/servers/get?id=" + quote(described["id"], safe=":[]")
        if service is not None:
            location += "&service=" + quote(service, safe="")
        return Answer(201, described, [("Location", location)])

    async def _update(self, manager: ServerManager, actor: Actor, server_id: str, body: bytes) -> Dict[str, Any]:
        data = _json_object(body, True, _UPDATE_FIELDS)
        assert data is not None
        if not data:
            raise ApiError(400, "nothing to change: give weight, admin, backup or max_connections",
                           {"known": list(_UPDATE_FIELDS)})
        weight = data.get("weight")
        if weight is not None and (not _is_int(weight) or not 0 <= weight <= 1000):
            raise _invalid("weight", "must be an integer from 0 to 1000")
        admin_text = data.get("admin")
        admin = None
        if admin_text is not None:
            try:
                admin = AdminState(admin_text)
            except ValueError:
                raise _invalid("admin", 'must be "ready", "draining" or "maintenance"') from None
        backup = data.get("backup")
        if backup is not None and not isinstance(backup, bool):
            raise _invalid("backup", "must be true or false")
        limit = data.get("max_connections")
        if limit is not None and (not _is_int(limit) or not 0 <= limit <= 1000000):
            raise _invalid("max_connections", "must be an integer from 0 (no limit) to 1000000")
        if any(name in data and data[name] is None for name in _UPDATE_FIELDS):
            raise ApiError(400, "fields must not be null", {"problem": "null value"})
        return await manager.update(
            actor, server_id, weight=weight, admin=admin, backup=backup, max_connections=limit
        )

    def _index(self) -> Dict[str, Any]:
        lines = []
        for route in ROUTES:
            for method, summary in zip(route.methods, route.summaries):
                lines.append(f"{method} {route.path} - {summary}")
        return {
            "name": "heimdall manager",
            "version": __version__,
            "endpoints": lines,
            "auth": "Authorization: Bearer TOKEN" if self.token is not None else None,
            "docs": "/openapi.json",
        }
