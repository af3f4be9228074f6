"""Callbacks between the request path and its front doors: partial output as text, and the routed model as a
metrics label.

The engine thread reports a sentence's stable prefix as token ids; only the request path knows which model (and so
which tokenizer) decoded it, so it turns them into text here before a front door (gRPC stream, HTTP SSE) sees them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nmtserve.engine.tokenizer import Tokenizer
from nmtserve.server.sink import PartialCallback
from nmtserve.server.tracking import RequestTimer

# (text index, text so far, complete): ``complete`` is False for a sentence's stable prefix (it may end inside a
# word) and True for a document's text (whole sentences)
PartialSender = Callable[[int, str, bool], Awaitable[None]]


def labeller(call: RequestTimer) -> Callable[[str, str], None]:
    """An ``on_routed`` that labels the request's metrics with the model it was routed to."""

    def label(name: str, version: str) -> None:
        call.model = name

    return label


def sentence_sender(send_partial: PartialSender | None, tokenizer: Tokenizer) -> PartialCallback | None:
    """The engine thread's partials (token ids of a stable prefix) as text, decoded by the routed model."""
    if send_partial is None:
        return None
    sender = send_partial

    async def send(index: int, token_ids: list[int]) -> None:
        await sender(index, tokenizer.decode(token_ids), False)

    return send


def document_sender(send_partial: PartialSender | None) -> Callable[[int, str], Awaitable[None]] | None:
    """A document's partials (its text so far, whole sentences) for ``send_partial``."""
    if send_partial is None:
        return None
    sender = send_partial

    async def send(index: int, text: str) -> None:
        await sender(index, text, True)

    return send
