"""
An application with its own pages and heimdall mounted at /api/.

    python -m heimdall.backend --port 8081 &
    python -m heimdall.backend --port 8082 &
    python examples/embed_in_app.py \
        --backend http://127.0.0.1:8081 --backend http://127.0.0.1:8082 --port 8000
    curl http://127.0.0.1:8000/             # the app's own page
    curl http://127.0.0.1:8000/api/users    # a backend, as /users

Only heimdall's public API is used (C{heimdall.balancer_resource}).  The
reactor is imported inside L{main}, so that L{build_app} can be imported
(and tested) without installing one.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from twisted.web.resource import Resource

from heimdall import balancer_resource


class HomePage(Resource):
    """
    The application's own page at C{/}.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"Hello from the app. Its API, balanced by heimdall, is under /api/.\n"


def build_app(backends: Sequence[str], strategy: str = "round_robin", *, clock=None):
    """
    The application's resource tree and its balancer: C{(root, balancer)}.
    Keep the balancer to add or remove backends (C{balancer.pool}) and to
    close its upstream connections on shutdown (C{balancer.upstream}).
    """
    balancer = balancer_resource(list(backends), strategy=strategy, clock=clock)
    root = Resource()
    root.putChild(b"", HomePage())
    # /api/users?id=1 reaches a backend as /users?id=1: the mount point is
    # stripped.
    root.putChild(b"api", balancer)
    return root, balancer


def _parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A Twisted web app with heimdall mounted at /api/.")
    parser.add_argument(
        "--backend", action="append", required=True, help="a backend URL like http://127.0.0.1:8081; repeat for more"
    )
    parser.add_argument("--strategy", default="round_robin", help="a heimdall strategy name (default round_robin)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(list(sys.argv[1:] if argv is None else argv))

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.server import Site

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    root, balancer = build_app(args.backend, args.strategy, clock=reactor)
    # A plain Site: the app's own resources read request.content as usual.
    # The balancer works under it too, but request bodies are buffered
    # whole; serve the balancer alone with heimdall.HeimdallSite for
    # streaming uploads and 413/414/431 limits.
    site = Site(root)
    listening = reactor.listenTCP(args.port, site, interface=args.host)
    # On SIGTERM/SIGINT: stop accepting, then close pooled backend connections.
    reactor.addSystemEventTrigger("before", "shutdown", balancer.upstream.close_all)

    def announce() -> None:
        print(f"listening on http://{args.host}:{listening.getHost().port}", flush=True)

    # Announced once running, when the signal handlers are installed.
    reactor.callWhenRunning(announce)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
