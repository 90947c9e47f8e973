"""
Endpoint strings are checked completely when the config loads: every
argument as Twisted's parser takes it (without listening), an ssl
endpoint's key and certificate files read and parsed, systemd's
arguments; each problem names the field path and the file, never a
traceback at start.
"""

from __future__ import annotations

import subprocess

import pytest
import trustme

from heimdall.config.fields import parse_endpoint
from heimdall.config.model import parse_config
from heimdall.errors import ConfigError
from tests.processes import TWISTD
from tests.tlsutil import write_cert


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pem")
    files = write_cert(trustme.CA(), directory, "leaf", "localhost")
    garbage = directory / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    return files, str(garbage), str(directory / "missing.pem")


def test_an_ssl_endpoint_with_readable_files_is_valid(pem):
    files, _, _ = pem
    value = f"ssl:0:privateKey={files.key}:certKey={files.cert}:interface=127.0.0.1"
    assert parse_endpoint(value) == value


@pytest.mark.parametrize(
    "value, problem",
    [
        ("tcp:80:backlog=x", "not a usable tcp endpoint: invalid literal for int() with base 10: 'x'"),
        ("tcp:80:colour=red", "not a usable tcp endpoint: _parseTCP() got an unexpected keyword argument 'colour'"),
        ("unix:/run/h.sock:mode=rw", "not a usable unix endpoint: invalid literal for int() with base 8: 'rw'"),
        ("systemd:domain=INET", "a systemd endpoint needs exactly one of index= and name="),
        ("systemd:domain=INET:index=0:name=web", "a systemd endpoint needs exactly one of index= and name="),
        ("systemd:domain=IPX:index=0", "a systemd endpoint's domain must be one of INET, INET6, UNIX"),
        ("systemd:domain=INET:index=first", "a systemd endpoint's index must be a number, not 'first'"),
        ("systemd:INET:0", "a systemd endpoint takes domain= and index= or name="),
        ("ssl:8443", "ssl certKey: cannot read server.pem: No such file or directory"),
    ],
)
def test_endpoint_arguments_twisted_would_reject(value, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no server.pem here
    with pytest.raises(ValueError) as caught:
        parse_endpoint(value)
    assert str(caught.value).startswith(problem)


def test_ssl_files_that_are_missing_or_not_pem_are_named(pem):
    files, garbage, missing = pem
    cases = [
        (f"ssl:8443:privateKey={files.key}:certKey={missing}", f"ssl certKey: cannot read {missing}"),
        (f"ssl:8443:privateKey={missing}:certKey={files.cert}", f"ssl privateKey: cannot read {missing}"),
        (f"ssl:8443:privateKey={files.key}:certKey={garbage}", f"ssl certKey: {garbage} holds no PEM certificate"),
        (f"ssl:8443:privateKey={garbage}:certKey={files.cert}", f"ssl privateKey: {garbage} holds no usable PEM"),
        # certKey defaults to the key's file, which holds no certificate.
        (f"ssl:8443:privateKey={files.key}", f"ssl certKey: {files.key} holds no PEM certificate"),
    ]
    for value, problem in cases:
        with pytest.raises(ConfigError) as caught:
            parse_config({"manager": {"listen": value}})
        assert caught.value.path == "manager.listen"
        assert caught.value.problem.startswith(problem), caught.value.problem


def test_twistd_refuses_an_ssl_listen_without_its_files_in_one_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"listen": "ssl:8443", "spawn": 0}')
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "heimdall", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "listen: ssl certKey: cannot read server.pem: No such file or directory" in output
    assert "Traceback" not in output
