"""TLS and mutual-TLS credentials of the gRPC server and client, and the rule for when plain text is allowed."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """Certificates missing or inconsistent, or plain text asked where it is not allowed; says what to pass."""


@dataclass(frozen=True)
class ServerTls:
    cert: str  # PEM certificate chain of the server
    key: str  # PEM private key of the server
    client_ca: str | None = None  # PEM CA bundle: clients must present a certificate it signed (mutual TLS)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


def _read(path: str | Path, what: str, flag: str) -> bytes:
    file = Path(path)
    if not file.is_file():
        raise TlsConfigError(f"{what} not found: {path} (pass {flag} PATH to a PEM file)")
    return file.read_bytes()


def server_tls_from_flags(cert: str | None, key: str | None, client_ca: str | None) -> ServerTls | None:
    """The server's TLS setup from its flags; None means plain text (checked by `check_plaintext_allowed`)."""
    if not cert and not key:
        if client_ca:
            raise TlsConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key for the server")
        return None
    if not (cert and key):
        raise TlsConfigError("TLS needs both --tls-cert and --tls-key")
    return ServerTls(cert=cert, key=key, client_ca=client_ca or None)


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    key = _read(tls.key, "TLS key", "--tls-key")
    cert = _read(tls.cert, "TLS certificate", "--tls-cert")
    ca = _read(tls.client_ca, "client CA", "--tls-client-ca") if tls.client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(ca: str | None, cert: str | None = None, key: str | None = None) -> grpc.ChannelCredentials:
    """Client credentials: `ca` verifies the server (None: system roots); cert+key authenticate us (mTLS)."""
    if bool(cert) != bool(key):
        raise TlsConfigError("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate", "--tls-ca") if ca else None,
        private_key=_read(key, "TLS key", "--tls-key") if key else None,
        certificate_chain=_read(cert, "TLS certificate", "--tls-cert") if cert else None,
    )


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_plaintext_allowed(host: str, tls: ServerTls | None, authenticated: bool, insecure: bool) -> None:
    """Listening beyond loopback needs TLS and some client authentication (tokens or mTLS), unless --insecure.

    Loopback stays plain text by default: only processes of this machine can connect, and the demo, the CLI
    and the tests need no certificates.
    """
    if insecure or is_loopback(host):
        return
    if tls is None:
        raise TlsConfigError(
            f"refusing to serve plain text on {host}, a non-loopback address: pass --tls-cert and --tls-key "
            f"(and --tls-client-ca for mutual TLS), or --insecure if a trusted proxy terminates TLS")
    if not (authenticated or tls.mutual):
        raise TlsConfigError(
            f"refusing to serve {host} to unauthenticated clients: pass --auth-tokens-file (or set "
            f"CBMIR_AUTH_TOKENS) or --tls-client-ca for mutual TLS, or --insecure to accept anyone")
