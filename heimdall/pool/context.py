"""
The request context: what a strategy may key on.
"""

from __future__ import annotations

from typing import Mapping, Optional

import attrs
from twisted.web.http_headers import Headers


@attrs.frozen
class RequestContext:
    """
    What a strategy can know about one request.  Every field may be
    absent (empty); strategies must cope.  C{headers} is shared with the
    request and must be treated as read-only.
    """

    client_address: Optional[str] = None
    method: bytes = b"GET"
    path: bytes = b"/"
    query: bytes = b""
    headers: Headers = attrs.field(factory=Headers)
    cookies: Mapping[bytes, bytes] = attrs.field(factory=dict)
    secure: bool = False

    def header(self, name: bytes) -> Optional[bytes]:
        """
        The first value of header C{name}, or L{None}.
        """
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @classmethod
    def from_request(cls, request, path: bytes, query: bytes) -> "RequestContext":
        """
        Build the context of a L{twisted.web.server.Request}.
        """
        peer = request.getClientAddress()
        return cls(
            client_address=getattr(peer, "host", None),
            method=request.method,
            path=path,
            query=query,
            headers=request.requestHeaders,
            cookies=request.received_cookies,
            secure=request.isSecure(),
        )
