"""
The dashboard's static files (index.html, app.js, style.css: hand-written,
no build step, nothing fetched from elsewhere; under heimdall's licence),
served by the manager at C{/dashboard}, C{/dashboard/app.js} and
C{/dashboard/style.css} without the token: they hold no data, and the page
asks for the token before it fetches any.
"""

from __future__ import annotations

import functools
from typing import Tuple

__all__ = ["FILES", "HEADERS", "asset"]

#: Each path's file and content type.
FILES = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/style.css": ("style.css", "text/css; charset=utf-8"),
}

#: Nothing but heimdall's own files may load or run in the page.
HEADERS = (
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


def asset(path: str) -> Tuple[bytes, str]:
    """
    The body and content type served at C{path} (one of L{FILES}).
    """
    name, content_type = FILES[path]
    return _read(name), content_type


@functools.lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    # Read once: no file access on the reactor thread per request.
    from importlib.resources import files

    return (files("heimdall.manager.dashboard") / name).read_bytes()
