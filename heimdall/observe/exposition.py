"""
Serving a metrics registry: L{exposition} (what the manager serves at
C{/metrics}) and L{MetricsResource}, a native twisted.web resource.
"""

from __future__ import annotations

from typing import Callable, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource

__all__ = ["MetricsResource", "exposition"]


def exposition(registry: CollectorRegistry) -> Callable[[str], Tuple[bytes, str]]:
    """
    C{render(accept) -> (body, content_type)} for C{registry}: the
    Prometheus text format, or OpenMetrics when C{accept} asks for it.
    What the manager serves at C{/metrics}.
    """

    def render(accept: str) -> Tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    return render


class MetricsResource(Resource):
    """
    C{GET /metrics}: the registry in the Prometheus text format, or
    OpenMetrics when the scraper asks for it (C{Accept}).  Rendered in the
    reactor thread: a scrape takes well under a millisecond for a few dozen
    backends, less than handing it to a thread pool would.  C{?name[]=x}
    restricts the output to the named metrics, as prometheus_client's own
    servers do.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        registry = self.registry
        names = request.args.get(b"name[]")
        if names:
            registry = registry.restricted_registry([n.decode("utf-8", "replace") for n in names])
        body = encoder(registry)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    def render_HEAD(self, request) -> bytes:
        return self.render_GET(request)
