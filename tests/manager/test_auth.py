"""
Who may use the manager: the token from the config or the environment,
the check of a presented token, and the refusal of an exposed manager
without one.
"""

from __future__ import annotations

import pytest

from heimdall.config.model import ManagerConfig
from heimdall.errors import ConfigError, NotAuthenticated
from heimdall.manager.auth import authenticate, check_exposure, listens_on_loopback, resolve_token


def test_authenticate_without_a_token_lets_everyone_in_unauthenticated():
    assert authenticate(None, None) is False
    assert authenticate(b"Bearer anything", None) is False


@pytest.mark.parametrize(
    "header, message",
    [
        (None, "a bearer token is required"),
        (b"Bearer wrong", "invalid bearer token"),
        (b"Basic s3cret", "invalid bearer token"),
        (b"Bearer", "invalid bearer token"),
    ],
)
def test_authenticate_refuses_a_missing_or_wrong_token(header, message):
    with pytest.raises(NotAuthenticated) as caught:
        authenticate(header, "s3cret")
    assert caught.value.message == message and caught.value.detail is None


def test_authenticate_accepts_the_token_in_any_case_of_bearer():
    assert authenticate(b"Bearer s3cret", "s3cret") is True
    assert authenticate(b"  bearer   s3cret ", "s3cret") is True


def test_resolve_token_and_exposure():
    assert resolve_token(ManagerConfig()) is None
    assert resolve_token(ManagerConfig(token="t")) == "t"
    assert resolve_token(ManagerConfig(token_env="HT"), {"HT": "from-env"}) == "from-env"
    with pytest.raises(ConfigError, match="HT is not set or is empty"):
        resolve_token(ManagerConfig(token_env="HT"), {})
    check_exposure(ManagerConfig(), None)
    check_exposure(ManagerConfig(listen="tcp:9090:interface=0.0.0.0"), "t")
    with pytest.raises(ConfigError, match="is not a loopback address"):
        check_exposure(ManagerConfig(listen="tcp:9090:interface=0.0.0.0"), None)


@pytest.mark.parametrize(
    "endpoint, loopback",
    [
        ("tcp:9090:interface=127.0.0.1", True),
        ("tcp:9090:interface=127.0.0.2", True),
        ("tcp:9090:interface=localhost", True),
        ("tcp6:9090:interface=\\:\\:1", True),
        ("tcp:9090:127.0.0.1", True),
        ("unix:/run/heimdall.sock", True),
        ("tcp:9090", False),
        ("tcp:9090:interface=0.0.0.0", False),
        ("tcp:9090:interface=10.1.2.3", False),
        ("tcp6:9090", False),
        ("systemd:domain=INET:index=0", False),
    ],
)
def test_listens_on_loopback(endpoint, loopback):
    assert listens_on_loopback(endpoint) is loopback


