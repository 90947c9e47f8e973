"""
How heimdall reaches a backend: one client endpoint per backend, TCP (by
address or host name) and, for an C{https://} backend, TLS over it.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from heimdall.pool.values import Backend

__all__ = ["backend_endpoint"]


def backend_endpoint(reactor: Any, backend: Backend, connect_timeout: float, tls_creator: Optional[Any] = None) -> Any:
    """
    The client endpoint for C{backend}.

    @param tls_creator: for an C{https} backend, the
        C{IOpenSSLClientConnectionCreator} to use; by default the host is
        verified against the system's trust store.
    """
    from twisted.internet import endpoints

    try:
        ip = ipaddress.ip_address(backend.host)
    except ValueError:
        ip = None
    if ip is None:
        kind = endpoints.HostnameEndpoint
    elif ip.version == 4:
        kind = endpoints.TCP4ClientEndpoint
    else:
        kind = endpoints.TCP6ClientEndpoint
    endpoint = kind(reactor, backend.host, backend.port, timeout=connect_timeout)
    if backend.scheme == "https":
        if tls_creator is None:
            from twisted.internet.ssl import optionsForClientTLS

            tls_creator = optionsForClientTLS(backend.host)
        endpoint = endpoints.wrapClientTLS(tls_creator, endpoint)
    return endpoint
