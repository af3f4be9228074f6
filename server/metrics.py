"""Prometheus metrics of the server, on their own registry and HTTP port.

A registry per server (not prometheus_client's global one) lets tests and benchmarks run several servers in one
process with exact counts. Buckets are set for an engine whose steps take milliseconds and whose requests take
tens of milliseconds to seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# 0.5 ms .. 30 s, roughly 1-2-5 per decade: fine enough for millisecond steps and second-long requests.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ServerMetrics:
    """Every metric the server exports; one instance per server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "nmtserve_request_duration_seconds",
            "Time from receiving a request to sending its answer (per request message on streams).",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "nmtserve_requests", "Requests answered, by method and gRPC status code.", ["method", "code"], registry=r
        )
        self.queue_wait = Histogram(
            "nmtserve_queue_wait_seconds",
            "Time a sentence waited in the queue before joining an engine batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "nmtserve_batch_size",
            "Sentences in the engine batch, observed at every decode step.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "nmtserve_batch_tokens",
            "Padded source tokens (sentences x longest source) in the engine batch, observed at every decode step.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.admitted_batch_size = Histogram(
            "nmtserve_admitted_batch_size",
            "Sentences encoded together when they join the engine batch.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.decode_step = Histogram(
            "nmtserve_decode_step_seconds",
            "Duration of one decode step of the whole engine batch.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.encode = Histogram(
            "nmtserve_encode_seconds",
            "Duration of encoding sentences that join the engine batch.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "nmtserve_tokens",
            "SentencePiece tokens: input (sources as encoded, EOS included) and output (best hypotheses, no EOS).",
            ["direction"],
            registry=r,
        )
        self.abandoned = Counter(
            "nmtserve_abandoned_sentences",
            "Sentences dropped unfinished because their request was cancelled, expired or failed.",
            ["stage"],
            registry=r,
        )
        self.engine_errors = Counter(
            "nmtserve_engine_errors", "Engine failures; each is retried alone to find its request.", registry=r
        )
        self.unauthenticated = Counter(
            "nmtserve_unauthenticated_requests",
            "RPCs refused with UNAUTHENTICATED (token missing or invalid), by method.",
            ["method", "reason"],
            registry=r,
        )
        self.queue_depth = Gauge("nmtserve_queue_depth", "Sentences waiting for the engine.", registry=r)
        self.queue_tokens = Gauge("nmtserve_queue_tokens", "Source tokens waiting for the engine.", registry=r)
        self.queue_capacity = Gauge(
            "nmtserve_queue_capacity",
            "How much may wait before requests are refused with RESOURCE_EXHAUSTED (max_queue_size, max_queue_tokens).",
            ["unit"],
            registry=r,
        )
        self.serving = Gauge(
            "nmtserve_serving",
            "1 while the health service reports SERVING (model loaded and warmed up, not draining), else 0.",
            registry=r,
        )
        self.running = Gauge("nmtserve_running_sentences", "Sentences in the engine batch.", registry=r)
        self.inflight = Gauge("nmtserve_inflight_requests", "Requests received and not yet answered.", registry=r)
        self.model_info = Gauge(
            "nmtserve_model_info",
            "The served model (value 1).",
            ["name", "version", "precision", "device"],
            registry=r,
        )
        for direction in ("input", "output"):
            self.tokens.labels(direction)

    def set_model(self, name: str, version: str, precision: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, precision, device).set(1)


@dataclass
class MetricsEndpoint:
    """The running /metrics HTTP server."""

    server: WSGIServer  # what prometheus_client's start_http_server runs
    thread: Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(metrics: ServerMetrics, host: str, port: int) -> MetricsEndpoint:
    """Expose ``metrics`` at http://host:port/metrics (port 0: any free port) from a daemon thread."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsEndpoint(server, thread)
