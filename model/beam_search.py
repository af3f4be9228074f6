"""Reference beam search in PyTorch: the ground truth that the ONNX engine and CTranslate2 are checked against.

The rules follow CTranslate2's so that all three decoders can be compared token for token:
- each step takes the 2K best (hypothesis, token) candidates of a sentence over all K live hypotheses;
- of the first K candidates, one that ends with EOS (or any, on the last allowed step) becomes a finished
  hypothesis, and its slot is refilled with the next best candidate that does not end with EOS;
- a sentence stops when it has K finished hypotheses, at its max length, or, when no length penalty is used,
  as soon as the best candidate is finished and ``num_hypotheses`` are collected;
- finished scores are divided by length ** length_penalty, the length counting the EOS token;
- a sentence's forced target prefix (``target_prefixes``: the target language of M2M-100/NLLB) is decoded without
  choice first, each forced token's log-prob counted as 0 (transformers' ``ForcedBOSTokenLogitsProcessor``); the
  forced tokens are part of the hypothesis and of its length.
Readability beats speed here; the fast path is the exported engine.
"""

from __future__ import annotations

from typing import cast

import torch

from nmtserve.engine.decoding import DecodingOptions, Hypothesis
from nmtserve.model.transformer import KVCache, Transformer


def _finalize(found: list[tuple[list[int], float, int]], options: DecodingOptions) -> list[Hypothesis]:
    ranked = [
        Hypothesis(tokens, log_prob / (length**options.length_penalty), log_prob) for tokens, log_prob, length in found
    ]
    ranked.sort(key=lambda h: cast(float, h.score), reverse=True)  # every score is set just above
    return ranked[: options.num_hypotheses]


@torch.inference_mode()
def beam_search(
    model: Transformer,
    sources: list[list[int]],
    options: DecodingOptions,
    use_cache: bool = True,
    target_prefixes: list[list[int]] | None = None,
) -> list[list[Hypothesis]]:
    """Translate a batch of tokenized sources (each ending with EOS); n-best lists in the order of ``sources``.

    ``use_cache=False`` re-runs the decoder over the whole prefix at every step: slower, but independent of the
    incremental-decoding code, which makes it a check on that code. ``target_prefixes``: per source, target
    tokens forced first (empty lists for none).
    """
    if options.num_hypotheses > options.beam_size:
        raise ValueError("num_hypotheses must not exceed beam_size")
    forced = target_prefixes if target_prefixes is not None else [[] for _ in sources]
    if len(forced) != len(sources):
        raise ValueError("one target prefix per source")
    config, beam = model.config, options.beam_size
    batch = len(sources)
    source_ids = torch.full((batch, max(map(len, sources))), config.pad_id, dtype=torch.long)
    for i, ids in enumerate(sources):
        source_ids[i, : len(ids)] = torch.tensor(ids)
    max_lengths = [options.max_length_for(len(ids)) for ids in sources]

    # Every sentence starts with K copies of BOS; only the first may expand on step 0, or K identical
    # hypotheses would fill the beam.
    memory = model.encode(source_ids).repeat_interleave(beam, dim=0)
    cross_kv = model.cross_kv(memory)
    source_mask = model.source_mask(source_ids).repeat_interleave(beam, dim=0)
    prefixes = torch.full((batch * beam, 1), config.start_id, dtype=torch.long)
    scores = torch.tensor([0.0] + [float("-inf")] * (beam - 1)).repeat(batch)
    cache: KVCache | None = None
    active = list(range(batch))  # original index of each row group still decoding
    found: list[list[tuple[list[int], float, int]]] = [[] for _ in range(batch)]
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]

    for step in range(max(max_lengths)):
        if use_cache:
            logits, cache = model.decode(prefixes[:, -1:], cross_kv, source_mask, cache)
        else:
            logits, _ = model.decode(prefixes, cross_kv, source_mask)
        log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)
        if step < options.min_length:
            log_probs[:, config.eos_id] = float("-inf")
        vocab = log_probs.size(-1)
        candidates = (scores[:, None] + log_probs).view(len(active), beam * vocab)
        top_scores, top_ids = candidates.topk(2 * beam, dim=-1)

        keep_groups: list[int] = []
        rows: list[int] = []
        next_tokens: list[int] = []
        next_scores: list[float] = []
        for g, sentence in enumerate(active):
            last_step = step + 1 == max_lengths[sentence]
            if step < len(forced[sentence]):  # no choice: every row takes the forced token, scores unchanged
                token = forced[sentence][step]
                if token == config.eos_id or last_step:
                    tokens = prefixes[g * beam, 1:].tolist() + ([] if token == config.eos_id else [token])
                    found[sentence].append((tokens, float(scores[g * beam]), step + 1))
                    results[sentence] = _finalize(found[sentence], options)
                    continue
                keep_groups.append(g)
                rows += range(g * beam, (g + 1) * beam)
                next_tokens += [token] * beam
                next_scores += scores[g * beam : (g + 1) * beam].tolist()
                continue
            spare = beam  # next candidate position that may refill a finished slot
            top_finished = False
            chosen: list[int] = []
            for k in range(beam):
                position = k
                token = int(top_ids[g, k]) % vocab
                if token == config.eos_id or last_step:
                    origin = g * beam + int(top_ids[g, k]) // vocab
                    tokens = prefixes[origin, 1:].tolist() + ([] if token == config.eos_id else [token])
                    found[sentence].append((tokens, float(top_scores[g, k]), step + 1))
                    top_finished |= k == 0
                    while spare < 2 * beam and int(top_ids[g, spare]) % vocab == config.eos_id:
                        spare += 1
                    if spare < 2 * beam:  # as in CTranslate2, a slot with no spare left keeps its candidate
                        position, spare = spare, spare + 1
                chosen.append(position)
            done = last_step or len(found[sentence]) >= beam
            if options.length_penalty == 0:
                done |= top_finished and len(found[sentence]) >= options.num_hypotheses
            if done:
                results[sentence] = _finalize(found[sentence], options)
                continue
            keep_groups.append(g)
            for position in chosen:
                flat = int(top_ids[g, position])
                rows.append(g * beam + flat // vocab)
                next_tokens.append(flat % vocab)
                next_scores.append(float(top_scores[g, position]))
        if not keep_groups:
            break
        # Finished sentences leave the batch; survivors take the rows of the hypotheses they extend.
        index = torch.tensor(rows)
        active = [active[g] for g in keep_groups]
        prefixes = torch.cat([prefixes[index], torch.tensor(next_tokens)[:, None]], dim=1)
        scores = torch.tensor(next_scores)
        cross_kv = [(k[index], v[index]) for k, v in cross_kv]
        source_mask = source_mask[index]
        if cache is not None:
            cache = [(k[index], v[index]) for k, v in cache]
    return results


def translate_ids(model: Transformer, sources: list[list[int]], options: DecodingOptions) -> list[list[int]]:
    """Best hypothesis of each source: the convenience most callers want."""
    return [nbest[0].token_ids for nbest in beam_search(model, sources, options)]


def greedy_search(
    model: Transformer, source: list[int], max_length: int, target_prefix: list[int] | None = None
) -> list[int]:
    """Plain arg-max decoding, kept separate from beam search so that beam 1 can be tested against it.

    ``target_prefix``: tokens forced first (they are part of the result). EOS is banned on step 0 only (min_length
    1), which a forced prefix fills, as in the engine.
    """
    config = model.config
    source_ids = torch.tensor([source])
    cross_kv = model.cross_kv(model.encode(source_ids))
    mask = model.source_mask(source_ids)
    forced = list(target_prefix or [])
    tokens = [config.start_id]
    with torch.inference_mode():
        for step in range(max_length):
            if step < len(forced):
                tokens.append(forced[step])
                continue
            logits, _ = model.decode(torch.tensor([tokens]), cross_kv, mask)
            if step == 0:
                logits[0, -1, config.eos_id] = float("-inf")
            token = int(logits[0, -1].argmax())
            if token == config.eos_id:
                break
            tokens.append(token)
    return tokens[1:]
