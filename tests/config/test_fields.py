"""
Tests for L{heimdall.config.fields}: durations, sizes and endpoints.
"""

from __future__ import annotations

import pytest

from heimdall.config.fields import parse_duration, parse_endpoint, parse_size


# --- Durations and sizes -------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [
        (0, 0.0),
        (2, 2.0),
        (2.5, 2.5),
        ("0s", 0.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("2S", 2.0),
        ("500MS", 0.5),
        ("10 s", 10.0),
    ],
)
def test_parse_duration_valid(value, seconds):
    result = parse_duration(value)
    assert type(result) is float
    assert result == seconds


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, "-1s", True, False, None, "", "s", "2", "1.5", "2x", "2 days", "1m30s", " 2s", "2s ", "1e3s",
     "1.s", float("inf"), float("nan"), [], {}, "١s"],
)
def test_parse_duration_invalid(value):
    with pytest.raises((TypeError, ValueError), match="must be a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value, size",
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("512B", 512),
        ("16KB", 16000),
        ("16KiB", 16384),
        ("16k", 16384),
        ("16K", 16384),
        ("16kib", 16384),
        ("2MB", 2_000_000),
        ("2MiB", 2 * 1024**2),
        ("2m", 2 * 1024**2),
        ("1GB", 10**9),
        ("1GiB", 1024**3),
        ("1g", 1024**3),
        ("1.5KiB", 1536),
        ("10 MiB", 10 * 1024**2),
    ],
)
def test_parse_size_valid(value, size):
    result = parse_size(value)
    assert type(result) is int
    assert result == size


@pytest.mark.parametrize(
    "value",
    [-1, "-1", True, None, 1.0, 1.5, "", "KiB", "1.3B", "0.1KiB", "10 mebibytes", "10XB", "1e3", " 5", [], "٥"],
)
def test_parse_size_invalid(value):
    with pytest.raises((TypeError, ValueError), match="must be a size"):
        parse_size(value)


# --- Endpoints -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (8080, "tcp:8080:interface=127.0.0.1"),
        (1, "tcp:1:interface=127.0.0.1"),
        (65535, "tcp:65535:interface=127.0.0.1"),
        ("tcp:0", "tcp:0"),
        ("tcp:8080:interface=0.0.0.0", "tcp:8080:interface=0.0.0.0"),
        ("tcp:port=8080:interface=127.0.0.1", "tcp:port=8080:interface=127.0.0.1"),
        ("tcp6:8080:interface=\\:\\:1", "tcp6:8080:interface=\\:\\:1"),
        ("unix:/run/heimdall.sock:mode=660", "unix:/run/heimdall.sock:mode=660"),
        ("unix:address=/run/heimdall.sock", "unix:address=/run/heimdall.sock"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_parse_endpoint_valid(value, expected):
    assert parse_endpoint(value) == expected


@pytest.mark.parametrize(
    "value, problem",
    [
        (0, 'a port number must be from 1 to 65535 (use "tcp:0" for any free port)'),
        (65536, 'a port number must be from 1 to 65535 (use "tcp:0" for any free port)'),
        (True, 'must be an endpoint string like "tcp:8080:interface=127.0.0.1" or a port number'),
        (None, 'must be an endpoint string like "tcp:8080:interface=127.0.0.1" or a port number'),
        (8080.0, 'must be an endpoint string like "tcp:8080:interface=127.0.0.1" or a port number'),
        ("", "must not be empty"),
        ("http:8080", "unknown endpoint type 'http'; known types: ssl, systemd, tcp, tcp6, unix"),
        ("TCP:8080", "unknown endpoint type 'TCP'; known types: ssl, systemd, tcp, tcp6, unix"),
        ("type=tcp:8080", "unknown endpoint type 'type=tcp'; known types: ssl, systemd, tcp, tcp6, unix"),
        (
            "8080",
            'unknown endpoint type \'8080\'; known types: ssl, systemd, tcp, tcp6, unix (for a port, write "tcp:8080")',
        ),
        ("tcp", 'a tcp endpoint needs a port, like "tcp:8080"'),
        ("tcp:interface=127.0.0.1", 'a tcp endpoint needs a port, like "tcp:8080"'),
        ("ssl:privateKey=k.pem", 'a ssl endpoint needs a port, like "ssl:8080"'),
        ("tcp:http", "port must be a number from 0 to 65535, not 'http'"),
        ("tcp:65536", "port must be a number from 0 to 65535, not '65536'"),
        ("tcp:-1", "port must be a number from 0 to 65535, not '-1'"),
        ("tcp6:", "port must be a number from 0 to 65535, not ''"),
        ("tcp:80:port=81", "port is given more than once"),
        ("unix:", 'a unix endpoint needs a socket path, like "unix:/run/heimdall.sock"'),
        ("unix", 'a unix endpoint needs a address, like "unix:/run/heimdall.sock"'),
    ],
)
def test_parse_endpoint_invalid(value, problem):
    with pytest.raises((TypeError, ValueError)) as caught:
        parse_endpoint(value)
    assert str(caught.value) == problem
