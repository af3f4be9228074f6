"""Partial output under beam search: the prefix of the translation that no live hypothesis can still change.

The final answer is the best-scoring finished hypothesis. Every hypothesis that can still finish extends one of
the live beam rows, and among the hypotheses already finished only the current best can still win (the others
are beaten by it whatever happens next; ties go to the earlier one, as in the engine's stable sort). So the
longest common prefix of the live rows and the best finished hypothesis is final. It only ever grows: each step's
rows extend the previous step's rows and a new best finished hypothesis extends a previous row. Greedy search is
the special case of one row, whose whole history is stable.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from nmtserve.server.engine import DecodingBatch
from nmtserve.server.engine.beam import Sentence


def live_sentences(batch: DecodingBatch) -> dict[Hashable, Sentence]:
    """The batch's sentences by key.

    Reads ``DecodingBatch._sentences``: the engine has no public accessor yet (a ``stable_prefix(key)`` method on
    ``DecodingBatch`` would remove this coupling).
    """
    return {sentence.key: sentence for sentence in batch._sentences}


def best_finished(sentence: Sentence) -> list[int] | None:
    """Tokens of the finished hypothesis that ranks first so far (the first of equals), or None."""
    best, best_score = None, -np.inf
    penalty = sentence.options.length_penalty
    for tokens, log_prob, length in sentence.finished:
        score = log_prob / (length**penalty)
        if score > best_score:
            best, best_score = tokens, score
    return best


def stable_prefix(sentence: Sentence) -> list[int]:
    """Token ids (no BOS/EOS) that every possible final best hypothesis of ``sentence`` starts with."""
    rows = sentence.tokens
    if rows.shape[1] == 0:
        return []
    agree = (rows == rows[:1]).all(axis=0)
    length = int(agree.argmin()) if not agree.all() else rows.shape[1]
    prefix = rows[0, :length].tolist()
    finished = best_finished(sentence)
    if finished is not None:
        common = 0
        for a, b in zip(prefix, finished, strict=False):
            if a != b:
                break
            common += 1
        prefix = prefix[:common]
    return prefix
