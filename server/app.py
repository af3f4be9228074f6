"""Assembles the server: gRPC (Translator, health, reflection), the metrics endpoint, the engine thread.

Life cycle: ``start`` binds the ports with health NOT_SERVING; ``load`` verifies the model directory against its
manifest's sha256 digests, loads and warms the model off the event loop, starts the engine thread and turns health
SERVING; ``drain`` turns health NOT_SERVING, refuses new requests (UNAVAILABLE) and waits for in-flight ones;
``stop`` closes everything. ``serve`` runs that sequence until SIGTERM or SIGINT, which is what ``nmtserve serve``
and a Kubernetes pod need (readiness probes see NOT_SERVING while a replica drains). A second signal during the
drain stops at once.

If the model cannot be loaded (a missing file, a checksum mismatch, an unusable graph), the server logs one
``model load failed`` error naming the directory and the reason, keeps health NOT_SERVING and answers UNAVAILABLE
until it is stopped (then it exits 1); with ``exit_on_load_failure`` it exits 1 at once instead.

With ``model_repository`` the server holds many models (``models.py``, ``repository.py``, docs/repository.md):
health "" and ``nmtserve.v1.Translator`` report SERVING once every configured model has finished loading and the
default model is ready (a failed other model is ``failed`` in ListModels, it does not hold the replica back);
``nmtserve.v1.Translator/<model>`` reports each model. A watcher rescans the repository every
``repository_poll_s`` for new and removed versions (hot reload).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from nmtserve.engine import Engine
from nmtserve.server.admin import ADMIN_PREFIX, ADMIN_SERVICE, AdminService, add_admin_service
from nmtserve.server.backend import WARMUP_TEXTS, warm_up
from nmtserve.server.config import ConfigError, ServerConfig, resolve_model_dir
from nmtserve.server.logs import quiet_expected_races
from nmtserve.server.metrics import MetricsEndpoint, ServerMetrics, serve_metrics
from nmtserve.server.models import ModelRegistry
from nmtserve.server.reflection import enable_reflection
from nmtserve.server.repository import DirectoryRepository, Repository, SingleModel
from nmtserve.server.scheduler import EngineThreads
from nmtserve.server.security import HEALTH_PREFIX, BearerTokenInterceptor, load_tokens, server_credentials
from nmtserve.server.service import SERVICE_NAME, TranslatorService, add_translator_service
from nmtserve.server.tracking import ServingState
from nmtserve.server.watcher import RepositoryWatcher

if TYPE_CHECKING:
    from nmtserve.server.http.app import HttpFrontDoor

log = logging.getLogger(__name__)

HEALTH_SERVICES = ("", SERVICE_NAME)  # "" is the whole server, as grpc-health-probe asks by default
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # n-best lists of 256 texts can exceed gRPC's default of 4 MiB
__all__ = ["WARMUP_TEXTS", "TranslationServer", "model_health_name", "serve", "warm_up"]


def model_health_name(model: str) -> str:
    """The health service name of one model: ``nmtserve.v1.Translator/<model>``."""
    return f"{SERVICE_NAME}/{model}"


def repository_of(config: ServerConfig) -> Repository:
    if config.model_repository is not None:
        return DirectoryRepository(config.model_repository)
    return SingleModel(resolve_model_dir(config.model))


class DefaultModelFailed(RuntimeError):
    """The default model has no ready version after the initial load (its failure is logged already)."""


class TranslationServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        quiet_expected_races()
        self.metrics = ServerMetrics()
        self.state = ServingState(self.metrics)
        self.service = TranslatorService(config, self.state)
        self.admin = AdminService(config)
        self.registry: ModelRegistry | None = None
        self.health = health_aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._http: HttpFrontDoor | None = None
        self._watcher: RepositoryWatcher | None = None
        self._model_health: set[str] = set()
        self.http_port = 0

    @property
    def engine(self) -> Engine | None:
        """The default model's serving engine (None while none is ready)."""
        backend = self.service.backend
        return backend.engine if backend is not None else None

    @property
    def _scheduler(self) -> EngineThreads | None:
        """The default model's engine threads (tests watch their running batches)."""
        backend = self.service.backend
        return backend.scheduler if backend is not None else None

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_SERVICES:
            await self.health.set(name, status)
        self.metrics.serving.set(1 if serving else 0)

    async def _models_changed(self) -> None:
        """Per-model health, and the overall health once the initial load is done: the default model ready."""
        registry = self.registry
        if registry is None:
            return
        self._model_health.update(registry.names())
        if self.state.load_failed and self.state.ready and registry.any_ready():  # a hot reload brought one up
            self.state.load_failed = False
        for name in sorted(self._model_health):
            ready = registry.ready(name) and not self.state.draining
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(model_health_name(name), status)
        if self.state.ready and not self.state.draining:
            await self._set_health(registry.ready(registry.default))

    def _reject_unauthenticated(self, method: str, reason: str) -> None:
        self.metrics.unauthenticated.labels(method, reason).inc()

    async def start(self) -> None:
        """Bind the gRPC and metrics ports; health answers NOT_SERVING until ``load`` finishes.

        Raises ConfigError for unusable TLS or token files and OSError for ports that cannot be bound."""
        config = self.config
        credentials = server_credentials(config)
        interceptors = []
        tokens = None
        if config.auth_token_file is not None:  # the admin service has its own tokens
            tokens = load_tokens(config.auth_token_file)
            interceptors.append(
                BearerTokenInterceptor(
                    tokens, exempt_prefixes=(HEALTH_PREFIX, ADMIN_PREFIX), on_reject=self._reject_unauthenticated
                )
            )
        if config.admin_token_file is not None:
            admin_tokens = load_tokens(config.admin_token_file, "admin_token_file")
            interceptors.append(
                BearerTokenInterceptor(
                    admin_tokens, only_prefixes=(ADMIN_PREFIX,), on_reject=self._reject_unauthenticated
                )
            )
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
            # gRPC sets SO_REUSEPORT by default: a second server on a used port would start and silently take
            # half of the new connections. Off, the bind fails and ``serve`` exits 2.
            ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        add_translator_service(self.service, server)
        add_admin_service(self.admin, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if config.reflection:
            health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
            enable_reflection((SERVICE_NAME, ADMIN_SERVICE, health_name), server)
        address = f"{config.host}:{config.port}"
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {address}: {error} (is another server using the port?)") from None
        if config.port != 0 and self.port != config.port:  # some gRPC versions report a failed bind as port 0
            raise OSError(f"cannot listen on {address}: the port is in use (is another server running?)")
        await self._set_health(False)
        await server.start()
        self._server = server
        self._metrics_endpoint = serve_metrics(self.metrics, self.config.metrics_host, self.config.metrics_port)
        self.metrics_port = self._metrics_endpoint.port
        endpoints = {"grpc": f"{config.host}:{self.port}", "metrics": self.metrics_url}
        if config.http_port:
            try:  # aiohttp is the ``http`` extra: needed only where the HTTP port is on
                from nmtserve.server.http.app import HttpFrontDoor
                from nmtserve.server.http.common import HttpContext
            except ImportError as error:  # serve() stops what was started and exits 2
                raise ConfigError(f"http_port needs the http extra: pip install 'nmtserve[http]' ({error})") from None
            self._http = HttpFrontDoor(HttpContext(self.service, config, tokens, self._reject_unauthenticated))
            await self._http.start()
            self.http_port = self._http.port
            endpoints["http"] = f"{config.host}:{self.http_port}"
        security = {
            "tls": credentials is not None,
            "mutual_tls": config.tls_client_ca is not None,
            "token_auth": config.auth_token_file is not None,
        }
        log.info(
            "listening",
            extra={"fields": {**endpoints, **security}},
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.metrics_host}:{self.metrics_port}/metrics"

    async def load(self, engine: Engine | None = None) -> None:
        """Scan the repository (``--model``: a repository of one), load and warm up the configured models off the
        event loop, start their engine threads and the watcher, go SERVING; DefaultModelFailed when the default
        model has no ready version (its failure is logged), ConfigError for an unusable repository.

        ``engine``: the default model's engine, already loaded (tests wrap one to slow it or inject faults)."""
        config = self.config
        registry = ModelRegistry(config, repository_of(config), self.metrics, self._models_changed)
        self.registry = self.service.registry = self.admin.registry = registry
        await registry.start(engine)
        if not registry.any_ready():
            self.state.load_failed = True
        self.state.ready = True
        if registry.repository.watchable and config.repository_poll_s > 0:
            self._watcher = RepositoryWatcher(registry, config.repository_poll_s)
            self._watcher.start()
        await self._models_changed()
        serving = registry.serving(registry.default)
        if serving is None or serving.backend is None:
            raise DefaultModelFailed(f"the default model {registry.default!r} has no ready version")
        info = serving.backend.engine.info
        log.info(
            "serving",
            extra={
                "fields": {
                    "model": serving.name,
                    "version": serving.version,
                    "precision": info.precision,
                    "models": sorted(name for name in registry.names() if registry.ready(name)),
                }
            },
        )

    async def try_load(self, engine: Engine | None = None) -> bool:
        """``load``; on failure log it, stay NOT_SERVING (requests get UNAVAILABLE) and return False."""
        try:
            await self.load(engine)
            return True
        except DefaultModelFailed:  # each version's failure is logged as "model load failed" already
            self.state.load_failed = self.registry is None or not self.registry.any_ready()
            return False
        except Exception as error:
            self.state.load_failed = True
            model = str(self.config.model_repository or self.config.model or "(demo model)")
            log.error(
                "model load failed",
                extra={"fields": {"model": model, "error": f"{type(error).__name__}: {error}"}},
            )
            return False

    async def drain(self, timeout: float | None = None) -> bool:
        """Go NOT_SERVING, refuse new requests, wait up to ``timeout`` for in-flight ones; True if all finished."""
        timeout = self.config.drain_timeout_s if timeout is None else timeout
        self.state.draining = True
        await self._set_health(False)
        await self._models_changed()
        log.info("draining", extra={"fields": {"inflight": self.state.inflight, "timeout_s": timeout}})
        drained = await self.state.wait_idle(timeout)
        if not drained:
            log.warning("drain timed out", extra={"fields": {"inflight": self.state.inflight}})
        return drained

    async def stop(self, grace: float = 1.0) -> None:
        """Stop the HTTP and gRPC servers (open streams are cancelled after ``grace``), the engine thread and
        /metrics."""
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        if self.registry is not None:
            await self.registry.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
            self._metrics_endpoint = None
        log.info("stopped")


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain; the exit status for ``nmtserve serve``: 0 after a drain, 1 if the model
    failed to load, 2 for a configuration error."""
    try:  # before binding any port: a missing model is a configuration error, not a server that never gets ready
        if config.model_repository is None:
            config = dataclasses.replace(config, model=resolve_model_dir(config.model))
        else:
            DirectoryRepository(config.model_repository).check()
    except ConfigError as error:
        log.error("%s", error)
        return 2
    server = TranslationServer(config)
    try:
        await server.start()
    except (ConfigError, OSError) as error:
        log.error("%s", error)
        await server.stop()
        return 2
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    loading = asyncio.create_task(server.try_load())
    first_signal = asyncio.create_task(signals.get())
    await asyncio.wait({loading, first_signal}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if loading.done() and not loading.result():
        status = 1
        if not config.exit_on_load_failure:
            log.error("not serving: the model failed to load; waiting for SIGTERM (health stays NOT_SERVING)")
            await first_signal
    else:
        await first_signal
        log.info("shutdown requested", extra={"fields": {"signal": signal.Signals(first_signal.result()).name}})
        draining = asyncio.create_task(server.drain())
        second_signal = asyncio.create_task(signals.get())
        await asyncio.wait({draining, second_signal}, return_when=asyncio.FIRST_COMPLETED)
        if not draining.done():
            log.warning("second signal: stopping without waiting for in-flight requests")
        draining.cancel()
        second_signal.cancel()
    loading.cancel()
    first_signal.cancel()
    await server.stop()
    return status
