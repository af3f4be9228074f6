"""Part 3: the ONNX engine beside CTranslate2 on the same weights, sentences, beam, threads and precision.

Speed only means something if both decoders do the same work, so the outputs are compared too: on fp32 they
should agree on (nearly) every sentence; int8 quantizes differently in the two runtimes, so some divergence is
expected there and reported, not hidden. Tokens are the output tokens each engine produced (EOS not counted).
The repeats alternate between the engines (ours, CTranslate2, ours, ...) so that a burst of load from another
process lands on both alike; the headline uses each engine's best wall time, and the same figures from CPU time
are kept beside it, since they barely move when the machine is busy. The median of the per-repeat (paired) ratios
is reported too: on a VM whose speed drifts between spells, it is the steadier of the two.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from functools import partial
from typing import Any

from nmtserve.bench.engines import TranslateFn
from nmtserve.bench.timing import measure_in_turns
from nmtserve.engine.decoding import DecodingOptions


def compare(
    ours: TranslateFn,
    theirs: TranslateFn,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_size: int,
    repeats: int = 3,
    warmup_sentences: int = 16,
) -> dict[str, Any]:
    """Time both engines on ``sources`` (after a short warm-up each) and compare their outputs."""
    engines = {"ours": ours, "ctranslate2": theirs}
    for translate in engines.values():
        translate(sources[:warmup_sentences], options, batch_size)
    calls = {name: partial(translate, sources, options, batch_size) for name, translate in engines.items()}
    timings, outputs = measure_in_turns(calls, repeats)
    result: dict[str, Any] = {"sentences": len(sources), "beam": options.beam_size, "batch_size": batch_size}
    for name, timing in timings.items():
        tokens = sum(len(ids) for ids in outputs[name])
        result[name] = {
            "tokens_per_s": tokens / timing.best,
            "sentences_per_s": len(sources) / timing.best,
            "tokens_per_cpu_s": tokens / timing.best_cpu,
            "output_tokens": tokens,
            "timing": timing.to_dict(),
        }
    same = sum(a == b for a, b in zip(outputs["ours"], outputs["ctranslate2"], strict=True))
    result["identical_pct"] = 100.0 * same / max(1, len(sources))
    result["ratio_tokens_per_s"] = result["ours"]["tokens_per_s"] / result["ctranslate2"]["tokens_per_s"]
    result["ratio_sentences_per_s"] = result["ours"]["sentences_per_s"] / result["ctranslate2"]["sentences_per_s"]
    result["ratio_tokens_per_cpu_s"] = result["ours"]["tokens_per_cpu_s"] / result["ctranslate2"]["tokens_per_cpu_s"]
    # Each repeat times ours then CTranslate2 back to back: their ratio sees the same spell of the machine, so the
    # median over repeats moves less between runs than the ratio of the two bests (which may come from different
    # spells).
    token_ratio = result["ours"]["output_tokens"] / max(1, result["ctranslate2"]["output_tokens"])
    paired = [token_ratio * c / o for o, c in zip(timings["ours"].seconds, timings["ctranslate2"].seconds, strict=True)]
    result["ratio_tokens_per_s_paired"] = paired
    result["ratio_tokens_per_s_paired_median"] = statistics.median(paired)
    return result
