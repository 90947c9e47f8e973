"""
TLS: certificates (L{heimdall.tls.certificates}: loading and checks, names
and wildcards), termination with SNI and ALPN (L{heimdall.tls.server}).
"""
