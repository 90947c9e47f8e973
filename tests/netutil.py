"""
Small socket and process helpers shared by the tests.
"""

from __future__ import annotations

import os
import socket

import pytest


def free_port() -> int:
    """
    A loopback port nothing listens on now (bound, then closed: a connect to
    it is refused until somebody else takes it).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie (this sandbox's PID 1
    may not reap orphans, so an exited orphan can linger as a zombie).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def require(available: bool, what: str) -> None:
    """
    Skip a test whose tool is missing, except under `make test`
    (HEIMDALL_TEST_STRICT=1), which installs every tool: there a missing
    one is an install bug, and a skip would hide it.
    """
    if available:
        return
    if os.environ.get("HEIMDALL_TEST_STRICT"):
        pytest.fail(f"{what} is missing, though `make test` installs it")
    pytest.skip(f"{what} is not installed (run `make test`)")
