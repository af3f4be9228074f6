"""The event-loop side of a request: results posted by the engine thread, awaited by the RPC handler."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from nmtserve.engine import Hypothesis

PartialCallback = Callable[[int, list[int]], Awaitable[None]]
FinalCallback = Callable[[int, list[Hypothesis]], Awaitable[None]]


class LoopSink:
    """Implements ``RequestSink`` for a handler running on ``loop``: each call becomes an event on a loop queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()

    def _post(self, *event: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is gone and nobody is waiting
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def finished(self, index: int, hypotheses: list[Hypothesis]) -> None:
        self._post("final", index, hypotheses)

    def partial(self, index: int, token_ids: list[int]) -> None:
        self._post("partial", index, token_ids)

    def failed(self, error: BaseException) -> None:
        self._post("error", error, None)

    async def collect(
        self, indices: list[int], on_partial: PartialCallback | None = None, on_final: FinalCallback | None = None
    ) -> dict[int, list[Hypothesis]]:
        """Wait for the final hypotheses of ``indices``; raises the first failure the engine thread reports."""
        results: dict[int, list[Hypothesis]] = {}
        while len(results) < len(indices):
            kind, first, second = await self._events.get()
            if kind == "final":
                results[first] = second
                if on_final is not None:
                    await on_final(first, second)
            elif kind == "partial":
                if on_partial is not None and first not in results:
                    await on_partial(first, second)
            else:
                raise first
        return results
