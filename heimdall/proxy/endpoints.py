"""
How heimdall reaches a backend: one client endpoint per backend, TCP (by
address or host name) and, for an C{https://} backend, TLS over it
(L{TlsClientEndpoint}), whose connection counts as made only once the
handshake is done: a rejected certificate is a connect failure, not a
broken response.
"""

from __future__ import annotations

import ipaddress
from typing import Any, List, Optional

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from heimdall.errors import BackendTlsError
from heimdall.pool.values import Backend

__all__ = ["TlsClientEndpoint", "backend_endpoint", "describe_tls_failure"]


def backend_endpoint(reactor: Any, backend: Backend, connect_timeout: float, tls: Optional[Any] = None) -> Any:
    """
    The client endpoint for C{backend}.

    @param tls: for an C{https} backend, the L{heimdall.interfaces.IBackendTls}
        that gives its TLS settings; without it, the host is verified
        against the system's trust store.
    @param connect_timeout: for the TCP connection, and again for the TLS
        handshake (as nginx's C{proxy_connect_timeout}).
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
        if tls is not None:
            creator = tls.creator_for(backend)
        else:
            from twisted.internet.ssl import optionsForClientTLS

            creator = optionsForClientTLS(backend.host)
        endpoint = TlsClientEndpoint(reactor, endpoint, creator, connect_timeout)
    return endpoint


def describe_tls_failure(reason: Any) -> str:
    """
    Why a handshake failed, from the reason its connection was lost: a
    rejected certificate's own words, OpenSSL's reasons (C{tlsv1 alert
    unknown ca}), or the connection closing.
    """
    value = reason.value
    if isinstance(value, SSL.Error):
        parts = [item[-1] for item in (value.args[0] if value.args else []) if isinstance(item, tuple) and item]
        return "; ".join(str(part) for part in parts) or "TLS error"
    if isinstance(value, (error.ConnectionDone, error.ConnectionLost)):
        return "the backend closed the connection"
    return str(value) or type(value).__name__


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    """
    The TLS layer's protocol until the handshake is done; then it hands
    the TLS transport to the real protocol and steps aside (no extra call
    per byte afterwards).
    """

    def __init__(self, inner: Protocol, result: defer.Deferred, reactor: Any, timeout: Optional[float]) -> None:
        self.inner = inner
        self.result = result
        self.reactor = reactor
        self.timeout = timeout
        self.timer = None
        self.timed_out = False

    def connectionMade(self) -> None:
        # Before the handshake, so that its flights are not delayed either.
        tcp = getattr(self.transport, "transport", None)
        if hasattr(tcp, "setTcpNoDelay"):
            tcp.setTcpNoDelay(True)
        if self.timeout is not None:
            self.timer = self.reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        self.timed_out = True
        self.transport.abortConnection()

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def handshakeCompleted(self) -> None:
        self._stop_timer()
        tls = self.transport
        if tls.disconnecting or self.result.called:
            return  # a certificate was rejected: connectionLost says why
        tls.wrappedProtocol = self.inner
        self.inner.makeConnection(tls)
        self.result.callback(self.inner)

    def connectionLost(self, reason: Any) -> None:
        self._stop_timer()
        if self.result.called:
            return
        if self.timed_out:
            detail = f"no handshake within {self.timeout:g}s"
        else:
            detail = describe_tls_failure(reason)
        self.result.errback(BackendTlsError(f"TLS handshake failed: {detail}"))


class _HandshakeFactory(Factory):
    noisy = False

    def __init__(self, wrapped: Factory, build) -> None:
        self.wrapped = wrapped
        self.build = build

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.build(self.wrapped.buildProtocol(addr))

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()


@implementer(IStreamClientEndpoint)
@attrs.frozen
class TlsClientEndpoint:
    """
    TLS over C{tcp} (an L{IStreamClientEndpoint}) with C{creator} (an
    C{IOpenSSLClientConnectionCreator}).  L{connect} fires with the
    factory's protocol once the handshake is done, and fails with a
    L{BackendTlsError} saying why if it is not (within C{timeout} seconds
    after the TCP connection, when given).  Cancelling it closes the
    connection.
    """

    reactor: Any
    tcp: Any
    creator: Any
    timeout: Optional[float] = None

    def connect(self, factory: Factory) -> defer.Deferred:
        handshakes: List[_Handshake] = []

        def cancel(_: defer.Deferred) -> None:
            if not connecting.called:
                connecting.cancel()
            elif handshakes and handshakes[0].transport is not None:
                handshakes[0]._stop_timer()
                handshakes[0].transport.abortConnection()

        result: defer.Deferred = defer.Deferred(cancel)

        def build(inner: Protocol) -> Protocol:
            handshake = _Handshake(inner, result, self.reactor, self.timeout)
            handshakes.append(handshake)
            return handshake

        def failed(failure: Any) -> None:
            if not result.called:
                result.errback(failure)

        tls_factory = TLSMemoryBIOFactory(self.creator, True, _HandshakeFactory(factory, build), clock=self.reactor)
        connecting = self.tcp.connect(tls_factory)
        connecting.addErrback(failed)
        return result
