"""
TLS termination: L{ServerTls} holds one OpenSSL context per certificate
and picks one per connection by SNI, with ALPN for HTTP/2.

It provides Twisted's C{IOpenSSLServerConnectionCreator}, so it goes where
Twisted takes TLS options: C{TLSMemoryBIOFactory(server_tls, False, site)}
(see L{ServerTls.wrap}).  Each new connection starts on the first
certificate's context; OpenSSL's servername callback then switches it to
the context of the certificate whose names cover the client's SNI name
(exact names before wildcards, the first certificate when none does or
the client sent no name).

L{ServerTls.reload} reads the files again and swaps the contexts in one
step: connections already open keep the context they started with, new
ones get the new certificates; on any problem the old ones stay.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attrs
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from heimdall.config.tls import TlsConfig
from heimdall.tls.certificates import LoadedCertificate, load_certificate, use_certificate

__all__ = ["ServerTls", "alpn_protocols", "load_certificates"]

_log = Logger()

_MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

# Session tickets and a session id context: returning clients resume
# instead of a full handshake.
_SESSION_ID = b"heimdall"

_NO_OVERLAP = getattr(SSL, "NO_OVERLAPPING_PROTOCOLS", b"")


def alpn_protocols(http2: bool) -> Tuple[bytes, ...]:
    """
    What the TLS port offers by ALPN, in order of preference: C{h2} when
    HTTP/2 is on and Twisted's HTTP/2 support (the C{h2} package) is there.
    """
    from heimdall.proxy.h2 import H2_ENABLED

    return (b"h2", b"http/1.1") if http2 and H2_ENABLED else (b"http/1.1",)


def load_certificates(config: TlsConfig, now: datetime.datetime, source: str = "tls") -> List[LoadedCertificate]:
    """
    Read and check every certificate of C{config}; an expired one is
    logged as a warning (or refused: C{allow_expired}).

    @raise heimdall.errors.ConfigError: naming the field and the file.
    """
    loaded = []
    for index, entry in enumerate(config.certificates):
        certificate = load_certificate(
            entry.cert, entry.key, entry.chain, f"{source}.certificates[{index}]", now, config.allow_expired
        )
        if certificate.expired:
            _log.warn(
                "TLS certificate {path} expired on {when} UTC; serving it anyway (allow_expired)",
                path=entry.cert,
                when=f"{certificate.not_after:%Y-%m-%d %H:%M:%S}",
            )
        loaded.append(certificate)
    return loaded


def _context(certificate: LoadedCertificate, min_version: str, protocols: Sequence[bytes]) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(_MIN_VERSIONS[min_version])
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.set_session_id(_SESSION_ID)
    use_certificate(context, certificate)
    offered = tuple(protocols)

    def select(connection, client_protocols):
        for protocol in offered:
            if protocol in client_protocols:
                return protocol
        return _NO_OVERLAP

    context.set_alpn_select_callback(select)
    return context


@attrs.frozen
class _Contexts:
    """
    One generation of contexts: the first certificate's (the default), and
    lookups from SNI name to context: exact names, then wildcards by the
    suffix they cover (C{*.example.com}: C{example.com}); the first
    certificate with a name wins.
    """

    certificates: Tuple[LoadedCertificate, ...]
    default: SSL.Context
    exact: Dict[str, SSL.Context]
    wildcard: Dict[str, SSL.Context]

    def for_name(self, name: Optional[str]) -> SSL.Context:
        if not name:
            return self.default
        context = self.exact.get(name)
        if context is not None:
            return context
        # A wildcard stands for exactly one leftmost label (RFC 6125 6.4.3).
        first, dot, rest = name.partition(".")
        if first and dot:
            return self.wildcard.get(rest, self.default)
        return self.default


@implementer(IOpenSSLServerConnectionCreator)
@attrs.define(eq=False)
class ServerTls:
    """
    The TLS port's certificates, chosen by SNI, re-read by L{reload}.

    @ivar config: the C{tls} section.
    @ivar seconds: the time now (Unix seconds), for the expiry check.
    """

    config: TlsConfig
    seconds: Callable[[], float] = time.time
    source: str = "tls"
    _current: Optional[_Contexts] = attrs.field(default=None, init=False)
    #: Handshakes by negotiated TLS version and ALPN protocol, for metrics.
    handshakes: Dict[Tuple[str, str], int] = attrs.field(factory=dict, init=False)
    reloads: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._current = self._build()

    @property
    def certificates(self) -> Tuple[LoadedCertificate, ...]:
        return self._current.certificates

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.seconds(), datetime.timezone.utc)

    def _build(self, config: Optional[TlsConfig] = None) -> _Contexts:
        config = config if config is not None else self.config
        certificates = tuple(load_certificates(config, self._now(), self.source))
        protocols = alpn_protocols(config.http2)
        contexts = tuple(_context(c, config.min_version, protocols) for c in certificates)
        exact: Dict[str, SSL.Context] = {}
        wildcard: Dict[str, SSL.Context] = {}
        for certificate, context in zip(certificates, contexts):
            for name in certificate.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], context)
                else:
                    exact.setdefault(name, context)
        for context in contexts:
            context.set_tlsext_servername_callback(self._servername)
            context.set_info_callback(self._info)
        return _Contexts(certificates, contexts[0], exact, wildcard)

    def reload(self, config: Optional[TlsConfig] = None) -> None:
        """
        Read the certificate files again (of C{config} when given: the
        reloaded configuration's C{tls} section) and use them for new
        connections.  Open connections are not touched.

        @raise heimdall.errors.ConfigError: naming the field and the file;
            the certificates in use stay.
        """
        contexts = self._build(config)
        if config is not None:
            self.config = config
        self._current = contexts
        self.reloads += 1
        _log.info(
            "TLS certificates reloaded: {names}",
            names="; ".join(",".join(c.names) or c.cert_path for c in contexts.certificates),
        )

    def context_for(self, name: Optional[str]) -> SSL.Context:
        """
        The context a client asking for C{name} (an SNI name, or None) gets.
        """
        if name:
            name = name.lower().rstrip(".")
        return self._current.for_name(name)

    # -- OpenSSL callbacks ---------------------------------------------------------

    def _servername(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        name = raw.decode("ascii", "replace") if raw else None
        context = self.context_for(name)
        if context is not connection.get_context():
            connection.set_context(context)

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            alpn = connection.get_alpn_proto_negotiated() or b"http/1.1"
            key = (connection.get_protocol_version_name(), alpn.decode("ascii", "replace"))
            self.handshakes[key] = self.handshakes.get(key, 0) + 1

    # -- IOpenSSLServerConnectionCreator -----------------------------------------------

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._current.default, None)

    def wrap(self, factory: Any) -> Any:
        """
        A factory serving C{factory}'s protocol over TLS with these
        certificates.
        """
        from twisted.protocols.tls import TLSMemoryBIOFactory

        wrapped = TLSMemoryBIOFactory(self, False, factory)
        wrapped.noisy = False
        return wrapped
