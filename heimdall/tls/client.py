"""
TLS to C{https://} backends: the C{tls} settings of backends and services
(L{heimdall.config.tls.BackendTlsConfig}) read and checked once, and one
L{BackendTls} per service that gives each backend its connection creator
(L{heimdall.interfaces.IBackendTls}), for the upstream connections and the
health probes alike.

  - Files: C{ca} is a PEM file of trusted certificates (instead of the
    system's trust store); C{cert}/C{key} a client certificate (with its
    intermediates after it) and its unencrypted key.  Each is read at
    start (L{load_backend_tls}, called by heimdall's preflight): an
    unreadable file, no certificate or key in it, or a key that does not
    match, refuses the start with the field and the file named.
  - Levels: a backend's keys override its service's key by key (C{cert}
    and C{key} as a pair).  Backends added at runtime (the manager API)
    take their service's settings, or those of the config's backend with
    the same host:port.
  - Verification: the chain against the trust roots, then the name
    (C{server_name}, else the URL's host: a DNS name or an IP address in
    the certificate's subject alternative names, via C{service_identity},
    as Twisted's own client does).  A rejection ends the handshake with a
    reason that says why (C{certificate verify failed: unable to get local
    issuer certificate}, C{certificate is for other.example, not
    internal.example}).  C{verify: false} skips both and is logged as a
    warning naming the backend.
  - One OpenSSL context per service and per backend with settings of its
    own (the system's trust store is loaded once per service, not per
    backend or connection); one creator per backend, built once.
    The system trust store is OpenSSL's default paths, which pyOpenSSL
    falls back to Debian's C{/etc/ssl/certs} for.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any, Dict, Mapping, Optional, Tuple

import attrs
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from heimdall.config.model import Config
from heimdall.config.services import DEFAULT_SERVICE, service_configs
from heimdall.config.tls import BackendTlsConfig
from heimdall.interfaces import IBackendTls
from heimdall.pool.values import Backend
from heimdall.tls.certificates import (
    LoadedCertificate,
    certificate_names,
    load_certificate,
    load_pem_certificates,
    use,
    use_certificate,
)

__all__ = ["BackendTls", "ClientTlsSettings", "load_backend_tls", "load_settings", "verify_error_text"]

_log = Logger()


def verify_error_text(code: int) -> str:
    """
    OpenSSL's words for an X509 verification error code (C{20}: C{unable
    to get local issuer certificate}).
    """
    try:
        from cryptography.hazmat.bindings.openssl.binding import Binding

        lib, ffi = Binding.lib, Binding.ffi
        return ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
    except Exception:  # a cryptography without the binding: the number still says it
        return f"X509 verify error {code}"


class _Rejected(Exception):
    """The certificate was rejected; the message says why."""


@attrs.frozen
class ClientTlsSettings:
    """
    One level's C{tls} (a backend's or a service's) with its files read;
    L{None} leaves a setting to the level below (L{over}), then to the
    default (verify, the system's trust store, the URL's host, no client
    certificate).

    @ivar source: the field path of its config entry, for messages.
    @ivar trust: the C{ca} file's certificates.
    """

    source: str
    verify: Optional[bool] = None
    server_name: Optional[str] = None
    trust: Optional[Tuple[x509.Certificate, ...]] = attrs.field(default=None, repr=False)
    client: Optional[LoadedCertificate] = attrs.field(default=None, repr=False)

    @property
    def verifies(self) -> bool:
        return self.verify is not False

    def over(self, base: "ClientTlsSettings") -> "ClientTlsSettings":
        """These settings, with what they leave out taken from C{base}."""
        return ClientTlsSettings(
            self.source,
            self.verify if self.verify is not None else base.verify,
            self.server_name if self.server_name is not None else base.server_name,
            self.trust if self.trust is not None else base.trust,
            self.client if self.client is not None else base.client,
        )


def load_settings(config: Optional[BackendTlsConfig], source: str, now: datetime.datetime) -> ClientTlsSettings:
    """
    Read the files of C{config} (C{source} is its field path, such as
    C{services.api.backends[0].tls}).

    @raise heimdall.errors.ConfigError: naming the field and the file.
    """
    if config is None:
        return ClientTlsSettings(source)
    trust = tuple(load_pem_certificates(config.ca, f"{source}.ca")) if config.ca is not None else None
    client = None
    if config.cert is not None:
        client = load_certificate(config.cert, config.key, None, source, now)
        if client.expired:
            _log.warn(
                "client certificate {path} ({source}.cert) expired on {when} UTC; sending it anyway",
                path=config.cert,
                source=source,
                when=f"{client.not_after:%Y-%m-%d %H:%M:%S}",
            )
    return ClientTlsSettings(source, config.verify, config.server_name, trust, client)


def _context(settings: ClientTlsSettings) -> SSL.Context:
    from OpenSSL import crypto

    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION)
    if settings.trust is not None:
        store = context.get_cert_store()
        for certificate in settings.trust:
            use(store.add_cert, certificate, crypto.X509.from_cryptography)
    elif settings.verifies:
        context.set_default_verify_paths()
    if settings.client is not None:
        use_certificate(context, settings.client)
    return context


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _name_problem(certificate: Any, name: str, is_ip: bool) -> Optional[str]:
    from service_identity import VerificationError
    from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
    from service_identity.pyopenssl import extract_patterns

    try:
        verify_service_identity(extract_patterns(certificate), [IPAddress_ID(name) if is_ip else DNS_ID(name)], [])
    except VerificationError:
        names = ", ".join(certificate_names(certificate.to_cryptography())) or "no name"
        return f"certificate verify failed: it is for {names}, not {name}"
    return None


@implementer(IOpenSSLClientConnectionCreator)
@attrs.frozen
class _Creator:
    """
    Connections for one backend: its context, the name it sends by SNI
    (a DNS name only, as RFC 6066 says) and verifies.
    """

    context: SSL.Context
    name: str
    verify: bool
    # Worked out once per backend, not per connection.
    is_ip: bool = attrs.field(init=False)

    @is_ip.default
    def _is_ip_default(self) -> bool:
        return _is_ip(self.name)

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        if not self.is_ip:
            connection.set_tlsext_host_name(self.name.encode("idna"))
        if self.verify:
            connection.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verifier(tls_protocol, self.name, self.is_ip)
            )
        else:
            connection.set_verify(SSL.VERIFY_NONE)
        connection.set_connect_state()
        return connection


def _verifier(tls_protocol: Any, name: str, is_ip: bool):
    """
    OpenSSL's verify callback for one connection: the chain's verdict,
    then the name on the leaf; a rejection fails the connection with the
    reason (as Twisted's own client does, through C{failVerification}).
    """
    rejected = [False]

    def verify(connection: Any, certificate: Any, code: int, depth: int, ok: int) -> bool:
        if rejected[0]:
            return False
        if not ok:
            problem = f"certificate verify failed: {verify_error_text(code)}"
        elif depth == 0:
            problem = _name_problem(certificate, name, is_ip)
        else:
            problem = None
        if problem is None:
            return True
        rejected[0] = True
        tls_protocol.failVerification(Failure(_Rejected(problem)))
        return False

    return verify


@implementer(IBackendTls)
@attrs.define(eq=False)
class BackendTls:
    """
    The TLS settings of one service's backends, read once: C{default} (the
    service's own C{tls}, or the defaults) and C{by_backend} (backend id to
    the settings of a config backend with a C{tls} of its own, over the
    service's).  L{creator_for} builds a backend's creator on first use
    and keeps it; the backends on the service's settings share one context.
    """

    service: str = DEFAULT_SERVICE
    default: ClientTlsSettings = attrs.field(factory=lambda: ClientTlsSettings("tls"))
    by_backend: Mapping[str, ClientTlsSettings] = attrs.field(factory=dict)
    _creators: Dict[str, _Creator] = attrs.field(factory=dict, init=False)
    _contexts: Dict[int, SSL.Context] = attrs.field(factory=dict, init=False)

    def settings_for(self, backend: Backend) -> ClientTlsSettings:
        return self.by_backend.get(backend.id, self.default)

    def creator_for(self, backend: Backend) -> _Creator:
        creator = self._creators.get(backend.id)
        if creator is None:
            settings = self.settings_for(backend)
            # Keyed by identity: the settings objects live as long as this.
            context = self._contexts.get(id(settings))
            if context is None:
                context = self._contexts[id(settings)] = _context(settings)
            creator = _Creator(context, settings.server_name or backend.host, settings.verifies)
            self._creators[backend.id] = creator
            if not settings.verifies:
                _log.warn(
                    "TLS to backend {url} (service {service}) is not verified: {source}.verify is false",
                    url=backend.url,
                    service=self.service,
                    source=settings.source,
                )
        return creator


def _service_paths(config: Config, name: str) -> Tuple[str, str]:
    """Where a service's C{tls} and its backends are in the config file."""
    explicit = config.services.get(name)
    backends = f"services.{name}.backends" if explicit is not None and explicit.backends else "backends"
    return f"services.{name}.tls", backends


def load_backend_tls(config: Config, now: Optional[datetime.datetime] = None) -> Dict[str, BackendTls]:
    """
    Every service's L{BackendTls}, by service name, with every file read
    and checked, and the creators of the config's https backends built
    (an unverified one is logged as a warning now, at start).

    @raise heimdall.errors.ConfigError: naming the field and the file.
    """
    now = now if now is not None else datetime.datetime.now(datetime.timezone.utc)
    result = {}
    for name, settings in service_configs(config).items():
        service_path, backends_path = _service_paths(config, name)
        default = load_settings(settings.tls, service_path, now)
        by_backend = {}
        for index, entry in enumerate(settings.backends):
            if entry.tls is not None:
                own = load_settings(entry.tls, f"{backends_path}[{index}].tls", now)
                by_backend[entry.backend.id] = own.over(default)
        tls = BackendTls(name, default, by_backend)
        for entry in settings.backends:
            if entry.backend.scheme == "https":
                tls.creator_for(entry.backend)
        result[name] = tls
    return result
