"""Transport security and authentication of the gRPC port: TLS, mutual TLS, bearer tokens.

- TLS: ``tls_cert`` + ``tls_key`` (PEM files) make the port TLS-only; ``tls_client_ca`` also requires every client
  to present a certificate signed by that CA (mutual TLS). Files are read once at start-up; a missing or
  malformed file is a configuration error before any port is bound.
- Bearer tokens: ``auth_token_file`` lists accepted tokens, one per line (several, so that a new token can be
  rolled out before the old one is withdrawn; blank lines and ``#`` comments are ignored). Every RPC except the
  health service must carry ``authorization: Bearer <token>``, or it is refused with UNAUTHENTICATED before any
  handler runs. Tokens are compared in constant time (``hmac.compare_digest`` of their SHA-256 digests, against
  every accepted token without stopping early), so neither a token's content nor its length leaks through
  timing. Health checks stay open so that load balancers and Kubernetes probes need no secret; reflection is
  not exempt. The token never appears in logs or in the configuration (only the file's path does).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import grpc

from nmtserve.server.config import ConfigError, ServerConfig

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
AUTH_HEADER = "authorization"
SCHEME = "bearer"
UNKNOWN_METHOD = "unknown"  # the method label of refused calls to methods this server does not have


def read_pem(path: Path, setting: str) -> bytes:
    """The bytes of a PEM file, or ConfigError naming the setting."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{setting}: cannot read {path}: {error.strerror or error}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{setting}: {path} is not a PEM file")
    return data


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials for the gRPC port, or None for plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    cert = read_pem(config.tls_cert, "tls_cert")
    key = read_pem(config.tls_key, "tls_key")
    client_ca = read_pem(config.tls_client_ca, "tls_client_ca") if config.tls_client_ca is not None else None
    try:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    except Exception as error:  # grpc raises on unusable PEM data
        raise ConfigError(f"tls_cert/tls_key: unusable certificate or key: {error}") from None


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def load_tokens(path: Path, setting: str = "auth_token_file") -> list[bytes]:
    """SHA-256 digests of the tokens in ``path`` (one per line); ConfigError if it has none."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{setting}: cannot read {path}: {error}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ConfigError(f"{setting}: {path} lists no token")
    for token in tokens:
        if any(char.isspace() for char in token) or not token.isprintable():
            raise ConfigError(f"{setting}: {path}: tokens may not contain spaces or control characters")
    return [_digest(token.encode("utf-8")) for token in tokens]


def token_matches(candidate: str, accepted: Sequence[bytes]) -> bool:
    """Whether ``candidate`` is one of the ``accepted`` digests, in time independent of where they differ."""
    digest = _digest(candidate.encode("utf-8", "surrogatepass"))
    match = False
    for token in accepted:  # every token is compared: no early exit
        match |= hmac.compare_digest(digest, token)
    return match


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, or None."""
    for key, value in metadata or ():
        if key.lower() == AUTH_HEADER and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == SCHEME and token.strip():
                return token.strip()
    return None


def _method_name(method: str) -> str:
    return method.rsplit("/", 1)[-1] or method


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every RPC but health checks without a valid bearer token (UNAUTHENTICATED)."""

    def __init__(
        self,
        tokens: Sequence[bytes],
        exempt_prefixes: Sequence[str] = (HEALTH_PREFIX,),
        on_reject: Callable[[str, str], None] | None = None,
        only_prefixes: Sequence[str] = (),
    ) -> None:
        """``only_prefixes``: guard only the methods under these (the admin service's own tokens), not every one."""
        self.tokens = list(tokens)
        self.exempt_prefixes = tuple(exempt_prefixes)
        self.only_prefixes = tuple(only_prefixes)
        self.on_reject = on_reject or (lambda method, reason: None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = details.method or ""
        if method.startswith(self.exempt_prefixes) or (
            self.only_prefixes and not method.startswith(self.only_prefixes)
        ):
            return await continuation(details)
        token = bearer_token(details.invocation_metadata)
        if token is not None and token_matches(token, self.tokens):
            return await continuation(details)
        reason = "missing" if token is None else "invalid"
        handler = await continuation(details)
        # the metric's label is the method's name only for methods this server has: the path is the client's to
        # choose, and one series per made-up name let an unauthenticated client grow memory and /metrics unbounded
        self.on_reject(_method_name(method) if handler is not None else UNKNOWN_METHOD, reason)
        log.debug("unauthenticated request refused", extra={"fields": {"method": method, "reason": reason}})
        message = (
            "this server requires 'authorization: Bearer <token>' metadata"
            if token is None
            else "the bearer token is not valid"
        )
        return _refusal(handler, message)


def _refusal(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED without running anything (an unknown
    method is refused the same way, so that its existence is not revealed)."""

    async def unary_response(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream_response(request: object, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover  (makes this an async generator)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(unary_response)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_response)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary_response)
    return grpc.unary_stream_rpc_method_handler(stream_response)
