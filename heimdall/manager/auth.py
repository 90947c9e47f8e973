"""
Who may use the manager: its bearer token (from the config or the
environment), the check of a presented token, and the refusal to run a
manager that anyone on the network could reach without one.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from heimdall.config.fields import endpoint_fields
from heimdall.errors import ConfigError, NotAuthenticated

__all__ = ["authenticate", "check_exposure", "listens_on_loopback", "resolve_token"]


def resolve_token(manager_config: Any, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """
    The bearer token the manager requires: C{manager.token}, or the value
    of the environment variable C{manager.token_env}, or None.

    @raise ConfigError: C{token_env} names a variable that is not set or
        is empty.
    """
    if manager_config.token is not None:
        return manager_config.token
    if manager_config.token_env is None:
        return None
    environ = os.environ if environ is None else environ
    value = environ.get(manager_config.token_env, "")
    if not value:
        raise ConfigError(
            "manager.token_env",
            f"the environment variable {manager_config.token_env} is not set or is empty",
        )
    return value


def authenticate(authorization: Optional[bytes], token: Optional[str]) -> bool:
    """
    Check a request's C{Authorization} header against the manager's token:
    True when it carries the token, False when no token is configured.

    @raise NotAuthenticated: a token is configured and the header is
        missing, not C{Bearer}, or carries another token.
    """
    if token is None:
        return False
    if authorization is None:
        raise NotAuthenticated("a bearer token is required")
    scheme, _, presented = authorization.decode("latin-1").strip().partition(" ")
    # Constant time: the comparison tells an attacker nothing.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode("utf-8", "replace"), token.encode("utf-8")
    ):
        raise NotAuthenticated("invalid bearer token")
    return True


def _split_endpoint(description: str) -> Tuple[List[str], Dict[str, str]]:
    positional: List[str] = []
    named: Dict[str, str] = {}
    for key, value in endpoint_fields(description):
        if key is None:
            positional.append(value)
        else:
            named[key] = value
    return positional, named


def listens_on_loopback(endpoint: str) -> bool:
    """
    Whether a server endpoint string only accepts connections from this
    machine: a TCP/SSL endpoint whose interface is a loopback address (or
    C{localhost}), or a UNIX socket.  No interface means every interface.
    """
    positional, named = _split_endpoint(endpoint)
    kind = positional[0] if positional else ""
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False  # systemd and others: cannot tell, so assume exposed
    interface = named.get("interface")
    if interface is None:
        # tcp:PORT:INTERFACE is also accepted positionally (port first).
        interface = positional[2] if len(positional) > 2 else ""
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(manager_config: Any, token: Optional[str]) -> None:
    """
    Refuse a manager that anyone on the network could reach without a
    token.

    @raise ConfigError: naming C{manager.listen} and saying why.
    """
    if token is None and not listens_on_loopback(manager_config.listen):
        raise ConfigError(
            "manager.listen",
            f"{manager_config.listen} is not a loopback address, and no manager.token or "
            "manager.token_env is set: anyone who can reach it could change the backends. "
            "Set a token, or listen on 127.0.0.1",
        )
