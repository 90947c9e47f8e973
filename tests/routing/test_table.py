"""
heimdall.routing.table in memory: first match wins in table order across
the host and prefix indexes; each match key; hosts and paths normalised;
the rewrites; and the values checked at config time.
"""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from heimdall.config.model import parse_config
from heimdall.config.routes import HeaderRewriteConfig, MatchConfig, RouteConfig
from heimdall.errors import ConfigError
from heimdall.interfaces import IRequestRewrite
from heimdall.routing.table import Rewrite, RouteTable, match_path, request_host


class Request:
    def __init__(self, method=b"GET", headers=None, args=None):
        self.method = method
        self.requestHeaders = Headers(headers or {})
        self.args = args or {}


def route(service="s", **match):
    return RouteConfig(match=MatchConfig(**match), service=service)


def lookup(table, host=b"", path=b"/", **request):
    found = table.lookup(Request(**request), request_host(host), match_path(path))
    return None if found is None else found.index


def test_first_match_wins_in_table_order_across_indexes():
    table = RouteTable.compile(
        [
            route(path_prefix="/api/v2"),             # 0
            route(host="a.example.com"),              # 1
            route(host="*.example.com", path_prefix="/api"),  # 2
            route(path_prefix="/api"),                # 3
            route(host="a.example.com", path_prefix="/api"),  # 4: never, 1 comes first
            route(),                                  # 5: everything else
        ]
    )
    assert lookup(table, b"a.example.com", b"/api/v2/x") == 0
    assert lookup(table, b"a.example.com", b"/api/x") == 1
    assert lookup(table, b"b.example.com", b"/api/x") == 2
    assert lookup(table, b"other.org", b"/api/x") == 3
    assert lookup(table, b"other.org", b"/") == 5
    assert lookup(table, b"", b"/apix") == 3  # a string prefix, as in nginx and Traefik


def test_no_match():
    table = RouteTable.compile([route(host="a.example.com"), route(path_prefix="/x")])
    assert lookup(table, b"b.example.com", b"/y") is None
    assert RouteTable.compile([]).lookup(Request(), b"", b"/") is None


def test_hosts_wildcards_ports_and_case():
    table = RouteTable.compile([route(host="API.Example.com"), route(host="*.example.com")])
    assert lookup(table, b"api.example.COM:8080", b"/") == 0
    assert lookup(table, b"api.example.com.", b"/") == 0
    assert lookup(table, b"x.y.example.com", b"/") == 1  # any depth
    assert lookup(table, b"example.com", b"/") is None  # not the bare domain
    assert lookup(table, b"badexample.com", b"/") is None
    assert request_host(b"[::1]:8080") == b"[::1]"
    assert request_host(None) == b""


def test_methods_headers_query_and_regex():
    table = RouteTable.compile(
        [
            route(methods=["post"]),
            route(headers={"X-Env": "canary"}),
            route(headers={"User-Agent": {"regex": "(?i)curl"}}),
            route(query={"debug": "1"}),
            route(path_regex=r"\.php$"),
        ]
    )
    assert lookup(table, method=b"POST") == 0
    assert lookup(table, headers={b"X-Env": [b"prod", b"canary"]}) == 1
    assert lookup(table, headers={b"X-Env": [b"canary2"]}) is None
    assert lookup(table, headers={b"User-Agent": [b"CURL/8.0"]}) == 2
    assert lookup(table, args={b"debug": [b"1"]}) == 3
    assert lookup(table, args={b"debug": [b"0"]}) is None
    assert lookup(table, path=b"/index.php") == 4
    assert lookup(table, path=b"/index.php5") is None


def test_paths_are_compared_with_unreserved_characters_decoded():
    table = RouteTable.compile([route(path_prefix="/admin")])
    assert match_path(b"/%61dmin/x") == b"/admin/x"
    assert lookup(table, path=b"/%61dmin") == 0
    assert match_path(b"/a%2Fb%2fc") == b"/a%2Fb%2Fc"  # reserved stays encoded


def test_many_routes_are_found_without_a_scan():
    routes = [route(host=f"h{i}.example.com") for i in range(500)]
    routes += [route(path_prefix=f"/svc{i}/") for i in range(500)]
    table = RouteTable.compile(routes)
    assert lookup(table, b"h321.example.com", b"/") == 321
    assert lookup(table, b"zzz", b"/svc123/users") == 623
    # Prefixes are looked up per distinct length, not per route.
    assert len(table._any.lengths) <= 4


def test_rewrite_paths_and_headers():
    rewrite = Rewrite.from_route(
        RouteConfig(
            match=MatchConfig(path_prefix="/api"),
            service="s",
            strip_prefix=True,
            add_prefix="/v2",
            set_host="internal",
            request_headers=HeaderRewriteConfig(set={"X-A": "1"}, add={"X-B": "2"}, remove=["Cookie"]),
            response_headers=HeaderRewriteConfig(set={"Server": "h"}, add={"X-C": "3"}, remove=["X-Powered-By"]),
        )
    )
    verifyObject(IRequestRewrite, rewrite)
    assert rewrite.path(b"/api/users") == b"/v2/users"
    assert rewrite.path(b"/api") == b"/v2/"
    assert rewrite.path(b"/apiusers") == b"/v2/users"
    assert rewrite.host == b"internal"
    headers = rewrite.request_headers([(b"Cookie", b"c"), (b"X-A", b"old"), (b"Accept", b"*/*")])
    assert headers == [(b"Accept", b"*/*"), (b"X-A", b"1"), (b"X-B", b"2")]
    response = Headers({b"X-Powered-By": [b"php"], b"Server": [b"apache"], b"X-C": [b"0"]})
    rewrite.response_headers(response)
    assert response.getRawHeaders(b"x-powered-by") is None
    assert response.getRawHeaders(b"server") == [b"h"]
    assert response.getRawHeaders(b"x-c") == [b"0", b"3"]
    assert Rewrite.from_route(route()) is None


@pytest.mark.parametrize(
    "routes, message",
    [
        ([{"match": {}, "service": "nope"}], "routes[0].service: no service 'nope'; services: default"),
        ([{"match": {"host": "a.com:80"}, "service": "default"}], "routes[0].match.host: hosts are compared"),
        ([{"match": {"host": "a.*.com"}, "service": "default"}], "routes[0].match.host: must be a host name"),
        ([{"match": {"path_regex": "("}, "service": "default"}], "routes[0].match.path_regex: invalid regular expression"),
        ([{"match": {"path_prefix": "api"}, "service": "default"}], 'routes[0].match.path_prefix: must be a path'),
        ([{"match": {}}], 'routes[0].service: a route needs exactly one of "service", "redirect" and "respond"'),
        ([{"match": {}, "service": "default", "respond": {}}], "routes[0].respond: a route needs exactly one"),
        ([{"match": {}, "service": "default", "strip_prefix": True}], "routes[0].strip_prefix: needs match.path_prefix"),
        ([{"match": {}, "redirect": "https://{hots}/"}], "routes[0].redirect: unknown placeholder {hots}"),
        ([{"match": {}, "redirect": "https://x/", "status": 200}], "routes[0].status: must be one of 301"),
        ([{"match": {}, "respond": {"status": 200}, "set_host": "x"}], "routes[0].set_host: applies to routes"),
        (
            [{"match": {}, "service": "default", "request_headers": {"set": {"Host": "x"}}}],
            "routes[0].request_headers.set.Host: Host is managed by heimdall",
        ),
        ([{"match": {"methdos": ["GET"]}, "service": "default"}], 'routes[0].match.methdos: unknown key; did you mean'),
        ([{"match": {"headers": {"X": {"re": "a"}}}, "service": "default"}], "routes[0].match.headers.X: must be"),
    ],
)
def test_bad_routes_name_the_field(routes, message):
    with pytest.raises(ConfigError) as raised:
        parse_config({"routes": routes})
    assert str(raised.value).startswith(message), str(raised.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"services": {"a b": {}}}, "services.a b: a service name is"),
        ({"services": {"api": {"backends": ["ftp://x"]}}}, "services.api.backends[0].url:"),
        ({"services": {"api": {"strategy": "nope"}}}, "services.api.strategy: unknown strategy 'nope'"),
        ({"services": {"api": {"timeouts": {"client_idle": "1s"}}}}, "services.api.timeouts.client_idle: applies to"),
        ({"services": {"api": {"retries": 99}}}, "services.api.retries: must be an integer from 0 to 10"),
        ({"services": {"api": {"queue": {"size": -1}}}}, "services.api.queue.size: must be an integer"),
        ({"services": {"api": {"queue": {"timeout": "soon"}}}}, "services.api.queue.timeout: must be a duration"),
        ({"backends": [{"url": "http://a:1", "max_connections": -1}]}, "backends[0].max_connections: must be"),
        ({"services": {"api": {"backend": []}}}, 'services.api.backend: unknown key; did you mean "backends"?'),
        (
            {"backends": ["http://127.0.0.1:1"], "services": {"default": {"backends": ["http://127.0.0.1:2"]}}},
            "services.default.backends: give the default backends at the top level or in services.default",
        ),
    ],
)
def test_bad_services_name_the_field(data, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert str(raised.value).startswith(message), str(raised.value)


def test_the_readme_example_is_a_valid_config():
    import json
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Services and routes", 1)[1]
    example = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    config = parse_config(json.loads(example))
    assert set(config.services) == {"api", "static"} and len(config.routes) == 7
    RouteTable.compile(config.routes)
