"""Per-request bookkeeping shared by every RPC: the in-flight count (for draining), the in-flight count per client
connection (for its limit) and the request metrics."""

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
        self.load_failed = False  # the model could not be loaded: this replica will never serve
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def unavailable_reason(self) -> str | None:
        if self.draining:
            return "the server is draining (shutting down); retry on another replica"
        if self.load_failed:  # the reason is in the server's log, not for clients (it names paths)
            return "the model failed to load; this replica cannot serve (see its log)"
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
    """``with state.track("Translate") as call: ... call.code = ...``: counts, times and labels one request.

    ``call.model`` is the model name the request was routed to: set it once routing chose one, so that the
    request's series carry it; it stays ``""`` for requests refused before routing (bad input, auth, overload
    before a model was picked)."""

    def __init__(self, state: ServingState, method: str) -> None:
        self.state, self.method = state, method
        self.code = grpc.StatusCode.OK
        self.model = ""
        self._start = 0.0

    def __enter__(self) -> RequestTimer:
        self._start = time.perf_counter()
        self.state._enter()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and self.code == grpc.StatusCode.OK:
            self.code = grpc.StatusCode.CANCELLED if exc_type is asyncio.CancelledError else grpc.StatusCode.UNKNOWN
        seconds = time.perf_counter() - self._start
        self.state.metrics.count_request(self.method, self.code.name, self.model, seconds)
        self.state._exit()


class ConnectionLimiter:
    """Requests in flight per client connection (gRPC peer address), refused beyond ``limit`` (0: no limit).

    Only the event loop touches it, so it needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inflight: dict[str, int] = {}

    def inflight(self, peer: str) -> int:
        return self._inflight.get(peer, 0)

    def acquire(self, peer: str) -> bool:
        count = self._inflight.get(peer, 0)
        if self.limit and count >= self.limit:
            return False
        self._inflight[peer] = count + 1
        return True

    def release(self, peer: str) -> None:
        count = self._inflight.get(peer, 0) - 1
        if count > 0:
            self._inflight[peer] = count
        else:
            self._inflight.pop(peer, None)
