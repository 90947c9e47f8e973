"""
The manager's HTTP site: L{ManagerResource} serves L{ManagerApi}'s answers
at the root of a L{ManagerSite}, whose requests refuse bodies over
L{MAX_BODY_BYTES} as soon as that is known.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from heimdall.manager.api import (
    MAX_BODY_BYTES,
    Answer,
    ManagerApi,
    RawBody,
    Stream,
    error_answer,
    json_bytes,
    too_large_response,
)
from heimdall.manager.servers import ServerManager

__all__ = ["ManagerChannel", "ManagerRequest", "ManagerResource", "ManagerSite"]

_log = Logger()


class ManagerResource(Resource):
    """
    The manager API, served at the root of its own site.

    @param manager: the L{ServerManager}.
    @param token: the bearer token every request must carry, or None.
    @param metrics: renders C{GET /metrics} (see L{ManagerApi.metrics}).
    @param services: every service's manager (L{ManagerApi.services}).
    @param events: starts C{GET /events} on a request (L{ManagerApi.events}).
    @param reloader: reloads the config (L{ManagerApi.reloader}).
    """

    isLeaf = True

    def __init__(
        self, manager: ServerManager, token: Optional[str] = None, metrics=None, services=None, events=None,
        reloader=None,
    ) -> None:
        super().__init__()
        self.api = ManagerApi(manager, token, metrics, services, events, reloader)

    def render(self, request: Any) -> Any:
        gone: List[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        handling = ensureDeferred(self.api.handle(request))

        def respond(answer: Answer) -> None:
            if not gone:
                self._write(request, answer)

        def failed(failure: Failure) -> None:
            respond(error_answer(failure, request))

        handling.addCallbacks(respond, failed)
        handling.addErrback(lambda failure: _log.failure("writing a manager response failed", failure))
        return server.NOT_DONE_YET

    @staticmethod
    def _write(request: Any, answer: Answer) -> None:
        payload = answer.payload
        if isinstance(payload, Stream):
            request.setResponseCode(answer.status)
            payload.start(request)  # it writes and finishes
            return
        if isinstance(payload, RawBody):
            body, content_type = payload.body, payload.content_type.encode("ascii")
        else:
            body, content_type = json_bytes(payload), b"application/json"
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        for name, value in answer.headers:
            request.setHeader(name.encode("ascii"), value.encode("utf-8"))
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()


class ManagerRequest(server.Request):
    """
    A request whose body may not exceed L{MAX_BODY_BYTES}.  A larger one is
    refused (L{too_large_response}) as soon as that is known, from
    Content-Length before any of it is read or while a chunked body
    arrives, and the connection is closed; no byte over the limit is kept.
    """

    body_too_large = False
    _received = 0

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > MAX_BODY_BYTES:
            self._reject_body()
            length = 0  # nothing is kept
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > MAX_BODY_BYTES:
            self._reject_body()
            return
        super().handleContentChunk(data)

    def _reject_body(self) -> None:
        self.body_too_large = True
        self.channel.transport.write(too_large_response())
        self.channel.transport.loseConnection()

    def process(self) -> None:
        if self.body_too_large:
            return  # already answered
        super().process()


class ManagerChannel(http.HTTPChannel):
    """
    Sends no C{100 Continue} after a L{ManagerRequest} has refused its
    body: that interim answer would follow the final one.
    """

    def _send100Continue(self) -> None:
        if self.transport is not None and not self.transport.disconnecting:
            super()._send100Continue()


class ManagerSite(server.Site):
    """
    The manager's site: L{ManagerRequest}s, no form parsing, no
    per-request access log (changes are logged by the manager).
    """

    protocol = ManagerChannel
    requestFactory = ManagerRequest
    noisy = False

    def __init__(self, resource: Resource, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)

    def log(self, request: Any) -> None:
        pass
