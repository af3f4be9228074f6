"""The vocabulary shortlist at decode time: which target tokens a running batch may produce, and the output
projection's columns for them (the table and graph rewrite are made by ``export/shortlist.py``).

A batch's vocabulary is the union over its live sentences of their candidates: the always-kept frequent tokens,
the special tokens, the table's entries for each of the sentence's source tokens, and its forced target prefix.
The projection's columns are gathered once when a sentence joins, not per step; a sentence leaving does not
shrink the union until the next join (a superset is still correct: it only normalises over more tokens).
Log-probabilities are normalised over the union, so a sentence's scores depend on its batch neighbours, as in
CTranslate2 with a vocabulary map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

SHORTLIST_FILE = "shortlist.npz"
VOCAB_IDS = "vocab_ids"  # int64 [V']: the global token id of each subset column
VOCAB_PREFIX = "vocab."  # graph inputs "vocab.<initializer>": that initializer's subset columns


@dataclass(frozen=True)
class Shortlist:
    """The lexical table and the projection tensors it selects columns of (read once per model)."""

    offsets: np.ndarray  # int64 [V + 1], CSR over source tokens
    targets: np.ndarray  # int32 [nnz]
    base: np.ndarray  # int64: in every sentence's list (frequent targets and special tokens), sorted
    columns: dict[str, tuple[np.ndarray, int]]  # graph input -> (the full tensor, the axis of the vocabulary)
    vocab_size: int
    whole_vocabulary: bool = False

    @classmethod
    def load(cls, directory: Path, inputs: Mapping[str, int], vocab_size: int, special: Sequence[int]) -> Shortlist:
        """``inputs``: the graph inputs the manifest lists, each with the axis its vocabulary is on. No pickle:
        ``allow_pickle=False``."""
        with np.load(Path(directory) / SHORTLIST_FILE, allow_pickle=False) as data:
            offsets, targets, always = data["offsets"], data["targets"], data["always"]
            columns = {name: (data[f"columns/{name}"], axis) for name, axis in inputs.items()}
        if len(offsets) != vocab_size + 1 or (len(targets) and int(targets.max()) >= vocab_size):
            raise ValueError(f"{directory / SHORTLIST_FILE}: the table does not fit a {vocab_size}-token vocabulary")
        for name, (array, axis) in columns.items():
            if array.shape[axis] != vocab_size:
                raise ValueError(
                    f"{SHORTLIST_FILE}: {name} has {array.shape[axis]} tokens on axis {axis}, not {vocab_size}"
                )
        base = np.union1d(always.astype(np.int64), np.asarray(special, np.int64))
        return cls(offsets.astype(np.int64), targets, base, columns, vocab_size)

    def covering_everything(self) -> Shortlist:
        """The same model with every token always in the shortlist: equal to the full vocabulary (a check)."""
        return replace(self, whole_vocabulary=True)

    def candidates(self, source_ids: Sequence[int], forced: Sequence[int] = ()) -> np.ndarray:
        """Sorted unique target ids one sentence may produce."""
        if self.whole_vocabulary:
            return np.arange(self.vocab_size, dtype=np.int64)
        ids = np.asarray(source_ids, np.int64)
        spans = [self.targets[self.offsets[s] : self.offsets[s + 1]] for s in np.unique(ids)]
        return np.unique(np.concatenate([self.base, *spans, np.asarray(forced, np.int64)]))


class BatchVocabulary:
    """The union of a running batch's candidates and the step inputs for it (cached until a sentence joins)."""

    def __init__(self, shortlist: Shortlist, upload: Callable[[np.ndarray], ort.OrtValue]) -> None:
        self._shortlist, self._upload = shortlist, upload
        self._per_sentence: dict[int, np.ndarray] = {}
        self._feeds: dict[str, ort.OrtValue] | None = None
        self.size = 0
        self.smallest = len(shortlist.base)  # in every sentence's list: what 2 x beam_size must fit in

    def add(self, serial: int, source_ids: Sequence[int], forced: Sequence[int]) -> None:
        self._per_sentence[serial] = self._shortlist.candidates(source_ids, forced)
        self._feeds = None

    def keep(self, serials: Sequence[int]) -> None:
        """Forget sentences that left (the union shrinks at the next join)."""
        live = set(serials)
        self._per_sentence = {s: ids for s, ids in self._per_sentence.items() if s in live}
        if not self._per_sentence:
            self._feeds, self.size = None, 0

    def feeds(self) -> dict[str, ort.OrtValue]:
        if self._feeds is None:
            ids = np.unique(np.concatenate(list(self._per_sentence.values())))
            self._feeds = {
                name: self._upload(np.take(array, ids, axis=axis))
                for name, (array, axis) in self._shortlist.columns.items()
            }
            self._feeds[VOCAB_IDS] = self._upload(ids)
            self.size = len(ids)
        return self._feeds
