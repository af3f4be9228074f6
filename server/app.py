"""Assembles the server: gRPC (Translator, health, reflection), the metrics endpoint, the engine thread.

Life cycle: ``start`` binds the ports with health NOT_SERVING; ``load`` loads and warms the model off the event
loop, starts the engine thread and turns health SERVING; ``drain`` turns health NOT_SERVING, refuses new requests
(UNAVAILABLE) and waits for in-flight ones; ``stop`` closes everything. ``serve`` runs that sequence until SIGTERM
or SIGINT, which is what ``nmtserve serve`` and a Kubernetes pod need (readiness probes see NOT_SERVING while a
replica drains).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.batching import Budget
from nmtserve.server.config import ConfigError, ServerConfig, resolve_model_dir
from nmtserve.server.engine import Engine
from nmtserve.server.metrics import MetricsEndpoint, ServerMetrics, serve_metrics
from nmtserve.server.scheduler import Scheduler
from nmtserve.server.service import SERVICE_NAME, Backend, TranslatorService
from nmtserve.server.tracking import ServingState
from nmtserve.server.validation import default_options
from nmtserve.server.workqueue import WorkQueue

log = logging.getLogger(__name__)

HEALTH_SERVICES = ("", SERVICE_NAME)  # "" is the whole server, as grpc-health-probe asks by default
WARMUP_TEXTS = (
    "Hello.",
    "The package contains the documentation.",
    "Select the cells that you want to print, then open the File menu and choose Print to print them.",
)
SELECTION_WINDOW_FACTOR = 4  # the batcher looks at the 4 x max_batch_size oldest waiting sentences


def warm_up(engine: Engine, config: ServerConfig) -> float:
    """Translate a few sentences so that onnxruntime's first-run allocations happen before SERVING; seconds."""
    start = time.perf_counter()
    engine.translate(list(WARMUP_TEXTS), default_options(config))
    return time.perf_counter() - start


class TranslationServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
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

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_SERVICES:
            await self.health.set(name, status)

    async def start(self) -> None:
        """Bind the gRPC and metrics ports; health answers NOT_SERVING until ``load`` finishes."""
        server = grpc.aio.server()
        pb_grpc.add_TranslatorServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        address = f"{self.config.host}:{self.config.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(f"cannot listen on {address}: {error}") from None
        await self._set_health(False)
        await server.start()
        self._server = server
        self._metrics_endpoint = serve_metrics(self.metrics, self.config.metrics_host, self.config.metrics_port)
        self.metrics_port = self._metrics_endpoint.port
        log.info(
            "listening",
            extra={"fields": {"grpc": f"{self.config.host}:{self.port}", "metrics": self.metrics_url}},
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
        queue = WorkQueue(config.max_queue_size, on_depth=self.metrics.queue_depth.set)
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
        )
        self._scheduler.start()
        self.engine = engine
        self.service.backend = Backend(engine, queue)
        info = engine.info
        self.metrics.set_model(info.name, info.version, info.precision, config.device)
        self.state.ready = True
        await self._set_health(True)
        log.info(
            "serving",
            extra={"fields": {"model": info.name, "version": info.version, "precision": info.precision}},
        )

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
        """Stop the gRPC server (open streams are cancelled after ``grace``), the engine thread and /metrics."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.stop)
            self._scheduler = None
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
            self._metrics_endpoint = None
        log.info("stopped")


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain; the exit status for ``nmtserve serve``."""
    try:  # before binding any port: a missing model is a configuration error, not a server that never gets ready
        config = dataclasses.replace(config, model=resolve_model_dir(config.model))
    except ConfigError as error:
        log.error("%s", error)
        return 2
    server = TranslationServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loading = asyncio.create_task(server.load())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if loading.done() and loading.exception() is not None:
        log.error("could not load the model: %s", loading.exception())
        status = 1
    else:
        await stop.wait()
        log.info("shutdown requested")
        await server.drain()
    loading.cancel()
    stopping.cancel()
    await server.stop()
    return status
