"""Prometheus metrics of the server, on their own registry and HTTP port.

A registry per server (not prometheus_client's global one) lets tests and benchmarks run several servers in one
process with exact counts. Buckets are set for an engine whose steps take milliseconds and whose requests take
tens of milliseconds to seconds.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

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


METRICS_WORKERS = 4  # threads answering /metrics; a scrape takes milliseconds
METRICS_BACKLOG = 16  # connections waiting for one of them; more are closed at once
METRICS_TIMEOUT_S = 5.0  # a connection that sends nothing (or too slowly) for this long is closed


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr; the socket timeout bounds how long a half-open request may hold a worker."""

    timeout = METRICS_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:
        pass


class BoundedWSGIServer(WSGIServer):
    """A WSGI server that answers from a fixed pool of threads, with a bounded number of waiting connections.

    prometheus_client's own server starts a thread per connection with no timeout: 300 half-open ``GET /metrics``
    held 300 threads as long as the client wished. Here at most ``workers`` connections are served at once, each
    for at most ``timeout`` seconds of silence, ``backlog`` more wait, and the rest are closed on arrival."""

    daemon_threads = True
    request_queue_size = 128  # the kernel's accept queue: connections are refused by us, not left in SYN retries

    def __init__(self, address: tuple[str, int], workers: int, backlog: int) -> None:
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        super().__init__(address, _QuietHandler)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nmtserve-metrics")
        self._slots = threading.BoundedSemaphore(workers + backlog)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many connections already: refuse this one, keep serving the rest
            return
        self._pool.submit(self._serve, request, client_address)

    def _serve(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out or went away; nothing to report

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class MetricsEndpoint:
    """The running /metrics HTTP server."""

    server: BoundedWSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    metrics: ServerMetrics,
    host: str,
    port: int,
    workers: int = METRICS_WORKERS,
    backlog: int = METRICS_BACKLOG,
    timeout_s: float = METRICS_TIMEOUT_S,
) -> MetricsEndpoint:
    """Expose ``metrics`` at http://host:port/metrics (port 0: any free port) from a daemon thread and a bounded
    pool of workers (see ``BoundedWSGIServer``)."""
    server = BoundedWSGIServer((host, port), workers, backlog)
    server.RequestHandlerClass = type("MetricsHandler", (_QuietHandler,), {"timeout": timeout_s})
    server.set_app(make_wsgi_app(metrics.registry))
    thread = Thread(target=server.serve_forever, name="nmtserve-metrics-accept", daemon=True)
    thread.start()
    return MetricsEndpoint(server, thread)
