"""
The C{tls} section (TLS termination, a second listening port with
certificates chosen by SNI) and the C{tls} of a backend or a service
(L{BackendTlsConfig}: TLS to C{https://} backends).

Only the shape is checked here; the files are read and checked (readable,
a key that matches its certificate, not expired) when heimdall starts, by
L{heimdall.tls.certificates} (and L{heimdall.tls.client} for the backends'
files), with errors that name the field and the file.
"""

from __future__ import annotations

from typing import Optional, Tuple

import attrs

from heimdall.config.fields import (
    boolean,
    endpoint,
    endpoint_fields,
    endpoint_from_port,
    instance_of,
    one_of,
    optional_text,
    text,
    tuple_from_list,
    validator,
)
from heimdall.config.reader import FROM_JSON, read_list, structure
from heimdall.errors import ConfigError

__all__ = ["BackendTlsConfig", "CertificateConfig", "TLS_VERSIONS", "TlsConfig", "backend_tls_field"]

#: The TLS versions C{min_version} may name.
TLS_VERSIONS = ("1.2", "1.3")


def _listen(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str) and endpoint_fields(value)[0][1] == "ssl":
        return 'must be a plain endpoint like "tcp:8443:interface=0.0.0.0": heimdall does the TLS itself'
    return endpoint(value)


@attrs.frozen
class CertificateConfig:
    """
    One certificate of the TLS port: PEM files, the certificate (which may
    carry its intermediates after it), its private key, and optionally a
    separate file of intermediate certificates.  Relative paths are read
    from heimdall's working directory.
    """

    cert: str = attrs.field(validator=validator(text))
    key: str = attrs.field(validator=validator(text))
    chain: Optional[str] = attrs.field(default=None, validator=validator(optional_text))


def _check_certificates(instance, attribute, value) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, "must be a list of certificates")
    for index, item in enumerate(value):
        if not isinstance(item, CertificateConfig):
            raise ConfigError(f"{attribute.name}[{index}]", "must be a CertificateConfig")


def _parse_certificates(data: object, path: str) -> Tuple[CertificateConfig, ...]:
    items = read_list(data, path, 'must be a list of objects like {"cert": "cert.pem", "key": "key.pem"}')
    return tuple(structure(CertificateConfig, item, f"{path}[{index}]") for index, item in enumerate(items))


@attrs.frozen
class TlsConfig:
    """
    TLS termination.  Off unless C{listen} is set.

    @ivar listen: the TLS port's endpoint (beside the plain C{listen}).
    @ivar certificates: the certificates; each client gets the one whose
        names (subject alternative names, wildcards included) match its
        SNI name, and the first one without SNI or for an unknown name.
    @ivar min_version: the oldest TLS version accepted, C{"1.2"} or C{"1.3"}.
    @ivar http2: offer HTTP/2 by ALPN (clients that do not ask get HTTP/1.1).
    @ivar allow_expired: an expired certificate is a warning at start (as
        with nginx); C{false} makes it an error.
    """

    listen: Optional[str] = attrs.field(default=None, converter=endpoint_from_port, validator=validator(_listen))
    certificates: Tuple[CertificateConfig, ...] = attrs.field(
        default=(),
        converter=tuple_from_list,
        validator=_check_certificates,
        metadata={FROM_JSON: _parse_certificates},
    )
    min_version: str = attrs.field(default="1.2", validator=validator(one_of(*TLS_VERSIONS)))
    http2: bool = attrs.field(default=True, validator=validator(boolean))
    allow_expired: bool = attrs.field(default=True, validator=validator(boolean))

    def __attrs_post_init__(self) -> None:
        if self.listen is not None and not self.certificates:
            raise ConfigError("certificates", "at least one certificate is required when listen is set")
        if self.listen is None and self.certificates:
            raise ConfigError("listen", "is required when certificates are given")

    @property
    def enabled(self) -> bool:
        return self.listen is not None


def _server_name(value) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 253 or any(c.isspace() or c in "/:@" for c in value):
        return 'must be a host name like "internal.example" (or an IP address), or null'
    return None


def _optional_boolean(value) -> Optional[str]:
    return None if value is None else boolean(value)


@attrs.frozen
class BackendTlsConfig:
    """
    How heimdall talks TLS to C{https://} backends: the C{tls} of a
    backend, or of a service (for all its https backends, those added at
    runtime included).  A backend's keys override its service's key by key
    (C{cert} and C{key} as one pair); a key given at neither level takes
    the default below.

    @ivar ca: a PEM file of the certificate authorities to trust instead of
        the system's trust store.
    @ivar verify: C{false} accepts any certificate (logged as a warning at
        start); default true.
    @ivar server_name: the name sent by SNI and verified; default: the
        backend URL's host.
    @ivar cert: a client certificate (PEM, intermediates may follow it)
        for mutual TLS, with C{key}.
    @ivar key: the client certificate's private key (PEM, unencrypted).
    """

    ca: Optional[str] = attrs.field(default=None, validator=validator(optional_text))
    verify: Optional[bool] = attrs.field(default=None, validator=validator(_optional_boolean))
    server_name: Optional[str] = attrs.field(default=None, validator=validator(_server_name))
    cert: Optional[str] = attrs.field(default=None, validator=validator(optional_text))
    key: Optional[str] = attrs.field(default=None, validator=validator(optional_text))

    def __attrs_post_init__(self) -> None:
        if self.cert is not None and self.key is None:
            raise ConfigError("key", "is required with cert (the client certificate's private key)")
        if self.key is not None and self.cert is None:
            raise ConfigError("cert", "is required with key (the client certificate)")


def backend_tls_field():
    """
    The attrs field of a value that may hold a L{BackendTlsConfig}
    (L{None}: the defaults, or the service's).
    """
    return attrs.field(
        default=None,
        validator=attrs.validators.optional(validator(instance_of(BackendTlsConfig, "a BackendTlsConfig"))),
        metadata={FROM_JSON: lambda value, path: structure(BackendTlsConfig, value, path)},
    )
