"""The HTTP front door: an aiohttp application on the gRPC server's own event loop.

aiohttp was chosen because it is an asyncio-native, well-kept server that runs inside the loop grpc.aio already
owns (no second loop or thread, no ASGI adapter): handlers await the same ``TranslatorService.translate`` as the
gRPC handlers, and a client that disconnects cancels its handler (``handler_cancellation``), which cancels its
queued and running sentences as a cancelled RPC does.

Middleware turns every non-200 answer into JSON ``{"error": "..."}`` (unknown paths 404, wrong methods 405 with
``Allow``, bodies over ``max_message_bytes`` 413, bodies that do not decode 400) and applies CORS: no
cross-origin access unless ``http_cors_origins`` lists the origin (or is ``*``). LibreTranslate allows every
origin; the safe default here is none, so a page on another site cannot spend this server's capacity with its
visitors' browsers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from nmtserve.server.config import ServerConfig
from nmtserve.server.http import files, libre, native, openapi
from nmtserve.server.http.common import CONTEXT, HttpContext, HttpError, json_error

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Content-Type, Authorization, X-Timeout-Ms"
CORS_MAX_AGE_S = "600"
SHUTDOWN_S = 1.0  # stop() runs after the drain: what is still open then is a stalled client


def allowed_origins(config: ServerConfig) -> frozenset[str]:
    return frozenset(origin.strip().rstrip("/") for origin in config.http_cors_origins.split(",") if origin.strip())


def _cors_headers(request: web.Request, origins: frozenset[str]) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if origin is None or not origins:
        return {}
    if "*" in origins:
        return {"Access-Control-Allow-Origin": "*"}
    if origin.rstrip("/") in origins:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


def payload_problem(error: web.RequestPayloadError) -> str:
    """What was wrong with a body aiohttp could not read (its cause's message, e.g. ``Can not decode
    content-encoding: gzip``); these reached no handler's ``except`` and answered a plain-text 500."""
    cause = error.__cause__
    message = cause.message if isinstance(cause, HttpProcessingError) else str(error)
    return " ".join(str(message).split())


def _middlewares(config: ServerConfig) -> list:
    origins = allowed_origins(config)
    limit = config.max_message_bytes

    @web.middleware
    async def errors_and_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:  # a CORS preflight
            if not _cors_headers(request, origins):
                return json_error(403, "this origin is not allowed (http_cors_origins)")
            preflight = {"Access-Control-Allow-Methods": CORS_METHODS, "Access-Control-Allow-Headers": CORS_HEADERS}
            return web.Response(status=204, headers={**preflight, "Access-Control-Max-Age": CORS_MAX_AGE_S})
        try:
            response = await handler(request)
        except HttpError as error:
            response = error.response()
        except web.RequestPayloadError as error:  # a body that does not decode: bad gzip/deflate, a broken chunk
            response = json_error(400, f"the request body could not be read: {payload_problem(error)}")
            response.force_close()  # the rest of the body cannot be parsed: the connection ends with this answer
            request.content.feed_eof()  # else aiohttp reads on after the answer and logs the error as a traceback
        except web.HTTPRequestEntityTooLarge:
            response = json_error(413, f"the request body is larger than {limit} bytes (max_message_bytes)")
        except web.HTTPMethodNotAllowed as error:
            allow = ", ".join(sorted(error.allowed_methods))
            message = f"{request.method} is not allowed on {request.path}; use {allow}"
            response = json_error(405, message, {"Allow": allow})
        except web.HTTPNotFound:
            response = json_error(404, f"no such endpoint: {request.path}")
        except web.HTTPException as error:
            if error.status < 400:
                raise
            response = json_error(error.status, error.reason)
        return response

    return [errors_and_cors]


def _cors_signal(config: ServerConfig) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """CORS headers on every answer, set just before its headers go out (streams included)."""
    origins = allowed_origins(config)

    async def add_cors(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(_cors_headers(request, origins))

    return add_cors


def _static_text(name: str) -> str:
    return resources.files("nmtserve.server.http").joinpath("static", name).read_text(encoding="utf-8")


def build_app(context: HttpContext) -> web.Application:
    """The application; ``client_max_size`` is ``max_message_bytes``, the gRPC port's limit too."""
    app = web.Application(middlewares=_middlewares(context.config), client_max_size=context.config.max_message_bytes)
    app[CONTEXT] = context
    app.on_response_prepare.append(_cors_signal(context.config))
    page = _static_text("index.html")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    libre.add_routes(app)
    native.add_routes(app)
    files.add_routes(app, context.config.max_request_bytes)
    openapi.add_routes(app, context.tokens is not None)
    return app


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The gRPC port's TLS (and mutual TLS) for the HTTP port too; None for plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    if config.tls_client_ca is not None:
        context.load_verify_locations(str(config.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Refusal(asyncio.Protocol):
    """Answers a connection beyond ``http_max_connections`` with a 503 and closes it, before reading anything."""

    BODY = json.dumps({"error": "too many open connections (http_max_connections); retry shortly"}).encode()
    HEAD = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\nRetry-After: 1\r\n"
        f"Connection: close\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)  # a TCP server's transports are
        transport.write(self.HEAD + self.BODY)
        transport.close()


class CappedSite(web.TCPSite):
    """A TCP site that serves at most ``limit`` connections at once (0: no limit); idle keep-alive connections
    count, so a flood of connections that send nothing cannot grow the server's memory without bound."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, ssl_context: ssl.SSLContext | None, limit: int):
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._limit = limit

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner; the listening socket is ours
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.Protocol:
            if self._limit and len(server.connections) >= self._limit:
                return Refusal()
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog
        )


class HttpFrontDoor:
    """Binds and serves the application on ``host:http_port`` until ``stop``."""

    def __init__(self, context: HttpContext) -> None:
        self.context = context
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        config = self.context.config
        # keepalive_timeout is aiohttp's one timer for a connection waiting for a request's headers: fresh, idle
        # between requests, or sending them a byte at a time. Its default, 3630 s, let idle and slowloris
        # connections hold every one of http_max_connections' slots for an hour.
        runner = web.AppRunner(
            build_app(self.context),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=SHUTDOWN_S,
            keepalive_timeout=config.http_idle_timeout_s,
        )
        await runner.setup()
        site = CappedSite(runner, config.host, config.http_port, ssl_context(config), config.http_max_connections)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(f"cannot listen on {config.host}:{config.http_port} (http_port): {error}") from None
        self._runner = runner
        server = site._server
        self.port = server.sockets[0].getsockname()[1] if isinstance(server, asyncio.Server) else config.http_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
