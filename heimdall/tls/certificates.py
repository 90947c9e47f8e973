"""
Reading and checking certificates: PEM files in, L{LoadedCertificate}s out,
or a L{ConfigError} that names the field and the file.

Checked: each file can be read and holds what it should (a certificate, a
private key), the key belongs to the certificate, and the certificate has
not expired (an expired one is a warning unless C{allow_expired} is false,
as nginx does).  The names a certificate serves are its DNS subject
alternative names (wildcards such as C{*.example.com} included), or its
common name when it has none.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, List, Optional, Tuple

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from heimdall.errors import ConfigError

__all__ = [
    "LoadedCertificate",
    "certificate_names",
    "load_certificate",
    "load_key",
    "load_pem_certificates",
    "use",
    "use_certificate",
]


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(field, f"cannot read {path}: {e.strerror or e}") from None


def load_pem_certificates(path: str, field: str) -> List[x509.Certificate]:
    """
    The certificates in the PEM file at C{path}, at least one.
    """
    data = _read(path, field)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(field, f"{path} holds no PEM certificate")
    return certificates


def load_key(path: str, field: str) -> Any:
    """
    The private key in the PEM file at C{path} (not encrypted).
    """
    data = _read(path, field)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(field, f"{path} holds an encrypted private key; heimdall needs it unencrypted") from None
    except Exception as e:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise ConfigError(field, f"{path} holds no usable PEM private key ({e})") from None


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _not_after(certificate: x509.Certificate) -> datetime.datetime:
    after = getattr(certificate, "not_valid_after_utc", None)
    if after is None:  # cryptography < 42
        after = certificate.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return after


def certificate_names(certificate: x509.Certificate) -> Tuple[str, ...]:
    """
    The DNS names C{certificate} is for, lower-cased: its subject
    alternative names, or its common name if it has none.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [
            attribute.value
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if isinstance(attribute.value, str)
        ]
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in names))


@attrs.frozen
class LoadedCertificate:
    """
    A checked certificate with its key and intermediates.

    @ivar source: the field path of its config entry (for messages).
    @ivar names: what it serves (see L{certificate_names}).
    @ivar expired: whether it had expired when it was loaded.
    """

    source: str
    cert_path: str
    certificate: x509.Certificate = attrs.field(repr=False)
    key: Any = attrs.field(repr=False)
    chain: Tuple[x509.Certificate, ...] = attrs.field(repr=False)
    names: Tuple[str, ...]
    not_after: datetime.datetime
    expired: bool


def load_certificate(
    cert_path: str,
    key_path: str,
    chain_path: Optional[str],
    source: str,
    now: datetime.datetime,
    allow_expired: bool = True,
) -> LoadedCertificate:
    """
    Read and check one certificate entry (C{source} is its field path, like
    C{tls.certificates[0]}).  Intermediates may follow the certificate in
    its own file, or come from C{chain_path}.

    @raise ConfigError: naming the field and the file.
    """
    certificates = load_pem_certificates(cert_path, f"{source}.cert")
    certificate, chain = certificates[0], list(certificates[1:])
    if chain_path is not None:
        chain += load_pem_certificates(chain_path, f"{source}.chain")
    key = load_key(key_path, f"{source}.key")
    if _public_der(key.public_key()) != _public_der(certificate.public_key()):
        raise ConfigError(f"{source}.key", f"{key_path} does not match the certificate in {cert_path}")
    not_after = _not_after(certificate)
    expired = not_after <= now
    if expired and not allow_expired:
        raise ConfigError(
            f"{source}.cert", f"{cert_path} expired on {not_after:%Y-%m-%d %H:%M:%S} UTC (allow_expired is false)"
        )
    names = certificate_names(certificate)
    return LoadedCertificate(source, cert_path, certificate, key, tuple(chain), names, not_after, expired)


def use(setter: Callable[[Any], None], value: Any, legacy: Callable[[Any], Any]) -> None:
    """
    Give an OpenSSL context a cryptography object (a certificate, a key):
    pyOpenSSL >= 24.3 takes cryptography's objects, older ones (PyPy's)
    want theirs, made by C{legacy}.
    """
    try:
        setter(value)
    except TypeError:
        setter(legacy(value))


def use_certificate(context: Any, certificate: LoadedCertificate) -> None:
    """
    Give an OpenSSL context C{certificate} with its key and intermediates
    (a server's certificate, or a client certificate for mutual TLS).
    """
    from OpenSSL import crypto

    use(context.use_certificate, certificate.certificate, crypto.X509.from_cryptography)
    use(context.use_privatekey, certificate.key, crypto.PKey.from_cryptography_key)
    for intermediate in certificate.chain:
        use(context.add_extra_chain_cert, intermediate, crypto.X509.from_cryptography)
    context.check_privatekey()
