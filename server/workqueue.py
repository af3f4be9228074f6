"""The one queue of waiting sentences between the RPC handlers (producers) and the engine thread (consumer).

Bounded in sentences and in source tokens: a request whose texts do not all fit is refused whole
(RESOURCE_EXHAUSTED, with a retry hint) rather than partly queued, so memory stays bounded however fast requests
arrive. Cancelled requests leave the queue at once (``discard``), and sentences whose request died while waiting
are dropped when the engine looks, so no engine work is spent on them.

Sentences wait in one lane per request (requests in arrival order, each lane in its texts' order), so that
selection can deal batch slots round robin over requests (``batching.fair_window``) and a request leaves the
queue in O(1).

The retry hint is how long the engine would take to work off the sentences ahead, at its recent drain rate:
the sentences of its last ``RATE_TAKES`` takes over the time they took, counting only the intervals between two
takes during which sentences were waiting throughout. Idle time does not count, so the first burst after a quiet
period is not told to wait for a rate that decayed to nothing (a time-decayed average said 13.5-14.7 s when every
accepted request finished within 1 s). Before any rate is measured the hint is ``RETRY_COLD_S``. Clamped to
``RETRY_MIN_S``..``RETRY_MAX_S``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

from nmtserve.server.batching import Budget, fair_window, is_full, select
from nmtserve.server.work import Request, WorkItem

RETRY_MIN_S = 0.05
RETRY_MAX_S = 30.0
RETRY_COLD_S = 1.0  # the hint before any rate was measured
RATE_TAKES = 64  # the drain rate is measured over this many takes from the queue


class QueueFull(RuntimeError):
    """The queue cannot take the request's sentences; ``retry_after_s`` is a hint of when it might."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueClosed(RuntimeError):
    """The server is shutting down."""


class WorkQueue:
    def __init__(
        self,
        capacity: int,
        on_depth: Callable[[int], None] | None = None,
        max_tokens: int | None = None,
        on_tokens: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity  # sentences
        self.max_tokens = max_tokens  # source tokens (None: no limit)
        self._lanes: dict[Request, list[WorkItem]] = {}  # one lane per request, requests in arrival order
        self._count = 0  # sentences in ``_lanes``
        self._tokens = 0  # source tokens in ``_lanes``
        self._cond = threading.Condition()
        self._closed = False
        self._on_depth = on_depth or (lambda depth: None)
        self._on_tokens = on_tokens or (lambda tokens: None)
        self._clock = clock
        self._takes: deque[tuple[int, float]] = deque(maxlen=RATE_TAKES)  # (sentences taken, busy seconds)
        self._busy_since: float | None = None  # when sentences started waiting (None: none waiting)
        self._last_take = -math.inf  # no take yet: the first one measures nothing

    def __len__(self) -> int:
        return self._count

    @property
    def tokens(self) -> int:
        """Source tokens waiting."""
        return self._tokens

    def _removed(self, items: Sequence[WorkItem]) -> None:
        """Account for ``items`` having left the lanes (under the lock)."""
        self._count -= len(items)
        self._tokens -= sum(item.length for item in items)
        if not self._lanes:
            self._busy_since = None
        self._on_depth(self._count)
        self._on_tokens(self._tokens)

    def _oldest(self) -> WorkItem:
        return next(iter(self._lanes.values()))[0]

    def drain_rate(self) -> float | None:
        """Sentences taken per busy second over the last ``RATE_TAKES`` takes; None before any was measured."""
        with self._cond:
            taken = sum(count for count, _ in self._takes)
            busy = sum(seconds for _, seconds in self._takes)
        return taken / busy if taken and busy > 0 else None

    def retry_after_s(self) -> float:
        """How long the sentences waiting now would take the engine at its recent drain rate (a hint, clamped)."""
        rate = self.drain_rate()
        with self._cond:
            waiting = self._count
        if rate is None:
            return RETRY_COLD_S
        return min(RETRY_MAX_S, max(RETRY_MIN_S, waiting / rate))

    def _count_taken(self, taken: int) -> None:
        """Record a take of ``taken`` sentences (under the lock). Only intervals with a backlog throughout count:
        after an idle spell the first take measures the batching delay, not the engine."""
        now = self._clock()
        if self._busy_since is not None and self._busy_since <= self._last_take:
            # sentences waited all the time since the previous take: that interval is one cycle of a busy engine
            self._takes.append((taken, now - self._last_take))
        self._last_take = now
        self._busy_since = now if self._lanes else None

    def put(self, items: Sequence[WorkItem]) -> None:
        with self._cond:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            tokens = sum(item.length for item in items)
            problem = None
            if self._count + len(items) > self.capacity:
                problem = (
                    f"the queue is full: {self._count} sentences waiting and this request has {len(items)}; "
                    f"the limit is {self.capacity} (max_queue_size)"
                )
            elif self.max_tokens is not None and self._tokens + tokens > self.max_tokens:
                problem = (
                    f"the queue is full: {self._tokens} source tokens waiting and this request has {tokens}; "
                    f"the limit is {self.max_tokens} (max_queue_tokens)"
                )
            if problem is None:
                if not self._lanes and items:
                    self._busy_since = self._clock()
                for item in items:
                    self._lanes.setdefault(item.request, []).append(item)
                self._count += len(items)
                self._tokens += tokens
                self._on_depth(self._count)
                self._on_tokens(self._tokens)
                self._cond.notify()
                return
        retry = self.retry_after_s()
        raise QueueFull(f"{problem}; retry in {retry:.2f} s", retry)

    def discard(self, request: Request) -> int:
        """Remove ``request``'s waiting sentences; returns how many were removed."""
        with self._cond:
            lane = self._lanes.pop(request, [])
            if lane:
                self._removed(lane)
            return len(lane)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _drop_dead(self, now: float, window: int) -> list[WorkItem]:
        """Drop the lanes of dead requests among the ``window`` oldest requests (the ones selection looks at);
        cancelled requests were already discarded by their handler, so this mostly catches deadlines that passed
        while waiting."""
        dead_requests = [request for request in islice(self._lanes, window) if request.dead(now)]
        dead = [item for request in dead_requests for item in self._lanes.pop(request)]
        if dead:
            self._removed(dead)
        return dead

    def take(
        self,
        budget: Budget,
        running: int,
        running_longest: int,
        wait_s: float | None,
        max_delay_s: float,
    ) -> tuple[list[WorkItem], list[WorkItem]]:
        """Select sentences to admit; returns (admitted, dropped dead ones).

        ``wait_s`` None: do not block (a batch is running). Otherwise block up to ``wait_s`` for a first sentence,
        then up to ``max_delay_s`` after the oldest sentence arrived for the batch to fill.
        """
        with self._cond:
            if wait_s is not None:
                deadline = time.monotonic() + wait_s
                while not self._lanes and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return [], []
                    self._cond.wait(remaining)
                while self._lanes and not self._closed and not self._holds_a_batch(budget):
                    remaining = self._oldest().enqueued_at + max_delay_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            dead = self._drop_dead(time.monotonic(), budget.window)
            chosen = select(fair_window(self._lanes.values(), budget.window), budget, running, running_longest)
            if chosen:
                self._take_out(chosen)
                self._count_taken(len(chosen))
            return chosen, dead

    def _holds_a_batch(self, budget: Budget) -> bool:
        return self._count >= budget.max_sentences or is_full(fair_window(self._lanes.values(), budget.window), budget)

    def _take_out(self, chosen: Sequence[WorkItem]) -> None:
        """Remove the selected sentences from their lanes (under the lock); emptied lanes leave."""
        taken: dict[Request, set[int]] = {}
        for item in chosen:
            taken.setdefault(item.request, set()).add(id(item))
        for request, ids in taken.items():
            left = [item for item in self._lanes[request] if id(item) not in ids]
            if left:
                self._lanes[request] = left
            else:
                del self._lanes[request]
        self._removed(chosen)
