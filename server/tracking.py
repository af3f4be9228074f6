"""Per-request bookkeeping shared by every RPC: the in-flight count (for draining) and the request metrics."""

from __future__ import annotations

import asyncio
import time

import grpc

from nmtserve.server.metrics import ServerMetrics


class ServingState:
    """Whether the server takes requests, and how many are in flight (draining waits for zero)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.ready = False  # model loaded and warmed up
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def unavailable_reason(self) -> str | None:
        if self.draining:
            return "the server is draining (shutting down); retry on another replica"
        if not self.ready:
            return "the model is still loading; retry shortly (health reports SERVING when ready)"
        return None

    def track(self, method: str) -> RequestTimer:
        return RequestTimer(self, method)

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _enter(self) -> None:
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.set(self.inflight)

    def _exit(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()
        self.metrics.inflight.set(self.inflight)


class RequestTimer:
    """``with state.track("Translate") as call: ... call.code = ...``: counts, times and labels one request."""

    def __init__(self, state: ServingState, method: str) -> None:
        self.state, self.method = state, method
        self.code = grpc.StatusCode.OK
        self._start = 0.0

    def __enter__(self) -> RequestTimer:
        self._start = time.perf_counter()
        self.state._enter()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and self.code == grpc.StatusCode.OK:
            self.code = grpc.StatusCode.CANCELLED if exc_type is asyncio.CancelledError else grpc.StatusCode.UNKNOWN
        metrics, code = self.state.metrics, self.code.name
        metrics.request_duration.labels(self.method, code).observe(time.perf_counter() - self._start)
        metrics.requests.labels(self.method, code).inc()
        self.state._exit()
