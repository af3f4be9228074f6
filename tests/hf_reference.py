"""transformers' ``generate()`` as the referee of converted models: each text's best hypothesis as the engine
reports it (no start token, cut at EOS) and its score. One place, so every family's test asks transformers the
same question and a change of referee settings cannot drift between suites."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

# The engine's plain decoding options in transformers' terms, overriding whatever the model's generation config sets.
PLAIN_SETTINGS: dict[str, Any] = {
    "length_penalty": 1.0,
    "early_stopping": True,
    "no_repeat_ngram_size": 0,
    "repetition_penalty": 1.0,
}


def best_hypotheses(
    model: Any, tokenizer: Any, texts: list[str], beam: int, max_new_tokens: int, **settings: Any
) -> tuple[list[list[int]], list[float]]:
    """Token ids of each text's best hypothesis, and its length-normalised score (NaN for greedy, which has none)."""
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            num_beams=beam,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=1,
            num_return_sequences=1,
            output_scores=True,
            return_dict_in_generate=True,
            **settings,
        )
    eos = model.config.eos_token_id
    tokens = [row[: row.index(eos)] if eos in row else row for row in out.sequences[:, 1:].tolist()]
    scores = out.sequences_scores.tolist() if beam > 1 else [float("nan")] * len(texts)
    return tokens, scores


def best_hypotheses_by_group(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    groups: list[Hashable],
    beam: int,
    max_new_tokens: int,
    settings_of: Callable[[Hashable], dict[str, Any]],
) -> tuple[list[list[int]], list[float]]:
    """``best_hypotheses`` with one ``generate()`` call per group (e.g. target language), because settings such as
    ``forced_bos_token_id`` are one value per call; results come back in the texts' order."""
    tokens: list[list[int]] = [[] for _ in texts]
    scores = [float("nan")] * len(texts)
    for group in sorted(set(groups), key=str):
        rows = [i for i, g in enumerate(groups) if g == group]
        group_tokens, group_scores = best_hypotheses(
            model, tokenizer, [texts[i] for i in rows], beam, max_new_tokens, **settings_of(group)
        )
        for i, row_tokens, score in zip(rows, group_tokens, group_scores, strict=True):
            tokens[i], scores[i] = row_tokens, score
    return tokens, scores
