"""Tokenized corpora and token-budget batches for training.

Sentences are tokenized once and stored as flat int32 arrays plus offsets (``.npz``, loaded with
``allow_pickle=False``). Batches hold sentences of similar length, bounded by a token budget that counts
padding, because padding is compute the GPU/CPU spends for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmtserve.engine.tokenizer import Tokenizer


@dataclass
class TokenizedPairs:
    source: list[np.ndarray]
    target: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.source)


def _pack(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def _unpack(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def read_lines(path: Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def tokenize_split(corpus: Path, split: str, tokenizer: Tokenizer, cache: Path) -> TokenizedPairs:
    """Tokenize ``{split}.en``/``{split}.de`` once; later runs (and resumed runs) read the cached arrays."""
    cache_file = Path(cache) / f"{split}.tokens.npz"
    if cache_file.is_file():
        arrays = np.load(cache_file, allow_pickle=False)
        return TokenizedPairs(
            _unpack(arrays["source"], arrays["source_offsets"]),
            _unpack(arrays["target"], arrays["target_offsets"]),
        )
    source = tokenizer.encode_batch(read_lines(Path(corpus) / f"{split}.en"))
    target = tokenizer.encode_batch(read_lines(Path(corpus) / f"{split}.de"))
    if len(source) != len(target):
        raise ValueError(f"{split}: {len(source)} English lines but {len(target)} German lines")
    src_flat, src_offsets = _pack(source)
    tgt_flat, tgt_offsets = _pack(target)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache_file, source=src_flat, source_offsets=src_offsets, target=tgt_flat, target_offsets=tgt_offsets)
    return tokenize_split(corpus, split, tokenizer, cache)


def make_batches(pairs: TokenizedPairs, max_tokens: int, max_length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of similar-length pairs; ``max_tokens`` bounds rows x longest side (+2 for BOS/EOS)."""
    lengths = np.array([max(len(s), len(t)) + 2 for s, t in zip(pairs.source, pairs.target, strict=True)])
    keep = np.flatnonzero(lengths <= max_length)
    # A little noise in the sort key varies the batch composition from epoch to epoch.
    order = keep[np.argsort(lengths[keep] + rng.uniform(0, 1, size=len(keep)), kind="stable")]
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * lengths[order[end]] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    rng.shuffle(batches)
    return batches


def collate(
    pairs: TokenizedPairs, indices: np.ndarray, pad_id: int, bos_id: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source + EOS, BOS + target (decoder input), target + EOS (what the decoder must predict)."""
    sources = [pairs.source[i] for i in indices]
    targets = [pairs.target[i] for i in indices]
    source = np.full((len(indices), max(map(len, sources)) + 1), pad_id, dtype=np.int64)
    target_in = np.full((len(indices), max(map(len, targets)) + 1), pad_id, dtype=np.int64)
    target_out = target_in.copy()
    for row, (s, t) in enumerate(zip(sources, targets, strict=True)):
        source[row, : len(s)], source[row, len(s)] = s, eos_id
        target_in[row, 0], target_in[row, 1 : len(t) + 1] = bos_id, t
        target_out[row, : len(t)], target_out[row, len(t)] = t, eos_id
    return source, target_in, target_out
