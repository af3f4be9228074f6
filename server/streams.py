"""Bounded answers of one TranslateStream, and the policy for a client that does not read them.

A stream's answers wait in a ``StreamBuffer`` of ``capacity`` messages until gRPC has written them (gRPC's own
flow control stops the writing when the client stops reading). When the buffer is full, a request's final
answer waits for room (its producer pauses) up to ``stall_timeout_s``; after that the stream is marked
``stalled`` and closed, and the handler ends it with RESOURCE_EXHAUSTED. Partial outputs never wait: offered to a
full buffer they are dropped, since a later partial or the final answer supersedes them. So a client that never
reads holds at most ``capacity`` answers on the server, for at most ``stall_timeout_s``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class StreamBuffer(Generic[T]):
    """A bounded FIFO between a stream's request tasks (producers) and its writer (the one consumer), on one loop."""

    def __init__(self, capacity: int, stall_timeout_s: float) -> None:
        self.capacity, self.stall_timeout_s = capacity, stall_timeout_s
        self._items: deque[T] = deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.closed = False
        self.stalled = False  # a producer waited stall_timeout_s for room: the client is not reading

    def __len__(self) -> int:
        return len(self._items)

    def _push(self, item: T) -> None:
        self._items.append(item)
        self._readable.set()
        if len(self._items) >= self.capacity:
            self._room.clear()

    def offer(self, item: T) -> bool:
        """Add ``item`` if there is room now; False (dropped) otherwise."""
        if self.closed or len(self._items) >= self.capacity:
            return False
        self._push(item)
        return True

    async def put(self, item: T) -> bool:
        """Add ``item``, waiting for room up to ``stall_timeout_s``; False if the buffer closed or stalled."""
        while not self.closed and len(self._items) >= self.capacity:
            try:
                await asyncio.wait_for(self._room.wait(), self.stall_timeout_s)
            except TimeoutError:
                self.stalled = True
                self.close()
        if self.closed:
            return False
        self._push(item)
        return True

    def close(self) -> None:
        """No more items: ``get`` returns None once the buffer is empty (at once if it stalled)."""
        self.closed = True
        if self.stalled:
            self._items.clear()
        self._readable.set()
        self._room.set()

    async def get(self) -> T | None:
        """The next item, or None when the buffer is closed and empty (or stalled)."""
        while not self._items:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        if self.stalled:
            return None
        item = self._items.popleft()
        if len(self._items) < self.capacity:
            self._room.set()
        return item


def word_prefix(text: str) -> str:
    """``text`` up to its last whole word: the last word of a stable prefix may still grow (``ein`` -> ``eine``)."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[:cut].rstrip() if cut > 0 else ""
