"""
Fixtures of the routing tests: heimdall's proxy as twistd builds it, with
its services and router, listening on 127.0.0.1.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from heimdall.config.model import parse_config
from heimdall.service import build_proxy


class Routed:
    def __init__(self, proxy, port):
        self.proxy = proxy
        self.url = f"http://127.0.0.1:{port}"
        self.records = []
        proxy.router.request_observers.append(self.records.append)
        for service in proxy.services.values():
            service.resource.request_observers.append(self.records.append)


@pytest.fixture
def routed(tracked, reactor):
    """
    routed(config) -> Routed: heimdall's proxy as twistd builds it (the
    default service's backends added as the manager would), listening.
    """

    def start(data):
        config = parse_config({"access_log": {"enabled": False}, **data})
        proxy = build_proxy(config, reactor)
        for service in proxy.services.values():
            for entry in service.settings.backends:
                service.pool.add(entry.backend, backup=entry.backup, max_connections=entry.max_connections)
        listening = tracked.listen(proxy.site)
        for service in proxy.services.values():
            tracked.cleanups.append(service.upstream.close_all)
        return Routed(proxy, listening.getHost().port)

    return start


@pytest_twisted.inlineCallbacks
def fetch(http, url, host=None, headers=None, method="GET"):
    all_headers = dict(headers or {})
    if host is not None:
        all_headers["Host"] = host
    response = yield http.request(method, url, headers=all_headers, allow_redirects=False)
    body = yield response.content()
    return response, body


def backend_of(response):
    return response.headers.getRawHeaders("x-backend", [None])[0]


