"""One calling convention for every decoder under test: ``translate(sources, options, max_batch_size) -> ids``.

The benchmark parts take these functions and never know which engine they time, so the ONNX engine, the PyTorch
reference and CTranslate2 go through exactly the same measuring code. Each returns the best hypothesis of every
source as token ids (no BOS, no EOS), in the order of ``sources``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from nmtserve.engine.decoding import DecodingOptions

if TYPE_CHECKING:
    from nmtserve.bench.ctranslate2_engine import CTranslate2Engine
    from nmtserve.engine import Engine
    from nmtserve.model.transformer import Transformer

Sources = Sequence[Sequence[int]]
TranslateFn = Callable[[Sources, DecodingOptions, int], list[list[int]]]


def onnx_translate(engine: Engine, max_batch_tokens: int | None = None) -> TranslateFn:
    """The ONNX engine's own batching (length-sorted cohorts, bounded by ``max_batch_tokens`` padded source tokens
    too when given), scores skipped as a server would."""

    def translate(sources: Sources, options: DecodingOptions, max_batch_size: int) -> list[list[int]]:
        nbests = engine.translate_ids(
            sources,
            replace(options, return_scores=False),
            max_batch_size=max_batch_size,
            max_batch_tokens=max_batch_tokens,
        )
        return [nbest[0].token_ids for nbest in nbests]

    return translate


def ctranslate2_translate(engine: CTranslate2Engine, max_batch_tokens: int | None = None) -> TranslateFn:
    """CTranslate2 on the same cohorts as ``onnx_translate`` with the same arguments."""

    def translate(sources: Sources, options: DecodingOptions, max_batch_size: int) -> list[list[int]]:
        return [out.token_ids for out in engine.translate_ids(sources, options, max_batch_size, max_batch_tokens)]

    return translate


def torch_translate(model: Transformer, use_cache: bool) -> TranslateFn:
    """The PyTorch reference; sources are batched in order (it has no length sorting of its own)."""
    from nmtserve.model.beam_search import beam_search

    def translate(sources: Sources, options: DecodingOptions, max_batch_size: int) -> list[list[int]]:
        outputs: list[list[int]] = []
        for start in range(0, len(sources), max_batch_size):
            chunk = [list(s) for s in sources[start : start + max_batch_size]]
            outputs += [nbest[0].token_ids for nbest in beam_search(model, chunk, options, use_cache=use_cache)]
        return outputs

    return translate
