"""A running batch of sentences decoded step by step: the unit a continuous-batching server drives.

Sentences can be added between any two steps and leave the batch the step they finish (or are cancelled). The
decoder cache, the cross-attention K/V and the masks live on the device for the whole life of the batch; per
step the host sends token ids, positions and the row ``reorder``, and reads back [rows x k] top-k log-probs
(one more than beam search needs while some sentence is below its ``min_length``: the host drops EOS from
those rows, which is cheaper than masking the whole vocabulary in the graph). Cross-attention K/V are kept once
per sentence, not per hypothesis: a beam reads them through query slots (``cross_slots``), so beams expanding
or reordering move nothing. Cross rows join and leave through ``cross.py``. The self-attention cache
(``cache.py``) is reordered when rows moved (beam search nearly every step; greedy decoding only when sentences
join or leave) and trimmed when the longest history has left. Both live on CPU in host buffers the engine owns,
copying only the rows that moved, and on CUDA in device values moved by small graphs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import count

import numpy as np
import onnxruntime as ort

from nmtserve.engine.beam import Sentence, advance, advance_greedy_batch
from nmtserve.engine.cache import GraphCache, HostCache, RaggedHostCache
from nmtserve.engine.cross import GraphCross, HostCross
from nmtserve.engine.decoding import DecodingOptions, Hypothesis
from nmtserve.engine.model_dir import DECODER_STEP, ENCODER
from nmtserve.engine.runtime import Binding, Runtime
from nmtserve.engine.shortlist import BatchVocabulary


def cross_slots(rows_per_sentence: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The step graph's ``query_rows`` [N, W] and ``row_slots`` [R] for sentences owning consecutive rows.

    Cross-attention K/V are kept once per sentence; its hypotheses' queries are laid out in W = max rows slots per
    sentence (a sentence with fewer rows repeats its last row in the spare slots, whose output nobody reads).
    Cached: a batch's row layout repeats step after step (greedy decoding: all ones). The arrays are shared, so
    they are made read-only.
    """
    return _cross_slots(tuple(rows_per_sentence))


@lru_cache(maxsize=256)
def _cross_slots(rows_per_sentence: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    width = max(rows_per_sentence)
    starts = np.cumsum([0, *rows_per_sentence[:-1]])
    counts = np.asarray(rows_per_sentence)
    slot = np.arange(width)
    query_rows = starts[:, None] + np.minimum(slot[None, :], counts[:, None] - 1)
    row_slots = np.concatenate([n * width + np.arange(c) for n, c in enumerate(rows_per_sentence)])
    query_rows, row_slots = query_rows.astype(np.int64), row_slots.astype(np.int64)
    query_rows.flags.writeable = row_slots.flags.writeable = False
    return query_rows, row_slots


ENCODER_CALL_TOKENS = 24  # an encoder call's fixed cost and the append of its rows, in padded source tokens (CPU)


def encoder_calls(lengths: Sequence[int], call_tokens: int | None) -> list[slice]:
    """Consecutive runs of the sources (by their ``lengths``) to encode one call each.

    On CPU the encoder's cost is its padded tokens (calls x longest source: 0.09 ms a token for the demo model, and
    0.7 ms a call), so sentences of mixed lengths that join a batch together (the server takes what has arrived)
    are cheaper encoded in length runs. The split minimises padded tokens plus ``call_tokens`` per call, over
    consecutive runs only, so that the sentences keep their order (exact dynamic programme; a batch is a few dozen
    sentences). ``call_tokens`` None (a GPU, where a call's fixed cost dominates): one call.
    """
    n = len(lengths)
    if call_tokens is None or n < 2 or n * max(lengths) - sum(lengths) <= call_tokens:
        return [slice(0, n)]
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest split of the first j sources
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = 0
        for i in range(j - 1, -1, -1):  # the last call holds sources i..j-1
            longest = max(longest, lengths[i])
            cost = best[i] + call_tokens + (j - i) * longest
            if cost < best[j]:
                best[j], start[j] = cost, i
    calls, j = [], n
    while j > 0:
        calls.append(slice(start[j], j))
        j = start[j]
    return calls[::-1]


def without_eos(log_probs: np.ndarray, ids: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop EOS from each row's sorted top-k (rows without it drop their last, least likely candidate): k - 1."""
    keep = ids != eos_id
    keep[keep.all(axis=1), -1] = False
    rows = len(ids)
    return log_probs[keep].reshape(rows, -1), ids[keep].reshape(rows, -1)


def fill_holes(slots: Sequence[tuple[Sentence | None, int]]) -> list[Sentence]:
    """The live sentences in their next row order, given this step's (sentence or None where one left, its rows).

    A sentence that left is replaced by the last live sentence when that one needs exactly the rows it freed: the
    rows in between then stay where they are, and the cache copies the moved sentence's rows only, instead of
    shifting every row after the hole (in continuous batching sentences leave nearly every step). Otherwise the
    rows after a hole shift down, as they always did. Results do not depend on the order of sentences.
    """
    order = list(slots)
    for hole, (sentence, rows) in enumerate(order):
        if sentence is not None:
            continue
        last = next((j for j in range(len(order) - 1, hole, -1) if order[j][0] is not None), None)
        if last is None:
            break
        tail = order[last][0]
        if tail is not None and tail.rows == rows:
            order[hole], order[last] = order[last], (None, rows)
    return [sentence for sentence, _ in order if sentence is not None]


@lru_cache(maxsize=64)
def _k_feed(k: int) -> np.ndarray:
    """The step's ``k`` input, one shared read-only array per value (so that the step's binding keeps it)."""
    feed = np.array([k], np.int64)
    feed.flags.writeable = False
    return feed


class TopkBuffers:
    """Host arrays the step writes its top-k into (CPU): bound as outputs, they spare onnxruntime's allocation and
    the wrapping of every output value after the run. On CUDA the outputs are allocated on the host by onnxruntime.
    The arrays are reused by the next step: read them before it."""

    def __init__(self, on_cpu: bool) -> None:
        self._on_cpu = on_cpu
        self._log_probs = np.empty(0, np.float32)
        self._ids = np.empty(0, np.int64)
        self._shape = (0, 0)
        self._values: dict[str, ort.OrtValue] = {}

    def bind(self, rows: int, k: int) -> dict[str, ort.OrtValue]:
        if not self._on_cpu:
            return {}
        if (rows, k) != self._shape:  # the same shape: the values bound last step
            if self._log_probs.size < rows * k:
                self._log_probs, self._ids = np.empty(rows * k * 2, np.float32), np.empty(rows * k * 2, np.int64)
            self._shape = (rows, k)
            self._values = {
                "topk_log_probs": ort.OrtValue.ortvalue_from_numpy(self._log_probs[: rows * k].reshape(rows, k)),
                "topk_ids": ort.OrtValue.ortvalue_from_numpy(self._ids[: rows * k].reshape(rows, k)),
            }
        return self._values

    def read(self, outputs: dict[str, ort.OrtValue]) -> tuple[np.ndarray, np.ndarray]:
        """[rows, k] log-probs and token ids of the step just run."""
        if not self._on_cpu:
            return outputs["topk_log_probs"].numpy(), outputs["topk_ids"].numpy()
        rows, k = self._shape
        return self._log_probs[: rows * k].reshape(rows, k), self._ids[: rows * k].reshape(rows, k)


@dataclass(frozen=True)
class Finished:
    """A sentence that left the batch, with its n-best list (best first)."""

    key: Hashable
    hypotheses: list[Hypothesis]


class DecodingBatch:
    """Holds the running batch; ``add`` sentences, call ``step`` until ``len(batch) == 0``, collect what finishes.

    Not thread-safe: one owner (e.g. the server's scheduler thread) calls ``add``, ``cancel`` and ``step``.
    """

    def __init__(self, runtime: Runtime, in_place: bool | None = None) -> None:
        """``in_place``: keep the self-attention cache in host memory the engine owns (``HostCache``); by default
        on CPU only, where host memory is the device's."""
        self._runtime = runtime
        self._info = runtime.info
        self._serials = count()
        self._sentences: list[Sentence] = []  # in row order
        on_cpu = runtime.config.device == "cpu"
        if in_place and not on_cpu:
            raise ValueError("in_place=True keeps the cache in host memory: CPU only (it would cross PCIe every step)")
        # cross K/V of every layer and the source mask, one row per sentence in row order
        self._cross = HostCross(runtime) if (on_cpu if in_place is None else in_place) else GraphCross(runtime)
        self._cache: GraphCache | HostCache | RaggedHostCache
        if runtime.info.cache_layout == "ragged":  # the graph writes the cache in place: host buffers it is
            if in_place is False or not on_cpu:
                raise ValueError("a ragged export keeps its cache in host buffers: CPU and in_place only")
            self._cache = RaggedHostCache(runtime)
        else:
            self._cache = HostCache(runtime) if (on_cpu if in_place is None else in_place) else GraphCache(runtime)
        self._topk = TopkBuffers(on_cpu)
        self._step_binding = Binding(runtime, DECODER_STEP)  # this batch's own: batches may step concurrently
        self.encoder_call_tokens = ENCODER_CALL_TOKENS if on_cpu else None  # see encoder_calls
        shortlist = runtime.shortlist
        self._vocabulary = BatchVocabulary(shortlist, runtime.upload) if shortlist is not None else None

    def __len__(self) -> int:
        return len(self._sentences)

    @property
    def rows(self) -> int:
        """Hypotheses decoded per step right now (the decoder's batch size)."""
        return sum(s.rows for s in self._sentences)

    @property
    def vocabulary_size(self) -> int:
        """Target tokens the next step may produce: the shortlist union (0 before any step); else the vocabulary."""
        return self._vocabulary.size if self._vocabulary is not None else self._info.vocab_size

    @property
    def keys(self) -> list[Hashable]:
        return [s.key for s in self._sentences]

    @property
    def sentences(self) -> tuple[Sentence, ...]:
        """The live sentences in row order (read-only view: e.g. to stream the stable prefix of a translation)."""
        return tuple(self._sentences)

    def add(
        self,
        sources: Sequence[Sequence[int]],
        options: DecodingOptions | Sequence[DecodingOptions],
        keys: Sequence[Hashable] | None = None,
        target_prefixes: Sequence[Sequence[int]] | None = None,
    ) -> list[Hashable]:
        """Encode ``sources`` (token ids ending with EOS) now; they decode from the next ``step`` on.

        ``options`` may differ per sentence (beam sizes may be mixed). ``keys`` default to running integers.
        ``target_prefixes``: per sentence, target tokens forced before the search chooses any (the target-language
        token of M2M-100/NLLB), so that sentences for different target languages share the batch; None: none.
        """
        if not sources:
            return []
        info = self._info
        per_sentence = [options] * len(sources) if isinstance(options, DecodingOptions) else list(options)
        if len(per_sentence) != len(sources):
            raise ValueError("one DecodingOptions per source, or a single one for all")
        keys = list(keys) if keys is not None else [f"s{next(self._serials)}" for _ in sources]
        if len(keys) != len(sources):
            raise ValueError("one key per source")
        prefixes = [tuple(p) for p in target_prefixes] if target_prefixes is not None else [()] * len(sources)
        if len(prefixes) != len(sources):
            raise ValueError("one target prefix per source (empty for none), or None for all")
        if any(p and (min(p) < 0 or max(p) >= info.vocab_size) for p in prefixes):
            raise ValueError(f"target prefix token ids must be in 0..{info.vocab_size - 1}")
        if len(set(keys) | {s.key for s in self._sentences}) != len(keys) + len(self._sentences):
            raise ValueError("keys must be unique among the sentences of a batch")
        for ids in sources:
            if not 1 <= len(ids) <= info.max_positions:
                raise ValueError(f"a source must have 1..{info.max_positions} tokens (EOS included), not {len(ids)}")
            if min(ids) < 0 or max(ids) >= info.vocab_size:
                raise ValueError(f"source token ids must be in 0..{info.vocab_size - 1}")
        decodable = info.vocab_size if self._vocabulary is None else min(info.vocab_size, self._vocabulary.smallest)
        for opts in set(per_sentence):
            opts.validate(decodable)

        listed = list(sources)
        serials = [next(self._serials) for _ in listed]
        for call in encoder_calls([len(ids) for ids in listed], self.encoder_call_tokens):
            self._encode(serials[call], listed[call])
        for ids, opts, key, forced, serial in zip(sources, per_sentence, keys, prefixes, serials, strict=True):
            # Positions must stay inside the model's table: the reference would fail there, we stop instead.
            max_length = min(opts.max_length_for(len(ids)), info.max_positions)
            self._sentences.append(Sentence(key, serial, len(ids), opts, max_length, forced=forced))
            if self._vocabulary is not None:
                self._vocabulary.add(serial, ids, forced)
        return keys

    def _encode(self, serials: list[int], sources: Sequence[Sequence[int]]) -> None:
        """Run the encoder on ``sources`` and append their cross K/V rows (in order) to the batch's."""
        length = max(len(ids) for ids in sources)
        source_ids = np.full((len(sources), length), self._info.pad_id, np.int64)
        for i, ids in enumerate(sources):
            source_ids[i, : len(ids)] = ids
        encoded = self._runtime.run(ENCODER, {"source_ids": source_ids})
        self._cross.append(serials, encoded, source_ids != self._info.pad_id)

    def cancel(self, key: Hashable) -> bool:
        """Drop a sentence (e.g. its client went away); its rows leave at the next step."""
        for i, sentence in enumerate(self._sentences):
            if sentence.key == key:
                del self._sentences[i]
                if not self._sentences:
                    self._clear()
                return True
        return False

    def _clear(self) -> None:
        self._cross.clear()
        self._cache.reset()
        if self._vocabulary is not None:
            self._vocabulary.keep([])

    def step(self) -> list[Finished]:
        """Decode one token for every live hypothesis; return the sentences that finished (they leave the batch)."""
        if not self._sentences:
            return []
        info = self._info
        rows = tuple(s.rows for s in self._sentences)
        start = info.decoder_start_id
        tokens = [s.tokens[:, -1] if s.step else np.full(s.rows, start, np.int64) for s in self._sentences]
        positions = np.repeat(np.array([s.step for s in self._sentences], np.int64), rows)
        reorder = [s.parents for s in self._sentences]  # already global cache rows (or -1 for a new sentence)
        # the live sentences' cross rows in row order, cut to the longest remaining source
        self._cross.align([s.serial for s in self._sentences], max(s.source_len for s in self._sentences))
        query_rows, row_slots = cross_slots(rows)
        self._cache.reorder(np.concatenate(reorder), positions)  # a row's position is its history's length
        self._cache.trim(max(s.step for s in self._sentences))  # left-padded rows: older slots are unused
        k = max((s.options.candidates_per_row for s in self._sentences if not s.forcing), default=1)
        k += any(s.forbid_eos for s in self._sentences)  # one spare candidate to replace a banned EOS
        vocabulary = self._vocabulary.feeds() if self._vocabulary is not None else {}
        k = min(self._vocabulary.size if self._vocabulary is not None else info.vocab_size, k)
        out = self._step_binding.run(
            {
                "token_ids": np.concatenate(tokens),
                "positions": positions,
                "query_rows": query_rows,
                "row_slots": row_slots,
                **self._cache.feeds(),
                **self._cross.feeds(),
                **vocabulary,
                "k": _k_feed(k),
            },
            host_outputs=("topk_log_probs", "topk_ids", *self._cache.host_outputs()),
            bound_outputs={**self._cache.step_outputs(len(row_slots)), **self._topk.bind(len(row_slots), k)},
        )
        self._cache.advance(out, len(row_slots))
        log_probs, ids = self._topk.read(out)

        finished: list[Finished] = []
        slots: list[tuple[Sentence | None, int]] = []  # row order of this step: (sentence, or None if it left; rows)
        if len(row_slots) == len(rows) and all(s.options.beam_size == 1 and s.plain_step for s in self._sentences):
            for sentence, done in zip(
                self._sentences, advance_greedy_batch(self._sentences, log_probs, ids, info.eos_id), strict=True
            ):
                if done:
                    finished.append(Finished(sentence.key, sentence.finalize()))
                slots.append((None if done else sentence, 1))
            return self._leave(slots, finished)
        offset = 0
        for sentence in self._sentences:
            span = slice(offset, offset + sentence.rows)
            offset += sentence.rows
            sentence_log_probs, sentence_ids = log_probs[span], ids[span]
            if sentence.forbid_eos:  # never while forcing: advance() does not read a forced step's top-k
                sentence_log_probs, sentence_ids = without_eos(sentence_log_probs, sentence_ids, info.eos_id)
            if advance(sentence, sentence_log_probs, sentence_ids, info.vocab_size, info.eos_id):
                finished.append(Finished(sentence.key, sentence.finalize()))
                slots.append((None, span.stop - span.start))
            else:
                sentence.parents = sentence.parents + span.start  # sentence-local -> rows of the new cache
                slots.append((sentence, span.stop - span.start))
        return self._leave(slots, finished)

    def _leave(self, slots: list[tuple[Sentence | None, int]], finished: list[Finished]) -> list[Finished]:
        """The sentences that finished this step leave; the live ones take their rows for the next."""
        self._sentences = live = fill_holes(slots)
        if not live:
            self._clear()
        elif finished and self._vocabulary is not None:
            self._vocabulary.keep([s.serial for s in live])
        return finished
