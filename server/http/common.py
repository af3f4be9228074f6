"""What every HTTP route shares: JSON errors, the gRPC-status-to-HTTP mapping, keys, deadlines, peers, bodies.

The HTTP front door runs the gRPC service's own request path (``TranslatorService.translate``), so a request is
validated, limited, queued, timed out and cancelled exactly as over gRPC; this module only translates between
HTTP and that path. Errors are always JSON objects ``{"error": "..."}`` (LibreTranslate's shape), never HTML.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aiohttp import web

from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.config import ServerConfig
from nmtserve.server.security import token_matches
from nmtserve.server.service import Overloaded, TranslatorService
from nmtserve.server.validation import RequestError

T = TypeVar("T")
TIMEOUT_HEADER = "X-Timeout-Ms"  # HTTP has no deadline of its own; this one plays grpc-timeout's part
MAX_TIMEOUT_MS = 24 * 3600 * 1000

# Every gRPC status, as google.rpc.Code documents its HTTP mapping (what grpc-gateway and Envoy's transcoder use):
# a status missing here answered 500, so FAILED_PRECONDITION (a model or version that is not loaded) looked like
# a server fault. Only INTERNAL, UNKNOWN and DATA_LOSS are 500s.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


@dataclass
class HttpContext:
    """What the routes need from the server: its service (the shared request path), settings and accepted keys."""

    service: TranslatorService
    config: ServerConfig
    tokens: list[bytes] | None  # SHA-256 digests of the accepted keys; None: no key required
    on_reject: Any  # (method, reason) -> None: counts refused keys in nmtserve_unauthenticated_requests_total


CONTEXT = web.AppKey("nmtserve", HttpContext)


def context_of(request: web.Request) -> HttpContext:
    return request.app[CONTEXT]


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class HttpError(Exception):
    """An answer other than 200, raised anywhere in a route and turned into ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False) -> None:
        """``close``: end the connection with this answer (what is left of the request cannot be read)."""
        super().__init__(message)
        self.status, self.message, self.headers, self.close = status, message, headers or {}, close

    def response(self) -> web.Response:
        response = json_error(self.status, self.message, self.headers)
        if self.close:
            response.force_close()
        return response


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def from_request_error(error: RequestError) -> HttpError:
    """The HTTP answer to a request-scoped failure of the shared path (429 and 503 carry ``Retry-After``)."""
    status = HTTP_STATUS.get(error.code, 500)
    headers: dict[str, str] = {}
    if isinstance(error, Overloaded):
        headers = retry_after_header(error.retry_after_s)
    elif status == 503:
        headers = retry_after_header(1)
    return HttpError(status, error.message, headers)


async def translate_through_service(
    ctx: HttpContext,
    request: web.Request,
    message: pb.TranslateRequest,
    route: str,
    on_routed: Callable[[str, str], None] | None = None,
) -> pb.TranslateResponse:
    """``message`` through the gRPC handlers' path (limits, queue, deadline from ``X-Timeout-Ms``, cancellation on
    disconnect), counted under ``route``; a refusal becomes its HTTP answer."""
    deadline = deadline_of(request)
    with ctx.service.state.track(route) as call:
        try:

            def routed(name: str, version: str) -> None:
                call.model = name
                if on_routed is not None:
                    on_routed(name, version)

            return await ctx.service.translate(message, deadline, peer=peer_of(request), on_routed=routed)
        except RequestError as error:
            call.code = error.code
            raise from_request_error(error) from None


def deadline_of(request: web.Request) -> float | None:
    """The request's deadline (monotonic clock) from ``X-Timeout-Ms``, or None."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        millis = float(raw)
    except ValueError:
        millis = math.nan
    if not math.isfinite(millis) or not 0 < millis <= MAX_TIMEOUT_MS:
        raise HttpError(400, f"{TIMEOUT_HEADER} must be a number of milliseconds in (0, {MAX_TIMEOUT_MS}]")
    return time.monotonic() + millis / 1000


def peer_of(request: web.Request) -> str:
    """The client connection, for ``max_inflight_per_connection`` (one keep-alive connection, many requests)."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"http:{peer[0]}:{peer[1]}"
    return f"http:{request.remote or ''}"


def bearer_of(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def libre_key(request: web.Request, field: Any) -> str | None:
    """The key of a LibreTranslate route: the body's ``api_key`` field, else ``api_key`` in the query string, else
    the bearer token. The OpenAPI document's ``libreApiKey`` scheme is ``in: query``, so generated clients put the
    key there whatever the body; it was read only with form bodies, and a JSON or multipart request was refused."""
    if isinstance(field, str) and field:
        return field
    return request.query.get("api_key") or bearer_of(request)


def check_key(request: web.Request, key: str | None, method: str, status: int) -> None:
    """Refuse the request (``status``: 403 for LibreTranslate routes, 401 for /v1) unless ``key`` is accepted."""
    ctx = context_of(request)
    if ctx.tokens is None:
        return
    if key is not None and token_matches(key, ctx.tokens):
        return
    ctx.on_reject(method, "missing" if key is None else "invalid")
    if status == 401:
        message = (
            "this server requires 'Authorization: Bearer <key>'" if key is None else "the bearer token is not valid"
        )
        raise HttpError(401, message, {"WWW-Authenticate": 'Bearer realm="nmtserve"'})
    missing = "Please contact the server operator to get an API key"
    raise HttpError(403, "Invalid API key" if key is not None else missing)


async def body_within_timeout(request: web.Request, read: Awaitable[T]) -> T:
    """``read`` (the reading of ``request``'s body), or 408 naming ``http_body_timeout_s`` once the whole body has
    not arrived that long after the headers; the connection is closed with the answer. aiohttp sets no limit on
    reading a body, so a client trickling a byte at a time held its connection (and the handler) for as long as
    it wished."""
    limit = context_of(request).config.http_body_timeout_s
    try:
        async with asyncio.timeout(limit):
            return await read
    except TimeoutError:
        raise HttpError(
            408, f"the request body did not arrive within {limit:g} s (http_body_timeout_s)", close=True
        ) from None


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or 400 (malformed JSON, nested past the recursion limit, not an object, not
    UTF-8); 413 past the size limit."""
    # aiohttp refuses bodies over client_max_size (max_message_bytes) with 413
    raw = await body_within_timeout(request, request.read())
    try:
        body = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HttpError(400, f"Invalid JSON format: {error}") from None
    except RecursionError:  # '[[[[...' or '{"a":{"a":...': json's C scanner recurses once per level (was a 500)
        limit = sys.getrecursionlimit()
        raise HttpError(400, f"Invalid JSON format: nested too deeply (about {limit} levels at most)") from None
    if not isinstance(body, dict):
        raise HttpError(400, "Invalid JSON format: the body must be a JSON object")
    return body


def is_json(request: web.Request) -> bool:
    return request.content_type == "application/json" or request.content_type.endswith("+json")
