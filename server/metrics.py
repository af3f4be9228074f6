"""Prometheus metrics of the server, on their own registry and HTTP port.

A registry per server (not prometheus_client's global one) lets tests and benchmarks run several servers in one
process with exact counts. Buckets are set for an engine whose steps take milliseconds and whose requests take
tens of milliseconds to seconds.

Several models in one server: every queue, batch and step metric is one family labelled ``model`` and ``version``
(the dashboards and alert rules select or aggregate by them), and ``ServerMetrics.for_model`` hands out a
``ModelMetrics`` whose attributes are that pair's label children, so an engine thread records into its own model's
series with the same attribute names as before. ``forget_model`` removes a pair's series when the model is
unloaded, so the cardinality is bounded by what the repository has loaded. Request metrics carry ``model`` (no
version: a request is routed to a name; ``""`` until routed).

One-model servers may keep using ``ServerMetrics`` itself where a ``ModelMetrics`` is expected (``EngineMetrics``
is the protocol both satisfy): its per-model attributes record into the model named by ``set_model``.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Thread
from typing import Protocol, TypeVar, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

# 0.5 ms .. 30 s, roughly 1-2-5 per decade: fine enough for millisecond steps and second-long requests.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
MODEL_LABELS = ("model", "version")  # the labels every per-model family starts with


# -- what the engine thread and its queue record into -----------------------------------------------------------------

T_co = TypeVar("T_co", covariant=True)


class GaugeLike(Protocol):
    def set(self, value: float) -> None: ...


class CounterLike(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class ObserverLike(Protocol):
    def observe(self, amount: float) -> None: ...


class Labelled(Protocol[T_co]):
    """A family whose model labels are already chosen: ``labels`` takes only the remaining ones."""

    def labels(self, *values: str) -> T_co: ...


class EngineMetrics(Protocol):
    """The metrics one model's engine thread (server/scheduler.py) and work queue record: a ``ModelMetrics``, or
    ``ServerMetrics`` itself for the model it serves (``set_model``)."""

    @property
    def running(self) -> GaugeLike: ...
    @property
    def queue_depth(self) -> GaugeLike: ...
    @property
    def queue_tokens(self) -> GaugeLike: ...
    @property
    def queue_capacity(self) -> Labelled[GaugeLike]: ...
    @property
    def queue_wait(self) -> ObserverLike: ...
    @property
    def encode(self) -> ObserverLike: ...
    @property
    def decode_step(self) -> ObserverLike: ...
    @property
    def batch_size(self) -> ObserverLike: ...
    @property
    def batch_tokens(self) -> ObserverLike: ...
    @property
    def admitted_batch_size(self) -> ObserverLike: ...
    @property
    def tokens(self) -> Labelled[CounterLike]: ...
    @property
    def abandoned(self) -> Labelled[CounterLike]: ...
    @property
    def engine_errors(self) -> CounterLike: ...
    @property
    def turn_wait(self) -> ObserverLike: ...


M = TypeVar("M", bound=Counter | Gauge | Histogram)


class _ModelChildren(Labelled[M]):
    """A family with a model's labels filled in; remembers the children it made so that they can be removed."""

    def __init__(self, family: M, model: tuple[str, str]) -> None:
        self.family: M = family
        self.model = model
        self.made: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def labels(self, *values: str) -> M:
        with self._lock:
            self.made.add(values)
        return cast(M, self.family.labels(*self.model, *values))

    def remove_all(self) -> None:
        with self._lock:
            made = list(self.made)
            self.made.clear()
        for rest in made:
            _remove(self.family, (*self.model, *rest))


def _remove(family: Counter | Gauge | Histogram, values: tuple[str, ...]) -> None:
    family.remove(*values)  # a child never made (or already removed) is no error


class ModelFamilies:
    """The per-model metric families, each labelled ``model``, ``version`` and its own labels."""

    def __init__(self, r: CollectorRegistry) -> None:
        ml = list(MODEL_LABELS)
        self.queue_wait = Histogram(
            "nmtserve_queue_wait_seconds",
            "Time a sentence waited in the queue before joining an engine batch.",
            ml,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "nmtserve_batch_size",
            "Sentences in the engine batch, observed at every decode step.",
            ml,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "nmtserve_batch_tokens",
            "Padded source tokens (sentences x longest source) in the engine batch, observed at every decode step.",
            ml,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.admitted_batch_size = Histogram(
            "nmtserve_admitted_batch_size",
            "Sentences encoded together when they join the engine batch.",
            ml,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.decode_step = Histogram(
            "nmtserve_decode_step_seconds",
            "Duration of one decode step of the whole engine batch.",
            ml,
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.encode = Histogram(
            "nmtserve_encode_seconds",
            "Duration of encoding sentences that join the engine batch.",
            ml,
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "nmtserve_tokens",
            "SentencePiece tokens: input (sources as encoded, EOS included) and output (best hypotheses, no EOS).",
            [*ml, "direction"],
            registry=r,
        )
        self.abandoned = Counter(
            "nmtserve_abandoned_sentences",
            "Sentences dropped unfinished because their request was cancelled, expired or failed.",
            [*ml, "stage"],
            registry=r,
        )
        self.engine_errors = Counter(
            "nmtserve_engine_errors", "Engine failures; each is retried alone to find its request.", ml, registry=r
        )
        self.queue_depth = Gauge("nmtserve_queue_depth", "Sentences waiting for the engine.", ml, registry=r)
        self.queue_tokens = Gauge("nmtserve_queue_tokens", "Source tokens waiting for the engine.", ml, registry=r)
        self.queue_capacity = Gauge(
            "nmtserve_queue_capacity",
            "How much may wait before requests are refused with RESOURCE_EXHAUSTED (max_queue_size, max_queue_tokens).",
            [*ml, "unit"],
            registry=r,
        )
        self.running = Gauge("nmtserve_running_sentences", "Sentences in the engine batch.", ml, registry=r)
        self.turn_wait = Histogram(
            "nmtserve_turn_wait_seconds",
            "Time an encode or decode step waited for its turn on the CPU behind other models' steps.",
            ml,
            buckets=STEP_BUCKETS,
            registry=r,
        )

    def unlabelled(self) -> list[Counter | Gauge | Histogram]:
        """The families with no label beyond the model's (one child per model)."""
        return [
            self.queue_wait,
            self.batch_size,
            self.batch_tokens,
            self.admitted_batch_size,
            self.decode_step,
            self.encode,
            self.engine_errors,
            self.queue_depth,
            self.queue_tokens,
            self.running,
            self.turn_wait,
        ]


@dataclass
class ModelMetrics:
    """One model version's series: the attributes ``EngineMetrics`` names, each already labelled with the pair."""

    name: str
    version: str
    running: Gauge
    queue_depth: Gauge
    queue_tokens: Gauge
    queue_capacity: _ModelChildren[Gauge]
    queue_wait: Histogram
    encode: Histogram
    decode_step: Histogram
    batch_size: Histogram
    batch_tokens: Histogram
    admitted_batch_size: Histogram
    tokens: _ModelChildren[Counter]
    abandoned: _ModelChildren[Counter]
    engine_errors: Counter
    turn_wait: Histogram
    _info: tuple[str, str] | None = field(default=None, repr=False)  # (precision, device) described in model_info

    @classmethod
    def create(cls, families: ModelFamilies, name: str, version: str) -> ModelMetrics:
        pair = (name, version)
        made = cls(
            name,
            version,
            running=families.running.labels(*pair),
            queue_depth=families.queue_depth.labels(*pair),
            queue_tokens=families.queue_tokens.labels(*pair),
            queue_capacity=_ModelChildren(families.queue_capacity, pair),
            queue_wait=families.queue_wait.labels(*pair),
            encode=families.encode.labels(*pair),
            decode_step=families.decode_step.labels(*pair),
            batch_size=families.batch_size.labels(*pair),
            batch_tokens=families.batch_tokens.labels(*pair),
            admitted_batch_size=families.admitted_batch_size.labels(*pair),
            tokens=_ModelChildren(families.tokens, pair),
            abandoned=_ModelChildren(families.abandoned, pair),
            engine_errors=families.engine_errors.labels(*pair),
            turn_wait=families.turn_wait.labels(*pair),
        )
        for direction in ("input", "output"):  # both directions export 0 from the start (rate() needs a series)
            made.tokens.labels(direction)
        return made


class _Served:
    """One per-model metric of ``ServerMetrics``' served model, resolved when used (see ``ServerMetrics``)."""

    def __init__(self, owner: ServerMetrics, attr: str, values: tuple[str, ...] = ()) -> None:
        self.owner, self.attr, self.values = owner, attr, values

    def labels(self, *values: str) -> _Served:
        return _Served(self.owner, self.attr, self.values + values)

    def _target(self) -> Counter | Gauge | Histogram | None:
        served = self.owner.served
        if served is None:
            return None
        metric = getattr(served, self.attr)
        return metric.labels(*self.values) if self.values else metric

    def set(self, value: float) -> None:
        self.owner._remember(self.attr, self.values, value)
        target = self._target()
        if isinstance(target, Gauge):
            target.set(value)

    def inc(self, amount: float = 1) -> None:
        target = self._target()
        if isinstance(target, Counter | Gauge):
            target.inc(amount)

    def observe(self, amount: float) -> None:
        target = self._target()
        if isinstance(target, Histogram):
            target.observe(amount)


class ServerMetrics:
    """Every metric the server exports; one instance per server.

    Server-wide: requests (by method, code and routed model), in-flight requests, refused authentications, the
    serving state, and ``model_info`` (one series per loaded model version). Per model: ``for_model``.

    The per-model attributes of ``ServerMetrics`` itself (``running``, ``queue_wait``, ...) record into the model
    named by ``set_model``, resolved at each use, so a one-model server can hand ``ServerMetrics`` to its queue and
    engine thread before it knows the model's name. Gauges set before ``set_model`` are remembered and exported
    once it is called; counts and observations before it are not recorded (a server admits no request before its
    model is named: it is not ready yet), so no series with an empty model ever appears.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "nmtserve_request_duration_seconds",
            "Time from receiving a request to sending its answer (per request message on streams).",
            ["method", "code", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "nmtserve_requests",
            "Requests answered, by method, gRPC status code and model (empty: refused before it was routed).",
            ["method", "code", "model"],
            registry=r,
        )
        self.unauthenticated = Counter(
            "nmtserve_unauthenticated_requests",
            "RPCs refused with UNAUTHENTICATED (token missing or invalid), by method.",
            ["method", "reason"],
            registry=r,
        )
        self.serving = Gauge(
            "nmtserve_serving",
            "1 while the health service reports SERVING (model loaded and warmed up, not draining), else 0.",
            registry=r,
        )
        self.inflight = Gauge("nmtserve_inflight_requests", "Requests received and not yet answered.", registry=r)
        self.model_info = Gauge(
            "nmtserve_model_info",
            "A loaded model version (value 1).",
            ["name", "version", "precision", "device"],
            registry=r,
        )
        self.families = ModelFamilies(r)
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        self._request_keys: set[tuple[str, str, str]] = set()  # (method, code, model) series made so far
        self._lock = threading.Lock()
        self.served: ModelMetrics | None = None  # the model set_model named
        self._gauges: dict[tuple[str, tuple[str, ...]], float] = {}  # gauges set through the served attributes
        self.running = _Served(self, "running")
        self.queue_depth = _Served(self, "queue_depth")
        self.queue_tokens = _Served(self, "queue_tokens")
        self.queue_capacity = _Served(self, "queue_capacity")
        self.queue_wait = _Served(self, "queue_wait")
        self.encode = _Served(self, "encode")
        self.decode_step = _Served(self, "decode_step")
        self.batch_size = _Served(self, "batch_size")
        self.batch_tokens = _Served(self, "batch_tokens")
        self.admitted_batch_size = _Served(self, "admitted_batch_size")
        self.tokens = _Served(self, "tokens")
        self.abandoned = _Served(self, "abandoned")
        self.engine_errors = _Served(self, "engine_errors")
        self.turn_wait = _Served(self, "turn_wait")

    # -- per model ---------------------------------------------------------------------------------------------

    def for_model(self, name: str, version: str) -> ModelMetrics:
        """The series of one model version (made on first use, then the same object)."""
        with self._lock:
            metrics = self._models.get((name, version))
            if metrics is None:
                metrics = self._models[(name, version)] = ModelMetrics.create(self.families, name, version)
            return metrics

    def describe_model(self, name: str, version: str, precision: str, device: str) -> ModelMetrics:
        """Export ``model_info`` for a loaded model version (replacing an earlier description of that pair)."""
        metrics = self.for_model(name, version)
        with self._lock:
            if metrics._info is not None:
                _remove(self.model_info, (name, version, *metrics._info))
            metrics._info = (precision, device)
            self.model_info.labels(name, version, precision, device).set(1)
        return metrics

    def forget_model(self, name: str, version: str) -> None:
        """Remove every series of an unloaded model version (and its request series when it was the name's last
        loaded version): nothing stale stays on /metrics, and the cardinality follows what is loaded. Call it once
        the version's engine thread has stopped: a ``ModelMetrics`` still held records into series nobody exports
        (``for_model`` afterwards makes fresh ones)."""
        with self._lock:
            metrics = self._models.pop((name, version), None)
            if metrics is None:
                return
            if self.served is metrics:
                self.served = None
            last_version = not any(model == name for model, _ in self._models)
            request_keys = {key for key in self._request_keys if key[2] == name} if last_version else set()
            self._request_keys -= request_keys
        for family in self.families.unlabelled():
            _remove(family, (name, version))
        for children in (metrics.queue_capacity, metrics.tokens, metrics.abandoned):
            children.remove_all()
        if metrics._info is not None:
            _remove(self.model_info, (name, version, *metrics._info))
        for key in request_keys:
            _remove(self.requests, key)
            _remove(self.request_duration, key)

    def set_model(self, name: str, version: str, precision: str, device: str) -> None:
        """Name the model a one-model server serves (and describe it in ``model_info``): ``ServerMetrics``' own
        per-model attributes record into it from now on. A model named before keeps its series until
        ``forget_model`` (it may still be serving: only the one that unloads it knows)."""
        metrics = self.describe_model(name, version, precision, device)
        self.served = metrics
        with self._lock:
            remembered = dict(self._gauges)
        for (attr, values), value in remembered.items():
            gauge = getattr(metrics, attr)
            (gauge.labels(*values) if values else gauge).set(value)

    def _remember(self, attr: str, values: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._gauges[(attr, values)] = value

    # -- per request -------------------------------------------------------------------------------------------

    def count_request(self, method: str, code: str, model: str, seconds: float) -> None:
        """One answered request: its duration and its count, labelled with the model it was routed to."""
        key = (method, code, model)
        with self._lock:
            self._request_keys.add(key)
        self.request_duration.labels(*key).observe(seconds)
        self.requests.labels(*key).inc()


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
