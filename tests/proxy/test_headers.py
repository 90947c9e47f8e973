"""
Header rewriting: hop-by-hop removal and forwarding headers.
"""

from __future__ import annotations

import ipaddress

from heimdall.proxy.headers import client_from_forwarded_for, end_to_end, upstream_request_headers


def test_end_to_end_drops_hop_by_hop_and_connection_named():
    headers = [
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Accept", b"a"),
        (b"Accept", b"b"),
    ]
    assert end_to_end(headers) == [(b"Accept", b"a"), (b"Accept", b"b")]


def _up(raw, client="10.0.0.9", trusted=(), secure=False):
    return upstream_request_headers(
        [(n, v) for n, v in raw], client, secure, b"HTTP/1.1", [ipaddress.ip_network(t) for t in trusted]
    )


def test_forwarding_headers_from_an_untrusted_client_are_replaced():
    out = _up(
        [
            (b"Host", [b"site.test"]),
            (b"X-Forwarded-For", [b"1.2.3.4"]),
            (b"X-Forwarded-Proto", [b"https"]),
            (b"Via", [b"1.0 fake"]),
            (b"Content-Length", [b"5"]),
            (b"Expect", [b"100-continue"]),
        ]
    )
    assert out == [
        (b"X-Forwarded-For", b"10.0.0.9"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"site.test"),
        (b"Via", b"1.1 heimdall"),
    ]


def test_forwarding_headers_from_a_trusted_proxy_are_extended():
    out = dict(
        _up(
            [
                (b"Host", [b"inner"]),
                (b"X-Forwarded-For", [b"1.2.3.4, 5.6.7.8"]),
                (b"X-Forwarded-Proto", [b"https"]),
                (b"X-Forwarded-Host", [b"outer.test"]),
                (b"Via", [b"1.1 edge"]),
            ],
            trusted=["10.0.0.0/8"],
        )
    )
    assert out[b"X-Forwarded-For"] == b"1.2.3.4, 5.6.7.8, 10.0.0.9"
    assert out[b"X-Forwarded-Proto"] == b"https"
    assert out[b"X-Forwarded-Host"] == b"outer.test"
    assert out[b"Via"] == b"1.1 edge, 1.1 heimdall"


def test_secure_and_http10_client():
    out = dict(
        upstream_request_headers([(b"Host", [b"h"])], "127.0.0.1", True, b"HTTP/1.0", ())
    )
    assert out[b"X-Forwarded-Proto"] == b"https"
    assert out[b"Via"] == b"1.0 heimdall"


def test_client_from_forwarded_for_walks_back_trusted_hops():
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_from_forwarded_for("9.9.9.9", [b"1.1.1.1"], trusted) == "9.9.9.9"
    assert client_from_forwarded_for("10.0.0.1", [b"1.1.1.1, 10.0.0.2"], trusted) == "1.1.1.1"
    assert client_from_forwarded_for("10.0.0.1", [b"garbage"], trusted) == "10.0.0.1"
    assert client_from_forwarded_for("10.0.0.1", [b"1.1.1.1"], ()) == "10.0.0.1"
