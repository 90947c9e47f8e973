"""
Certificates made by the tests (trustme) and a blocking TLS client (Python's
ssl module) to run in a thread while the reactor serves.
"""

from __future__ import annotations

import socket
import ssl
from typing import List, Optional, Sequence

import attrs
import trustme


@attrs.frozen
class CertFiles:
    cert: str
    key: str
    names: tuple


def write_cert(ca: trustme.CA, directory, stem: str, *names: str, **options) -> CertFiles:
    """
    A leaf certificate for C{names} signed by C{ca}, as PEM files in
    C{directory} (the certificate file carries the chain after the leaf).
    """
    leaf = ca.issue_cert(*names, **options)
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}-key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_path.write_bytes(leaf.private_key_pem.bytes())
    return CertFiles(str(cert_path), str(key_path), names)


def write_ca(ca: trustme.CA, directory, stem: str = "ca") -> str:
    path = directory / f"{stem}.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return str(path)


@attrs.frozen
class TlsAnswer:
    names: tuple  # the peer certificate's DNS names
    version: str
    alpn: Optional[str]
    response: bytes


def client_context(ca_path: str, alpn: Sequence[str] = (), maximum=None, check_hostname=True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_path)
    context.check_hostname = check_hostname
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if maximum is not None:
        context.maximum_version = maximum
    return context


def tls_request(
    port: int,
    context: ssl.SSLContext,
    server_name: Optional[str],
    request: Optional[bytes] = None,
    timeout: float = 10.0,
) -> TlsAnswer:
    """
    Connect to 127.0.0.1:C{port}, handshake (sending C{server_name} by SNI,
    none if None), send C{request} and read until the server closes.
    Blocking: run it in a thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            names = tuple(value for kind, value in tls.getpeercert().get("subjectAltName", ()) if kind == "DNS")
            version, alpn = tls.version(), tls.selected_alpn_protocol()
            chunks: List[bytes] = []
            if request is not None:
                tls.sendall(request)
                while True:
                    data = tls.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
            return TlsAnswer(names, version, alpn, b"".join(chunks))
