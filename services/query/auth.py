"""Bearer-token authentication of gRPC calls: tokens from a file or env, constant-time checks, never logged."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

TOKENS_ENV = "CBMIR_AUTH_TOKENS"
AUTH_HEADER = "authorization"
BEARER = "bearer "
# Kubernetes probes and load balancers call Health without credentials; it says SERVING or not, nothing else.
UNAUTHENTICATED_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/",)
MIN_TOKEN_LENGTH = 16


class AuthConfigError(ValueError):
    """The tokens file or env value is unusable; the message says how to fix it (never shows a token)."""


@dataclass(frozen=True)
class Caller:
    """Who made a call, as the audit log names it: a token's name, an mTLS subject, or only the peer address."""

    name: str
    peer: str
    method: str  # "token" | "mtls" | "none"


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps compare_digest's timing independent of the token's length too.
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(lines: Iterable[str], origin: str) -> dict[bytes, str]:
    """`name:token` or bare `token` lines (blank lines and # comments skipped) → {sha256(token): name}."""
    tokens: dict[bytes, str] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            name, token = f"token{number}", line
        name, token = name.strip(), token.strip()
        if len(token) < MIN_TOKEN_LENGTH:
            raise AuthConfigError(f"{origin}: token on line {number} is shorter than {MIN_TOKEN_LENGTH} characters "
                                  f"(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if not name:
            raise AuthConfigError(f"{origin}: line {number} has an empty name before ':' (use name:token)")
        tokens[_digest(token)] = name
    return tokens


def load_tokens(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> dict[bytes, str]:
    """Tokens from `path` (one per line) and from $CBMIR_AUTH_TOKENS (comma or newline separated)."""
    env = os.environ if env is None else env
    tokens: dict[bytes, str] = {}
    if path:
        file = Path(path)
        if not file.is_file():
            raise AuthConfigError(f"auth tokens file not found: {path} (one token, or name:token, per line)")
        tokens.update(parse_tokens(file.read_text(encoding="utf-8").splitlines(), str(path)))
        if not tokens:
            raise AuthConfigError(f"auth tokens file {path} holds no token (one token, or name:token, per line)")
    value = env.get(TOKENS_ENV, "")
    if value.strip():
        tokens.update(parse_tokens(value.replace(",", "\n").splitlines(), f"${TOKENS_ENV}"))
    return tokens


def peer_subject(context: grpc.ServicerContext) -> str:
    """The mTLS client certificate's common name (or first SAN) when the channel is mutual TLS, else ""."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - no auth context on insecure channels of some grpc versions
        return ""
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(key) or []
        if values:
            value = values[0]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return ""


class Authenticator:
    """Checks the `authorization: Bearer <token>` metadata of a call against the configured tokens."""

    def __init__(self, tokens: Mapping[bytes, str]) -> None:
        self._tokens = dict(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def token_name(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        """The name of the token the call carries, or None; every configured token is compared, in constant time."""
        presented = ""
        for key, value in metadata or ():
            if key.lower() == AUTH_HEADER:
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                if text[: len(BEARER)].lower() == BEARER:
                    presented = text[len(BEARER):].strip()
        if not presented:
            return None
        offered = _digest(presented)
        found = None
        for digest, name in self._tokens.items():
            if hmac.compare_digest(offered, digest):
                found = name
        return found

    def caller(self, context: grpc.ServicerContext) -> Caller:
        """Who this call is from, for the audit log; never includes the token itself."""
        peer = context.peer() or ""
        name = self.token_name(context.invocation_metadata()) if self.enabled else None
        if name:
            return Caller(name=name, peer=peer, method="token")
        subject = peer_subject(context)
        if subject:
            return Caller(name=subject, peer=peer, method="mtls")
        return Caller(name="", peer=peer, method="none")


def _rejecting_handler(handler: grpc.RpcMethodHandler, message: str, method: str,
                       on_refused: RefusalHook | None) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that only answers UNAUTHENTICATED (logged, audited)."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        log.warning("unauthenticated call refused", extra={"method": method, "peer": context.peer() or "",
                                                           "reason": message.split(":")[0]})
        if on_refused is not None:
            on_refused(context, method, grpc.StatusCode.UNAUTHENTICATED.name, message.split(":")[0])
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(abort, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


# Called with (context, method, status name, reason) when an interceptor refuses a call: the audit log's hook.
RefusalHook = Callable[[Any, str, str, str], None]


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses every call without a valid bearer token, except the health service (probes carry no token)."""

    def __init__(self, authenticator: Authenticator, on_refused: RefusalHook | None = None) -> None:
        self.authenticator = authenticator
        self.on_refused = on_refused

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        if self.authenticator.token_name(metadata) is not None:
            return handler
        presented = any(key.lower() == AUTH_HEADER for key, _ in metadata or ())
        message = ("invalid token" if presented else
                   "missing token: send metadata 'authorization: Bearer <token>' (cbmir search --token-file PATH)")
        return _rejecting_handler(handler, message, method, self.on_refused)
