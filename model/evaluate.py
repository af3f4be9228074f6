"""Translate with the PyTorch reference and score with sacreBLEU (BLEU and chrF)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from nmtserve.engine.tokenizer import Tokenizer
from nmtserve.model.batching import read_lines
from nmtserve.model.beam_search import DecodingOptions, beam_search
from nmtserve.model.checkpoint import load_checkpoint
from nmtserve.model.scoring import Scores, score
from nmtserve.model.transformer import Transformer


def translate_texts(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    options: DecodingOptions,
    batch_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """Best translation of each text, in order; sorting by length keeps padding low within a batch."""
    limit = model.config.max_positions - 1
    sources = [[*ids[:limit], tokenizer.eos_id] for ids in tokenizer.encode_batch(texts)]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs: list[str] = [""] * len(sources)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="translate", unit="batch"):
        chunk = order[start : start + batch_size]
        for i, nbest in zip(chunk, beam_search(model, [sources[i] for i in chunk], options), strict=True):
            outputs[i] = tokenizer.decode(nbest[0].token_ids)
    return outputs


def evaluate_checkpoint(
    checkpoint: Path | None,
    corpus: Path,
    split: str = "test",
    options: DecodingOptions | None = None,
    limit: int | None = None,
) -> Scores:
    model, tokenizer, _ = load_checkpoint(checkpoint)
    sources = read_lines(Path(corpus) / f"{split}.en")[:limit]
    references = read_lines(Path(corpus) / f"{split}.de")[:limit]
    hypotheses = translate_texts(model, tokenizer, sources, options or DecodingOptions(), progress=True)
    return score(hypotheses, references)
