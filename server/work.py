"""Requests and their sentences on the way from an RPC handler (event loop) through the queue to the engine thread.

A request's texts become one ``WorkItem`` each, so that the batcher can place them independently; results flow
back through the request's ``RequestSink``, which the engine thread calls and which hops to the event loop. The
liveness flags are plain attributes written by one thread and read by the other: a stale read only delays a
cancellation by one decode step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nmtserve.engine import DecodingOptions, Hypothesis

_keys = itertools.count()


class RequestSink(Protocol):
    """Where the engine thread sends a request's results; implementations must not block."""

    def finished(self, index: int, hypotheses: list[Hypothesis]) -> None: ...

    def partial(self, index: int, token_ids: list[int]) -> None: ...

    def failed(self, error: BaseException) -> None: ...


class Request:
    """One RPC request (or one request message of a stream) as the scheduler sees it."""

    def __init__(self, sink: RequestSink, deadline: float | None = None, partial: bool = False) -> None:
        self.sink = sink
        self.deadline = deadline  # time.monotonic() value, or None for no deadline
        self.partial = partial  # the client wants partial output
        self.cancelled = False  # set by the event loop: client gone, deadline hit, or a sibling sentence failed

    def dead(self, now: float | None = None) -> bool:
        if self.cancelled:
            return True
        return self.deadline is not None and (now if now is not None else time.monotonic()) >= self.deadline

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class WorkItem:
    """One sentence of a request: token ids ending with EOS and its decoding options."""

    request: Request
    index: int  # position in the request's texts
    source_ids: Sequence[int]
    options: DecodingOptions
    target_prefix: Sequence[int] = ()  # target tokens forced first (the target language of M2M-100 / NLLB)
    enqueued_at: float = field(default_factory=time.monotonic)
    key: int = field(default_factory=lambda: next(_keys))
    last_partial: int = 0  # tokens of stable prefix already sent

    @property
    def length(self) -> int:
        return len(self.source_ids)
