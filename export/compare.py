"""Acceptance checks of an export with the engine: parity and speed against PyTorch, BLEU against the fp32 export.

These drive real data through both decoders, so they live beside the exporter (they need torch for the
reference) rather than in the torch-free engine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch

from nmtserve.engine import DecodingOptions, Engine, Hypothesis
from nmtserve.model.beam_search import beam_search
from nmtserve.model.checkpoint import load_checkpoint


@dataclass(frozen=True)
class ParityReport:
    sentences: int
    identical_best: float  # fraction of sentences whose best hypothesis is token-identical
    max_score_diff: float  # over sentences with identical best hypotheses
    reference_seconds: float
    engine_seconds: float
    output_tokens: int  # tokens of the engine's best hypotheses, EOS included

    @property
    def reference_sentences_per_s(self) -> float:
        return self.sentences / self.reference_seconds

    @property
    def engine_sentences_per_s(self) -> float:
        return self.sentences / self.engine_seconds

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "reference_sentences_per_s": round(self.reference_sentences_per_s, 2),
            "engine_sentences_per_s": round(self.engine_sentences_per_s, 2),
            "reference_tokens_per_s": round(self.output_tokens / self.reference_seconds, 1),
            "engine_tokens_per_s": round(self.output_tokens / self.engine_seconds, 1),
        }


def compare_with_reference(
    checkpoint_dir: Path,
    model_dir: Path,
    texts: list[str],
    options: DecodingOptions | None = None,
    batch_size: int = 32,
    threads: int | None = None,
) -> ParityReport:
    """Translate ``texts`` with ``model.beam_search`` (length-sorted batches of ``batch_size``, as the reference
    evaluation does) and with the engine (a running batch of at most ``batch_size``); compare and time both."""
    options = options or DecodingOptions()
    model, _, _ = load_checkpoint(checkpoint_dir)
    engine = Engine.load(model_dir, threads=threads)
    if threads:
        torch.set_num_threads(threads)
    sources = engine.encode_texts(texts)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    start = time.perf_counter()
    reference: list[list[Hypothesis]] = [[] for _ in sources]  # each filled below
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        for i, nbest in zip(chunk, beam_search(model, [sources[i] for i in chunk], options), strict=True):
            reference[i] = nbest
    reference_seconds = time.perf_counter() - start

    start = time.perf_counter()
    got = engine.translate_ids(sources, options, max_batch_size=batch_size)
    engine_seconds = time.perf_counter() - start

    same = [r[0].token_ids == g[0].token_ids for r, g in zip(reference, got, strict=True)]
    diffs = [
        abs(cast(float, r[0].score) - cast(float, g[0].score))
        for r, g, s in zip(reference, got, same, strict=True)
        if s
    ]
    return ParityReport(
        sentences=len(sources),
        identical_best=sum(same) / max(1, len(same)),
        max_score_diff=max(diffs, default=0.0),
        reference_seconds=reference_seconds,
        engine_seconds=engine_seconds,
        output_tokens=sum(len(g[0].token_ids) + 1 for g in got),
    )
