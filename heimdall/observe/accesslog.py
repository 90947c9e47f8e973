"""
The access log: one line per proxied request, as text or JSON, through a
dedicated C{twisted.logger} observer (not the global log publisher, which
would cost every other observer's time on each request).

Fields, in this order (JSON keys as named): C{time} (Unix seconds),
C{request_id}, C{client}, C{method}, C{path}, C{status}, C{service} (null
when heimdall answered itself: a redirect, respond or no route), C{backend},
C{upstream_time} and C{total_time} (seconds), C{bytes_in}, C{bytes_out},
C{attempts}, C{protocol} (C{HTTP/1.1}, C{HTTP/2}), C{tls} (the TLS
version, or null over plain TCP) and C{timeout} (the timeout that ended the
request: C{upstream_read}, C{client_write}, C{client_body}, C{request},
C{response}; null if none did: see L{heimdall.proxy.timeouts}).  Text lines
end in C{timeout=KIND} only when one fired.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Optional

from twisted.logger import FileLogObserver, Logger

FIELDS = (
    "request_id",
    "client",
    "method",
    "path",
    "status",
    "service",
    "backend",
    "upstream_time",
    "total_time",
    "bytes_in",
    "bytes_out",
    "attempts",
    "protocol",
    "tls",
    "timeout",
)


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def format_text(event) -> Optional[str]:
    """
    C{client "METHOD path" status bytes_out service=… backend=… upstream=…ms total=…ms}.
    """
    upstream = event.get("upstream_time")
    timeout = event.get("timeout")
    return '{client} "{method} {path}" {status} {bytes_out} service={service} backend={backend} upstream={up} total={total:.2f}ms bytes_in={bytes_in} attempts={attempts} id={request_id} proto={protocol} tls={tls}{timeout}\n'.format(
        request_id=_text(event.get("request_id")),
        client=_text(event.get("client")),
        method=_text(event.get("method")),
        path=_text(event.get("path")),
        status=event.get("status"),
        bytes_out=event.get("bytes_out", 0),
        service=_text(event.get("service")),
        backend=_text(event.get("backend")),
        up="-" if upstream is None else "%.2fms" % (upstream * 1000),
        total=event.get("total_time", 0.0) * 1000,
        bytes_in=event.get("bytes_in", 0),
        attempts=event.get("attempts", 0),
        protocol=_text(event.get("protocol")),
        tls=_text(event.get("tls")),
        timeout="" if timeout is None else f" timeout={timeout}",
    )


def format_json(event) -> Optional[str]:
    record = {"time": round(event["log_time"], 6)}
    for field in FIELDS:
        value = event.get(field)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        elif isinstance(value, float):
            value = round(value, 6)
        record[field] = value
    return json.dumps(record, separators=(",", ":")) + "\n"


class ReopenableFile:
    """
    A text file that L{reopen} closes and opens again at the same path:
    after logrotate moved it away, writing goes on in a new file.  Line
    buffered, appended to.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "a", buffering=1, encoding="utf-8")

    def write(self, text: str) -> int:
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        old, self._file = self._file, open(self.path, "a", buffering=1, encoding="utf-8")
        old.close()

    def close(self) -> None:
        self._file.close()


class AccessLog:
    """
    Writes access-log events to C{stream} (stdout by default) as C{"text"}
    or C{"json"} lines.
    """

    def __init__(self, format: str = "text", stream: Optional[IO[str]] = None) -> None:
        if format not in ("text", "json"):
            raise ValueError(f"access log format must be text or json, not {format!r}")
        self.stream = stream if stream is not None else sys.stdout
        formatter = format_json if format == "json" else format_text
        self._logger = Logger(namespace="heimdall.access", observer=FileLogObserver(self.stream, formatter))

    @classmethod
    def open(cls, format: str, path: str) -> "AccessLog":
        """
        An access log to C{path} (C{"-"} is stdout), appended to.
        """
        if path == "-":
            return cls(format)
        return cls(format, ReopenableFile(path))

    def reopen(self) -> None:
        """
        Reopen the file (SIGUSR1, after logrotate); stdout is left alone.
        """
        if isinstance(self.stream, ReopenableFile):
            self.stream.reopen()

    def observe(self, record) -> None:
        """
        A request observer for L{heimdall.proxy.resource.BalancerResource}: logs a
        L{heimdall.proxy.exchange.RequestRecord}.
        """
        self._logger.info(
            "access",
            client=record.client,
            method=record.method,
            path=record.path,
            status=record.status,
            service=getattr(record, "service", None),
            backend=record.backend,
            upstream_time=record.upstream_time,
            total_time=record.total_time,
            bytes_in=record.bytes_in,
            bytes_out=record.bytes_out,
            attempts=record.attempts,
            request_id=record.request_id,
            protocol=record.protocol,
            tls=record.tls,
            timeout=getattr(record, "timeout", None),
        )

    def close(self) -> None:
        if self.stream not in (sys.stdout, sys.stderr):
            self.stream.close()
