"""The one queue of waiting sentences between the RPC handlers (producers) and the engine thread (consumer).

Bounded in sentences: a request whose texts do not all fit is refused whole (RESOURCE_EXHAUSTED) rather than
partly queued. Cancelled requests leave the queue at once (``discard``), and sentences whose request died while
waiting are dropped when the engine looks, so no engine work is spent on them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from nmtserve.server.batching import Budget, is_full, select
from nmtserve.server.engine import DecodingOptions
from nmtserve.server.work import Request, WorkItem


class QueueFull(RuntimeError):
    """The queue cannot take the request's sentences."""


class QueueClosed(RuntimeError):
    """The server is shutting down."""


class WorkQueue:
    def __init__(self, capacity: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity
        self._items: list[WorkItem] = []  # arrival order
        self._cond = threading.Condition()
        self._closed = False
        self._on_depth = on_depth or (lambda depth: None)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, items: Sequence[WorkItem]) -> None:
        with self._cond:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            if len(self._items) + len(items) > self.capacity:
                raise QueueFull(
                    f"the queue is full ({len(self._items)} of {self.capacity} sentences waiting; this request has "
                    f"{len(items)}); retry later"
                )
            self._items.extend(items)
            self._on_depth(len(self._items))
            self._cond.notify()

    def discard(self, request: Request) -> int:
        """Remove ``request``'s waiting sentences; returns how many were removed."""
        with self._cond:
            before = len(self._items)
            self._items = [item for item in self._items if item.request is not request]
            self._on_depth(len(self._items))
            return before - len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _drop_dead(self, now: float, window: int) -> list[WorkItem]:
        """Drop dead sentences among the ``window`` oldest (the ones selection looks at); cancelled requests were
        already discarded by their handler, so this mostly catches deadlines that passed while waiting."""
        head = self._items[:window]
        dead = [item for item in head if item.request.dead(now)]
        if dead:
            self._items = [item for item in head if not item.request.dead(now)] + self._items[window:]
        return dead

    def take(
        self,
        budget: Budget,
        running: int,
        running_longest: int,
        running_options: DecodingOptions | None,
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
                while not self._items and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return [], []
                    self._cond.wait(remaining)
                while self._items and not self._closed and not is_full(self._items, budget):
                    remaining = self._items[0].enqueued_at + max_delay_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            dead = self._drop_dead(time.monotonic(), budget.window)
            chosen = select(self._items, budget, running, running_longest, running_options)
            if chosen:
                taken = {id(item) for item in chosen}
                self._items = [item for item in self._items if id(item) not in taken]
            if chosen or dead:
                self._on_depth(len(self._items))
            return chosen, dead
