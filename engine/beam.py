"""Host-side beam-search rules for one sentence, on the [rows x k] top-k arrays the step graph returns.

The rules are those of ``nmtserve.model.beam_search`` (CTranslate2's), reproduced exactly:
- the sentence's 2K best (hypothesis, token) candidates are the best of each row's top 2K, merged here;
- of the first K candidates, one ending with EOS (or any, on the last allowed step) becomes a finished
  hypothesis and its slot is refilled by the next candidate that does not end with EOS (if there is none left,
  the slot keeps its candidate);
- the sentence stops with K finished hypotheses, at its max length, or (length_penalty == 0) as soon as the
  best candidate finished and ``num_hypotheses`` are collected;
- scores are float32 sums of log-probs, divided at the end by length ** length_penalty (length counts EOS).
Step 0 runs one row per sentence instead of K copies of BOS: the reference's other K-1 copies score -inf and
never contribute a candidate, so the outcome is the same for a fraction of the work.

A sentence may have a forced target prefix (``Sentence.forced``: M2M-100 and NLLB force the target-language token
first). Its steps are decoded without choice: the one row takes the forced token and its score is unchanged, i.e.
the forced token's log-prob counts as 0, as transformers' ``ForcedBOSTokenLogitsProcessor`` makes it (all other
tokens -inf, the forced one 0 after log-softmax). The forced tokens are part of the hypothesis (and of its length),
as in ``generate()``'s sequences and CTranslate2's ``target_prefix`` results.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nmtserve.engine.decoding import DecodingOptions, Hypothesis


def length_normalized(log_prob: float, length: int, length_penalty: float) -> float:
    """The one score rule of the engine: a finished hypothesis's log-probability over ``length ** penalty``
    (length counts EOS). Ranking, n-best lists and the stable prefix all use it, so they cannot disagree."""
    return log_prob / (length**length_penalty)


@dataclass
class Sentence:
    """Decoding state of one source: its live hypotheses (rows) and what has finished."""

    key: Hashable
    serial: int  # unique within a batch: identifies the sentence's rows of cross K/V on the device
    source_len: int
    options: DecodingOptions
    max_length: int
    step: int = 0  # tokens generated so far = cache slots this sentence's rows have
    tokens: np.ndarray = field(default_factory=lambda: np.zeros((1, 0), np.int64))  # [rows, step], no BOS
    scores: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))  # [rows]
    parents: np.ndarray = field(default_factory=lambda: np.full(1, -1, np.int64))  # [rows], sentence-local
    ranked: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # rows, best hypothesis first
    finished: list[tuple[list[int], float, int]] = field(default_factory=list)
    forced: tuple[int, ...] = ()  # target tokens decoded without choice first (e.g. the target language)
    # one-row decoding (greedy, forced) appends into this [1, max_length] buffer, of which ``tokens`` is a view
    history: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.scores)

    @property
    def forcing(self) -> bool:
        """This step's token is forced: the step graph runs (its cache grows) but its top-k is not read."""
        return self.step < len(self.forced)

    @property
    def forbid_eos(self) -> bool:
        return self.step < self.options.min_length and not self.forcing

    @property
    def plain_step(self) -> bool:
        """This step chooses freely among every token: not forced, EOS not barred."""
        return self.step >= len(self.forced) and self.step >= self.options.min_length

    def finalize(self) -> list[Hypothesis]:
        options = self.options
        ranked = [
            (tokens, length_normalized(log_prob, length, options.length_penalty), log_prob)
            for tokens, log_prob, length in self.finished
        ]
        ranked.sort(key=lambda h: h[1], reverse=True)  # stable, as the reference's list.sort
        if not options.return_scores:
            return [Hypothesis(tokens, None, None) for tokens, _, _ in ranked[: options.num_hypotheses]]
        return [Hypothesis(tokens, score, log_prob) for tokens, score, log_prob in ranked[: options.num_hypotheses]]

    def best_finished(self) -> list[int] | None:
        """Tokens of the finished hypothesis that ranks first so far (the first of equals), or None."""
        best, best_score = None, -np.inf
        for tokens, log_prob, length in self.finished:
            score = length_normalized(log_prob, length, self.options.length_penalty)
            if score > best_score:
                best, best_score = tokens, score
        return best

    def stable_prefix(self) -> list[int]:
        """Token ids (no BOS/EOS) that every possible final best hypothesis starts with: partial output.

        The final answer is the best-scoring finished hypothesis. Every hypothesis that can still finish extends
        one of the live rows, and of those already finished only the current best can still win (the others are
        beaten by it whatever happens next; ties go to the earlier one, as in ``finalize``'s stable sort). So the
        longest common prefix of the live rows and the best finished hypothesis is final. It only ever grows:
        each step's rows extend the previous step's rows, and a new best finished hypothesis extends a previous
        row. Greedy search is the case of one row, whose whole history is stable.
        """
        rows = self.tokens
        if rows.shape[1] == 0:
            return []
        agree = (rows == rows[:1]).all(axis=0)
        length = int(agree.argmin()) if not agree.all() else rows.shape[1]
        prefix = rows[0, :length].tolist()
        finished = self.best_finished()
        if finished is not None:
            common = 0
            for a, b in zip(prefix, finished, strict=False):
                if a != b:
                    break
                common += 1
            prefix = prefix[:common]
        return prefix


def stable_slots(parents: Sequence[int]) -> np.ndarray:
    """The row each new hypothesis (best first) takes, given its parent's row: its parent's own row if no better
    sibling took it, else the first row left free. Rows that keep their hypothesis's history need no cache copy
    (see ``cache.HostCache``); at beam 4 on the dev set 80 % of rows stay, against 47 % with rows in rank order."""
    slots = [-1] * len(parents)
    taken = [False] * len(parents)
    for k, parent in enumerate(parents):
        if parent < len(parents) and not taken[parent]:
            slots[k], taken[parent] = parent, True
    free = iter(row for row, used in enumerate(taken) if not used)
    return np.array([slot if slot >= 0 else next(free) for slot in slots], np.int64)


_ROW_ZERO = np.zeros(1, np.int64)  # a greedy sentence's parent row, shared: the batch never writes to it
_ROW_ZERO.flags.writeable = False


def _advance(sentence: Sentence, parents: np.ndarray, tokens: np.ndarray, scores: np.ndarray) -> None:
    """Extend the hypotheses ``parents`` (rows, best first) by ``tokens``; each new one takes its ``stable_slots``
    row. Only the row layout changes: the ranking, which the beam rules' tie-breaks read, is kept in ``ranked``."""
    slots = stable_slots(parents.tolist()) if len(parents) > 1 else parents
    history = np.empty((len(slots), sentence.step + 1), np.int64)
    history[slots, :-1], history[slots, -1] = sentence.tokens[parents], tokens
    sentence.tokens = history
    sentence.scores = np.empty(len(slots), np.float32)
    sentence.scores[slots] = scores
    sentence.parents = np.empty(len(slots), np.int64)
    sentence.parents[slots] = parents
    sentence.ranked = slots
    sentence.step += 1


def advance_greedy(sentence: Sentence, log_probs: np.ndarray, ids: np.ndarray, eos_id: int) -> bool:
    """Beam 1 with k = 1: the best token either ends the sentence or extends its only row. True when done."""
    token, score = int(ids[0, 0]), sentence.scores[0] + log_probs[0, 0]
    if token == eos_id or sentence.step + 1 == sentence.max_length:
        history = sentence.tokens[0].tolist() + ([] if token == eos_id else [token])
        sentence.finished.append((history, float(score), sentence.step + 1))
        return True
    # ``_advance`` with its one row kept in place, spelled out: this runs once per sentence per step.
    _append_one(sentence, token)
    sentence.scores, sentence.parents = np.array([score], np.float32), _ROW_ZERO
    return False


def _append_one(sentence: Sentence, token: int) -> None:
    """Extend the one row by ``token`` without copying its history (the row's tokens are a view of a buffer
    sized for the longest it may grow; earlier views stay valid, as only later slots are written)."""
    step = sentence.step
    history = sentence.history
    if history is None or sentence.tokens.base is not history:  # the first one-row step: copy what came before
        history = np.empty((1, max(sentence.max_length, step + 1)), np.int64)
        history[:, :step] = sentence.tokens
        sentence.history = history
    history[0, step] = token
    sentence.tokens = history[:, : step + 1]
    sentence.step = step + 1


def advance_greedy_batch(
    sentences: Sequence[Sentence], log_probs: np.ndarray, ids: np.ndarray, eos_id: int
) -> list[bool]:
    """``advance_greedy`` for a whole batch of one-row greedy sentences (sentence i is row i; none forcing or
    barring EOS), with the scores summed in one float32 operation, as the sentences' own sums would be. The
    per-sentence remainder is the history append; the dispatch and slicing per sentence cost about as much again.
    The live sentences' ``parents`` become their row in this step (the cache row the next step extends). True for
    the sentences that finished."""
    tokens = ids[:, 0].tolist()
    scores = np.fromiter((s.scores[0] for s in sentences), np.float32, len(sentences)) + log_probs[:, 0]
    rows = np.arange(len(sentences), dtype=np.int64)
    done = []
    for row, (sentence, token) in enumerate(zip(sentences, tokens, strict=True)):
        if token == eos_id or sentence.step + 1 == sentence.max_length:
            history = sentence.tokens[0].tolist() + ([] if token == eos_id else [token])
            sentence.finished.append((history, float(scores[row]), sentence.step + 1))
            done.append(True)
        else:
            _append_one(sentence, token)
            sentence.scores, sentence.parents = scores[row : row + 1], rows[row : row + 1]
            done.append(False)
    return done


def advance_beam(sentence: Sentence, log_probs: np.ndarray, ids: np.ndarray, vocab: int, eos_id: int) -> bool:
    """Apply one step of the beam rules to ``sentence`` given its rows' sorted top-k. True when done."""
    options = sentence.options
    beam = options.beam_size
    width = 2 * beam
    ranked = sentence.ranked  # the rules see hypotheses best first, as the reference keeps them
    candidates = (sentence.scores[ranked, None] + log_probs[ranked, :width]).ravel()  # float32, as the reference
    flat = (np.arange(sentence.rows, dtype=np.int64)[:, None] * vocab + ids[ranked, :width]).ravel()
    order = np.lexsort((flat, -candidates))[:width]  # best first; ties: lower (rank, token) first
    top_scores, top_flat = candidates[order], flat[order]
    top_tokens, top_rows = top_flat % vocab, ranked[top_flat // vocab]

    last_step = sentence.step + 1 == sentence.max_length
    spare, top_finished = beam, False
    chosen: list[int] = []
    for k in range(beam):
        position = k
        token = int(top_tokens[k])
        if token == eos_id or last_step:
            history = sentence.tokens[top_rows[k]].tolist() + ([] if token == eos_id else [token])
            sentence.finished.append((history, float(top_scores[k]), sentence.step + 1))
            top_finished |= k == 0
            while spare < width and int(top_tokens[spare]) == eos_id:
                spare += 1
            if spare < width:  # as in CTranslate2, a slot with no spare left keeps its candidate
                position, spare = spare, spare + 1
        chosen.append(position)
    done = last_step or len(sentence.finished) >= beam
    if options.length_penalty == 0:
        done |= top_finished and len(sentence.finished) >= options.num_hypotheses
    if not done:
        pick = np.array(chosen)
        _advance(sentence, top_rows[pick], top_tokens[pick], top_scores[pick])
    return done


def advance_forced(sentence: Sentence, eos_id: int) -> bool:
    """Extend the one row by the forced token of this step, its log-prob counted as 0. True when done (the max
    length reached, or a forced EOS)."""
    token = sentence.forced[sentence.step]
    if token == eos_id or sentence.step + 1 == sentence.max_length:
        history = sentence.tokens[0].tolist() + ([] if token == eos_id else [token])
        sentence.finished.append((history, float(sentence.scores[0]), sentence.step + 1))
        return True
    _append_one(sentence, token)
    sentence.parents = _ROW_ZERO
    return False


def advance(sentence: Sentence, log_probs: np.ndarray, ids: np.ndarray, vocab: int, eos_id: int) -> bool:
    """One step for ``sentence`` from its rows of the step graph's output; True when it has finished."""
    if sentence.forcing:
        return advance_forced(sentence, eos_id)
    if sentence.options.beam_size == 1:
        return advance_greedy(sentence, log_probs, ids, eos_id)
    return advance_beam(sentence, log_probs, ids, vocab, eos_id)
