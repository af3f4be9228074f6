"""Which waiting sentences join the engine batch next: a fair share per request, a token budget, a size cap and
length grouping.

A pure function of the queue's head and the running batch, shared by both batching modes so that they differ
only in *when* they admit (continuous: at every decode step; request-level: when the batch is empty).

Cost model: the engine pads every source to the longest one in the batch (encoder input and cross-attention), so
a batch costs ``sentences x longest source`` padded tokens. Selection starts from the oldest waiting sentence (it
is always taken first, which bounds how long any sentence can be passed over). If even the oldest does not fit
the running batch, nothing is admitted: letting shorter ones jump ahead could starve a long sentence forever
under continuous refill.

Fair share: the rest of the batch is dealt out round robin over the requests that have sentences waiting, so a
200-sentence page cannot fill every batch while a one-sentence request waits behind it (first in, first out gave
other clients 6.8 sentences/s while a 52-sentence page was in flight). Each request's sentences are ranked by how
close their length is to the oldest one's; the batch takes every request's best-ranked sentence before any
request's second, and so on. Length grouping thus still decides *which* of a request's sentences go together,
and the token budget still bounds padding; what fairness costs is that a short request's sentence may join a
batch of longer ones. The queue hands ``select`` a window that is itself fair (``fair_window``), so requests
behind a big one are seen at all, and selection costs O(window log window) whatever the queue holds.

Decoding options never split a batch: the engine's ``DecodingBatch`` takes options per sentence (beam sizes,
length penalties, max lengths and n-best sizes may be mixed), so selection does not look at them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

from nmtserve.server.work import WorkItem


@dataclass(frozen=True)
class Budget:
    max_sentences: int
    max_tokens: int  # padded source tokens: sentences x longest source
    window: int  # how many waiting sentences are considered (bounds selection cost)


def padded_tokens(sentences: int, longest: int) -> int:
    return sentences * longest


def fair_window(lanes: Iterable[Sequence[WorkItem]], window: int) -> list[WorkItem]:
    """Up to ``window`` sentences from the per-request ``lanes`` (requests in arrival order, each lane oldest
    first), dealt round robin: every lane's first sentence, then every lane's second, ... Returned in arrival
    order (lane by lane), so the oldest sentence comes first. Looks at no more than ``window`` lanes."""
    heads = [lane for lane in islice(lanes, window) if lane]
    counts = [0] * len(heads)
    total, depth = 0, 0
    while total < window:
        grew = False
        for i, lane in enumerate(heads):
            if depth < len(lane):
                counts[i] += 1
                total += 1
                grew = True
                if total == window:
                    break
        if not grew:
            break
        depth += 1
    return [item for lane, count in zip(heads, counts, strict=True) for item in lane[:count]]


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
    if room == 1:
        return chosen
    by_closeness = sorted(
        range(1, min(len(waiting), budget.window)), key=lambda i: (abs(waiting[i].length - anchor.length), i)
    )
    dealt: dict[int, int] = {id(anchor.request): 1}  # sentences of each request ranked so far (the anchor's: 1)
    rank: dict[int, int] = {}
    for i in by_closeness:
        request = id(waiting[i].request)
        rank[i] = dealt.get(request, 0)
        dealt[request] = rank[i] + 1
    for i in sorted(by_closeness, key=lambda i: rank[i]):  # stable: closeness order within a round
        if len(chosen) == room:
            break
        item = waiting[i]
        grown = max(longest, item.length)
        if padded_tokens(running + len(chosen) + 1, grown) <= budget.max_tokens:
            chosen.append(item)
            longest = grown
    return chosen


def is_full(waiting: Sequence[WorkItem], budget: Budget) -> bool:
    """Whether the queue already holds a full batch (so an idle engine need not wait for more); ``waiting`` is
    the window selection would see."""
    if len(waiting) >= budget.max_sentences:
        return True
    return sum(item.length for item in waiting[: budget.window]) >= budget.max_tokens
