"""
C{heimdall ctl}: the manager API from a terminal.

    heimdall ctl [--manager URL] [--token T] [--json] COMMAND ...

Prints readable tables (or the API's JSON with C{--json}).  An error
answer prints the server's message on stderr and exits with status 1; a
manager that cannot be reached exits with 1 too, and bad usage with 2.

A plain blocking HTTP client: this runs outside heimdall's reactor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple
from urllib.parse import quote

__all__ = ["DEFAULT_MANAGER", "main", "urllib_send"]

DEFAULT_MANAGER = "http://127.0.0.1:9090"

#: send(method, url, headers, body, timeout) -> (status, body bytes);
#: raises OSError when the manager cannot be reached.
Send = Callable[[str, str, Mapping[str, str], Optional[bytes], float], Tuple[int, bytes]]


def urllib_send(
    method: str, url: str, headers: Mapping[str, str], body: Optional[bytes], timeout: float
) -> Tuple[int, bytes]:
    # No proxy from the environment: the manager is usually on loopback,
    # and an http_proxy setting must not capture the token.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


class CtlError(Exception):
    """
    A failure to report on stderr, exiting with status 1.
    """


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heimdall ctl",
        description="Manage a running heimdall's backends through its manager API.",
        epilog="SERVER is a port number (8081) or a server id (127.0.0.1:8081).",
    )
    parser.add_argument(
        "--manager",
        default=None,
        help=f"the manager's URL (default: $HEIMDALL_MANAGER or {DEFAULT_MANAGER})",
    )
    parser.add_argument("--token", default=None, help="bearer token (default: $HEIMDALL_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    parser.add_argument(
        "--timeout", type=float, default=120.0,
        help="seconds to wait for an answer (a removal waits for draining; default 120)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    commands.add_parser("list", help="every server, as a table")
    commands.add_parser("status", help="version, uptime, strategy and counts")
    get = commands.add_parser("get", help="one server")
    get.add_argument("server", metavar="SERVER")
    add = commands.add_parser(
        "add", help="spawn a server (on the lowest free port, or --port), or register one (--url)"
    )
    where = add.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, help="spawn it on this port")
    where.add_argument("--url", help="register this existing server (http://host:port) instead")
    add.add_argument("--weight", type=int, help="0-1000 (default 1)")
    add.add_argument("--backup", action="store_true", help="use it only when no other server is eligible")
    remove = commands.add_parser("remove", help="drain, deregister and (if spawned) stop a server")
    remove.add_argument("server", metavar="SERVER")
    for name, text in (
        ("drain", "send it no new requests (admin state draining)"),
        ("maintenance", "take it out of rotation for maintenance"),
        ("ready", "put it back in rotation"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("server", metavar="SERVER")
    weight = commands.add_parser("weight", help="set a server's weight")
    weight.add_argument("server", metavar="SERVER")
    weight.add_argument("weight", type=int, metavar="WEIGHT", help="0-1000")
    return parser


def _server_query(server: str) -> str:
    if server.isdigit():
        return f"port={server}"
    return "id=" + quote(server, safe="")


class _Client:
    def __init__(self, base: str, token: Optional[str], timeout: float, send: Send) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.send = send

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = None
        if payload is not None:
            body = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        url = self.base + path
        try:
            status, raw = self.send(method, url, headers, body, self.timeout)
        except OSError as error:
            reason = getattr(error, "reason", None) or error
            raise CtlError(f"cannot reach the manager at {self.base}: {reason}") from None
        try:
            data = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, ValueError):
            raise CtlError(f"the manager answered {status} with a body that is not JSON") from None
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            detail = data.get("detail") if isinstance(data, dict) else None
            text = f"{status} {message or 'error'}"
            if isinstance(detail, dict) and detail.get("output"):
                text += "\n" + "\n".join(f"  {line}" for line in detail["output"])
            raise CtlError(text)
        return data


# -- output --------------------------------------------------------------------------


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _row(server: Mapping[str, Any]) -> List[str]:
    health = server.get("health") or {}
    return [
        str(server.get("id", "")),
        str(server.get("port", "")),
        str(server.get("weight", "")),
        str(server.get("admin", "")),
        str(health.get("status", "")),
        (f"pid {server['pid']}" if server.get("pid") else "yes, not running") if server.get("managed") else "no",
        str(server.get("in_flight", "")),
        str(server.get("requests_total", "")),
        str(server.get("failures_total", "")),
        _ms(server.get("response_time_avg")),
    ]


_COLUMNS = ["ID", "PORT", "WEIGHT", "ADMIN", "HEALTH", "MANAGED", "IN-FLIGHT", "REQUESTS", "FAILURES", "AVG-MS"]


def _table(rows: Sequence[Sequence[str]], columns: Sequence[str]) -> str:
    widths = [max(len(columns[i]), *(len(row[i]) for row in rows)) if rows else len(columns[i])
              for i in range(len(columns))]
    lines = ["  ".join(text.ljust(widths[i]) for i, text in enumerate(columns)).rstrip()]
    for row in rows:
        lines.append("  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip())
    return "\n".join(lines) + "\n"


def _details(server: Mapping[str, Any]) -> str:
    health = server.get("health") or {}
    pairs = [
        ("id", server.get("id")),
        ("url", server.get("url")),
        ("weight", server.get("weight")),
        ("backup", "yes" if server.get("backup") else "no"),
        ("admin", server.get("admin")),
        ("health", health.get("status") + (f" ({health['reason']})" if health.get("reason") else "")),
        ("last check", health.get("last_check_at") or "-"),
        ("eligible", "yes" if server.get("eligible") else "no"),
        ("managed", (f"yes, pid {server.get('pid')}" if server.get("pid") else "yes, not running")
         if server.get("managed") else "no"),
        ("source", server.get("source")),
        ("in flight", server.get("in_flight")),
        ("requests", server.get("requests_total")),
        ("failures", server.get("failures_total")),
        ("avg response", f"{_ms(server.get('response_time_avg'))} ms"),
        ("started at", server.get("started_at") or "-"),
        ("restarts", server.get("restarts", 0)),
    ]
    width = max(len(name) for name, _ in pairs)
    return "".join(f"{name.ljust(width)}  {value}\n" for name, value in pairs)


def _removal(server: Mapping[str, Any]) -> str:
    report = server.get("removal") or {}
    parts = [
        f"drained in {report.get('waited', 0)} s" if report.get("drained")
        else f"drain timed out with {report.get('in_flight_left')} in flight"
    ]
    if report.get("stopped"):
        parts.append("process stopped")
        parts.append("port free" if report.get("port_free") else "PORT STILL TAKEN")
    return f"removed {server.get('id')} ({', '.join(parts)})\n"


def _status(status: Mapping[str, Any]) -> str:
    counts = status.get("counts") or {}
    lines = [
        f"heimdall {status.get('version')}, up {status.get('uptime')} s, strategy {status.get('strategy')}",
        "servers: " + ", ".join(f"{name} {value}" for name, value in counts.items()),
    ]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------


def main(
    argv: Optional[Sequence[str]] = None,
    send: Optional[Send] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> int:
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    try:
        options = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    client = _Client(
        options.manager or environ.get("HEIMDALL_MANAGER") or DEFAULT_MANAGER,
        options.token or environ.get("HEIMDALL_TOKEN") or None,
        options.timeout,
        send or urllib_send,
    )
    try:
        data, text = _run(client, options)
    except CtlError as error:
        stderr.write(f"heimdall ctl: {error}\n")
        return 1
    stdout.write(json.dumps(data, indent=2) + "\n" if options.json else text)
    return 0


def _run(client: _Client, options: argparse.Namespace) -> Tuple[Any, str]:
    command = options.command
    if command == "list":
        servers = client.call("GET", "/servers/list")
        return servers, _table([_row(server) for server in servers], _COLUMNS)
    if command == "status":
        status = client.call("GET", "/status")
        return status, _status(status)
    if command == "get":
        server = client.call("GET", f"/servers/get?{_server_query(options.server)}")
        return server, _details(server)
    if command == "add":
        payload: Dict[str, Any] = {}
        if options.url is not None:
            payload["url"] = options.url
        if options.port is not None:
            payload["port"] = options.port
        if options.weight is not None:
            payload["weight"] = options.weight
        if options.backup:
            payload["backup"] = True
        server = client.call("POST", "/servers/add", payload or None)
        how = f"spawned, pid {server.get('pid')}" if server.get("managed") else "registered"
        return server, f"added {server.get('id')} ({how})\n" + _details(server)
    if command == "remove":
        server = client.call("DELETE", f"/servers/remove?{_server_query(options.server)}")
        return server, _removal(server)
    if command in ("drain", "maintenance", "ready"):
        admin = "draining" if command == "drain" else command
        server = client.call("POST", f"/servers/update?{_server_query(options.server)}", {"admin": admin})
        return server, f"{server.get('id')} is {server.get('admin')} ({server.get('in_flight')} in flight)\n"
    assert command == "weight"
    server = client.call("POST", f"/servers/update?{_server_query(options.server)}", {"weight": options.weight})
    return server, f"{server.get('id')} has weight {server.get('weight')}\n"


if __name__ == "__main__":
    raise SystemExit(main())
