"""Which waiting sentences join the engine batch next: a token budget, a size cap and length grouping.

A pure function of the queue's head and the running batch, shared by both batching modes so that they differ
only in *when* they admit (continuous: at every decode step; request-level: when the batch is empty).

Cost model: the engine pads every source to the longest one in the batch (encoder input and cross-attention), so
a batch costs ``sentences x longest source`` padded tokens. Selection starts from the oldest waiting sentence (it
is always taken first, which bounds how long any sentence can be passed over) and then prefers sentences of
similar length, to keep padding low. If even the oldest does not fit the running batch, nothing is admitted:
letting shorter ones jump ahead could starve a long sentence forever under continuous refill.

Decoding options never split a batch: the engine's ``DecodingBatch`` takes options per sentence (beam sizes,
length penalties, max lengths and n-best sizes may be mixed), so selection does not look at them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nmtserve.server.work import WorkItem


@dataclass(frozen=True)
class Budget:
    max_sentences: int
    max_tokens: int  # padded source tokens: sentences x longest source
    window: int  # how many of the oldest waiting sentences are considered (bounds selection cost and unfairness)


def padded_tokens(sentences: int, longest: int) -> int:
    return sentences * longest


def select(
    waiting: Sequence[WorkItem],
    budget: Budget,
    running: int = 0,
    running_longest: int = 0,
) -> list[WorkItem]:
    """The sentences of ``waiting`` (oldest first) to admit into a batch that already holds ``running`` sentences
    whose longest source has ``running_longest`` tokens."""
    room = budget.max_sentences - running
    if room <= 0 or not waiting:
        return []
    anchor = waiting[0]
    longest = max(running_longest, anchor.length)
    if padded_tokens(running + 1, longest) > budget.max_tokens:
        return []
    chosen = [anchor]
    candidates = sorted(
        range(1, min(len(waiting), budget.window)), key=lambda i: (abs(waiting[i].length - anchor.length), i)
    )
    for i in candidates:
        if len(chosen) == room:
            break
        item = waiting[i]
        grown = max(longest, item.length)
        if padded_tokens(running + len(chosen) + 1, grown) <= budget.max_tokens:
            chosen.append(item)
            longest = grown
    return chosen


def is_full(waiting: Sequence[WorkItem], budget: Budget) -> bool:
    """Whether the queue already holds a full batch (so an idle engine need not wait for more)."""
    if len(waiting) >= budget.max_sentences:
        return True
    return sum(item.length for item in waiting[: budget.window]) >= budget.max_tokens
