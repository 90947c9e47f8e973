"""
The router through real sockets on 127.0.0.1: host and path routing to two
services, wildcard hosts, prefix stripping and adding, Host and header
rewrites both ways, redirect and respond routes, 404 when nothing matches;
the service in the access log records and the metrics; a Router built in
code by an embedder.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from heimdall.observe.metrics import Metrics
from tests.routing.conftest import backend_of, fetch


@pytest_twisted.inlineCallbacks
def test_host_and_path_routing_to_two_services(start_backends, routed, http):
    api, web, fallback = (f"127.0.0.1:{p}" for p in start_backends(3))
    lb = routed(
        {
            "backends": [f"http://{fallback}"],
            "services": {"api": {"backends": [f"http://{api}"]}, "web": {"backends": [f"http://{web}"]}},
            "routes": [
                {"match": {"host": "api.example.com"}, "service": "api"},
                {"match": {"host": "*.example.org"}, "service": "web"},
                {"match": {"path_prefix": "/static"}, "service": "web", "strip_prefix": True},
                {"match": {"path_prefix": "/v1", "methods": ["POST"]}, "service": "api", "add_prefix": "/internal"},
            ],
        }
    )
    response, body = yield fetch(http, lb.url + "/users?id=1", host="API.example.com:8080")
    assert (response.code, backend_of(response), json.loads(body)["path"]) == (200, api, "/users?id=1")
    response, body = yield fetch(http, lb.url + "/", host="www.shop.example.org")
    assert backend_of(response) == web
    response, body = yield fetch(http, lb.url + "/static/app.css?v=3", host="other.net")
    assert (backend_of(response), json.loads(body)["path"]) == (web, "/app.css?v=3")
    response, body = yield fetch(http, lb.url + "/v1/orders", method="POST", host="x")
    assert (backend_of(response), json.loads(body)["path"]) == (api, "/internal/v1/orders")
    # Not matched (a GET on /v1, the bare domain of a wildcard): the default service.
    for path, host in (("/v1/orders", "x"), ("/", "example.org")):
        response, body = yield fetch(http, lb.url + path, host=host)
        assert backend_of(response) == fallback
    assert [r.service for r in lb.records] == ["api", "web", "web", "api", "default", "default"]
    assert [r.backend for r in lb.records] == [api, web, web, api, fallback, fallback]


@pytest_twisted.inlineCallbacks
def test_the_same_backend_in_two_services_and_the_metrics_say_which(start_backends, routed, http):
    (port,) = start_backends(1)
    url = f"http://127.0.0.1:{port}"
    lb = routed(
        {
            "backends": [url],
            "services": {"api": {"backends": [url]}},
            "routes": [{"match": {"path_prefix": "/api"}, "service": "api"}],
        }
    )
    proxy = lb.proxy
    metrics = Metrics(process_metrics=False)
    detach = metrics.attach(proxy.default.pool, proxy.resource, proxy.upstream, router=proxy.router)
    metrics.attach_service("api", proxy.services["api"].pool, proxy.services["api"].resource)
    try:
        for path in ("/api/a", "/api/b", "/c"):
            response, _ = yield fetch(http, lb.url + path)
            assert response.code == 200
        labels = {"backend": f"127.0.0.1:{port}", "method": "GET", "code": "2xx"}
        get = metrics.registry.get_sample_value
        assert get("heimdall_requests_total", {"service": "api", **labels}) == 2
        assert get("heimdall_requests_total", {"service": "default", **labels}) == 1
        assert get("heimdall_pool_backends", {"service": "api"}) == 1
    finally:
        detach()


@pytest_twisted.inlineCallbacks
def test_host_and_headers_are_rewritten_both_ways(start_backends, routed, http):
    (port,) = start_backends(1)
    lb = routed(
        {
            "services": {"api": {"backends": [f"http://127.0.0.1:{port}"]}},
            "routes": [
                {
                    "match": {"path_prefix": "/api"},
                    "service": "api",
                    "strip_prefix": True,
                    "set_host": "internal.example",
                    "request_headers": {"set": {"X-Env": "prod"}, "add": {"X-Extra": "1"}, "remove": ["Cookie"]},
                    "response_headers": {"set": {"X-Backend": "hidden"}, "add": {"X-Frame-Options": "DENY"}},
                }
            ],
        }
    )
    response, body = yield fetch(
        http, lb.url + "/api/echo", host="public.example", headers={"Cookie": "secret", "X-Env": "client"}
    )
    seen = json.loads(body)
    headers = [(name.lower(), value) for name, value in seen["headers"]]
    assert seen["path"] == "/echo"
    assert ("host", "internal.example") in headers
    assert ("x-forwarded-host", "public.example") in headers
    assert [v for n, v in headers if n == "x-env"] == ["prod"]
    assert ("x-extra", "1") in headers
    assert "cookie" not in [n for n, _ in headers]
    assert response.headers.getRawHeaders("x-backend") == ["hidden"]
    assert response.headers.getRawHeaders("x-frame-options") == ["DENY"]


@pytest_twisted.inlineCallbacks
def test_redirect_respond_and_404(routed, http):
    lb = routed(
        {
            "services": {"api": {"backends": []}},
            "routes": [
                {"match": {"path_prefix": "/old"}, "redirect": "https://{host}/new{path}", "status": 308},
                {"match": {"path_prefix": "/keep"}, "redirect": "https://{host}:8443{uri}"},
                {"match": {"path_prefix": "/robots.txt"}, "respond": {"status": 200, "body": "User-agent: *\n"}},
                {"match": {"path_prefix": "/gone"}, "respond": {"status": 410, "body": "{}", "content_type": "application/json"}},
                {"match": {"path_prefix": "/api"}, "service": "api"},
            ],
        }
    )
    response, _ = yield fetch(http, lb.url + "/old/page?q=1", host="shop.example:8080")
    assert response.code == 308
    assert response.headers.getRawHeaders("location") == ["https://shop.example/new/old/page?q=1"]
    response, _ = yield fetch(http, lb.url + "/keep?a=b", host="shop.example")
    assert response.code == 302
    assert response.headers.getRawHeaders("location") == ["https://shop.example:8443/keep?a=b"]
    response, body = yield fetch(http, lb.url + "/robots.txt")
    assert (response.code, body) == (200, b"User-agent: *\n")
    assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    response, body = yield fetch(http, lb.url + "/gone")
    assert (response.code, body, response.headers.getRawHeaders("content-type")) == (410, b"{}", ["application/json"])
    # Nothing matches and the default service has no backend: 404 in JSON.
    response, body = yield fetch(http, lb.url + "/nothing")
    assert response.code == 404 and json.loads(body) == {"error": "no route matches this request", "status": 404}
    # A route to a service without backends: that service's 503.
    response, body = yield fetch(http, lb.url + "/api")
    assert response.code == 503
    assert [(r.status, r.service) for r in lb.records] == [
        (308, None), (302, None), (200, None), (410, None), (404, None), (503, "api"),
    ]


@pytest_twisted.inlineCallbacks
def test_without_routes_everything_goes_to_default_as_before(routed, http):
    lb = routed({})
    response, body = yield fetch(http, lb.url + "/")
    assert response.code == 503  # no backend yet, as without a router


@pytest_twisted.inlineCallbacks
def test_an_embedder_builds_a_router_in_code(start_backends, tracked, reactor, http):
    import heimdall
    from heimdall.config.routes import MatchConfig, RouteConfig

    one, two = start_backends(2)
    api = heimdall.balancer_resource([f"http://127.0.0.1:{one}"], clock=reactor, service="api")
    web = heimdall.balancer_resource([f"http://127.0.0.1:{two}"], clock=reactor)
    for resource in (api, web):
        tracked.cleanups.append(resource.upstream.close_all)
    router = heimdall.Router.build(
        [RouteConfig(match=MatchConfig(path_prefix="/api"), service="api", strip_prefix=True)],
        {"api": api, "default": web},
        clock=reactor,
    )
    port = tracked.listen(heimdall.HeimdallSite(router, reactor=reactor)).getHost().port
    response, body = yield fetch(http, f"http://127.0.0.1:{port}/api/x")
    assert (backend_of(response), json.loads(body)["path"]) == (f"127.0.0.1:{one}", "/x")
    response, _ = yield fetch(http, f"http://127.0.0.1:{port}/x")
    assert backend_of(response) == f"127.0.0.1:{two}"
