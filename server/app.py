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
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from nmtserve.engine import Engine
from nmtserve.server.admission import RequestChecker
from nmtserve.server.batching import Budget
from nmtserve.server.config import ConfigError, ServerConfig, resolve_model_dir
from nmtserve.server.logs import quiet_expected_races
from nmtserve.server.metrics import MetricsEndpoint, ServerMetrics, serve_metrics
from nmtserve.server.reflection import enable_reflection
from nmtserve.server.scheduler import Scheduler
from nmtserve.server.security import BearerTokenInterceptor, load_tokens, server_credentials
from nmtserve.server.service import SERVICE_NAME, Backend, TranslatorService, add_translator_service
from nmtserve.server.tracking import ServingState
from nmtserve.server.validation import default_options
from nmtserve.server.workqueue import WorkQueue

if TYPE_CHECKING:
    from nmtserve.server.http.app import HttpFrontDoor

log = logging.getLogger(__name__)

HEALTH_SERVICES = ("", SERVICE_NAME)  # "" is the whole server, as grpc-health-probe asks by default
WARMUP_TEXTS = (
    "Hello.",
    "The package contains the documentation.",
    "Select the cells that you want to print, then open the File menu and choose Print to print them.",
)
SELECTION_WINDOW_FACTOR = 4  # the batcher looks at 4 x max_batch_size waiting sentences, dealt round robin by request
SCHEDULER_STOP_S = 5.0  # how long ``stop`` waits for the engine thread to finish its step
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # n-best lists of 256 texts can exceed gRPC's default of 4 MiB


def warm_up(engine: Engine, config: ServerConfig) -> float:
    """Translate a few sentences so that onnxruntime's first-run allocations happen before SERVING; seconds."""
    start = time.perf_counter()
    engine.translate(list(WARMUP_TEXTS), default_options(config))
    return time.perf_counter() - start


class TranslationServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        quiet_expected_races()
        self.metrics = ServerMetrics()
        self.state = ServingState(self.metrics)
        self.service = TranslatorService(config, self.state)
        self.health = health_aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self.engine: Engine | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._scheduler: Scheduler | None = None
        self._http: HttpFrontDoor | None = None
        self.http_port = 0

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_SERVICES:
            await self.health.set(name, status)
        self.metrics.serving.set(1 if serving else 0)

    def _reject_unauthenticated(self, method: str, reason: str) -> None:
        self.metrics.unauthenticated.labels(method, reason).inc()

    async def start(self) -> None:
        """Bind the gRPC and metrics ports; health answers NOT_SERVING until ``load`` finishes.

        Raises ConfigError for unusable TLS or token files and OSError for ports that cannot be bound."""
        config = self.config
        credentials = server_credentials(config)
        interceptors = []
        tokens = None
        if config.auth_token_file is not None:
            tokens = load_tokens(config.auth_token_file)
            interceptors.append(BearerTokenInterceptor(tokens, on_reject=self._reject_unauthenticated))
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
            # gRPC sets SO_REUSEPORT by default: a second server on a used port would start and silently take
            # half of the new connections. Off, the bind fails and ``serve`` exits 2.
            ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        add_translator_service(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if config.reflection:
            enable_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
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
        """Load (unless given) and warm up the model off the event loop, start the engine thread, go SERVING."""
        config = self.config
        if engine is None:
            model_dir = resolve_model_dir(config.model)
            log.info("loading model", extra={"fields": {"model": str(model_dir), "device": config.device}})
            engine = await asyncio.to_thread(
                Engine.load, model_dir, config.device, config.threads or None, spin=config.spin
            )
        if config.max_input_tokens + 1 > engine.info.max_positions:
            raise ConfigError(
                f"max_input_tokens {config.max_input_tokens} exceeds what the model can encode "
                f"({engine.info.max_positions - 1})"
            )
        if config.warmup:
            seconds = await asyncio.to_thread(warm_up, engine, config)
            log.info("warmed up", extra={"fields": {"seconds": round(seconds, 3)}})
        queue = WorkQueue(
            config.max_queue_size,
            on_depth=self.metrics.queue_depth.set,
            max_tokens=config.max_queue_tokens,
            on_tokens=self.metrics.queue_tokens.set,
        )
        self.metrics.queue_capacity.labels("sentences").set(config.max_queue_size)
        self.metrics.queue_capacity.labels("tokens").set(config.max_queue_tokens)
        budget = Budget(config.max_batch_size, config.max_batch_tokens, SELECTION_WINDOW_FACTOR * config.max_batch_size)
        self._scheduler = Scheduler(
            engine,
            queue,
            budget,
            self.metrics,
            continuous=config.batching == "continuous",
            max_delay_s=config.max_queue_delay_ms / 1000,
            join_fraction=config.join_fraction,
            max_join_steps=config.max_join_steps,
            join_window_steps=config.join_window_steps,
        )
        self._scheduler.start()
        self.engine = engine
        checker = RequestChecker(config, engine.tokenizer, engine.info.vocab_size)
        self.service.backend = Backend(engine, queue, checker)
        info = engine.info
        self.metrics.set_model(info.name, info.version, info.precision, config.device)
        self.state.load_failed = False
        self.state.ready = True
        await self._set_health(True)
        log.info(
            "serving",
            extra={"fields": {"model": info.name, "version": info.version, "precision": info.precision}},
        )

    async def try_load(self, engine: Engine | None = None) -> bool:
        """``load``; on failure log it, stay NOT_SERVING (requests get UNAVAILABLE) and return False."""
        try:
            await self.load(engine)
            return True
        except Exception as error:
            self.state.load_failed = True
            model = str(self.config.model) if self.config.model is not None else "(demo model)"
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
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.stop, SCHEDULER_STOP_S)
            self._scheduler = None
        if self.service.backend is not None:
            self.service.backend.checker.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
            self._metrics_endpoint = None
        log.info("stopped")


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain; the exit status for ``nmtserve serve``: 0 after a drain, 1 if the model
    failed to load, 2 for a configuration error."""
    try:  # before binding any port: a missing model is a configuration error, not a server that never gets ready
        config = dataclasses.replace(config, model=resolve_model_dir(config.model))
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
