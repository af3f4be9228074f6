"""Part 2: output tokens per second against the maximum batch size, per beam size.

Larger batches amortise per-step overhead (Python beam bookkeeping, graph launches) over more rows; the curve
shows where that stops paying on this machine. Every point translates the same sentences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from tqdm import tqdm

from nmtserve.bench.engines import TranslateFn
from nmtserve.bench.timing import measure
from nmtserve.engine.decoding import DecodingOptions

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
BEAMS = (1, 4)


def run_batch_throughput(
    engines: Mapping[str, TranslateFn],
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    beams: Sequence[int] = BEAMS,
    repeats: int = 1,
) -> dict[str, Any]:
    """``{"batch_sizes", "sentences", "series": {"<engine> beam <k>": {"tokens_per_s": [...], ...}}}``."""
    from dataclasses import replace

    series: dict[str, dict[str, list]] = {}
    work = [(name, beam, size) for name in engines for beam in beams for size in batch_sizes]
    for name, beam, size in tqdm(work, desc="batch throughput", unit="run"):
        beam_options = replace(options, beam_size=beam)
        timing, outputs = measure(
            partial(engines[name], sources, beam_options, size),
            repeats=repeats,
            warmup=0,
        )
        tokens = sum(len(ids) for ids in outputs)
        row = series.setdefault(
            f"{name} beam {beam}",
            {
                "engine": name,
                "beam": beam,
                "batch_size": [],
                "tokens_per_s": [],
                "tokens_per_cpu_s": [],
                "sentences_per_s": [],
                "timing": [],
            },
        )
        row["batch_size"].append(size)
        row["tokens_per_s"].append(tokens / timing.best)
        row["tokens_per_cpu_s"].append(tokens / timing.best_cpu)
        row["sentences_per_s"].append(len(sources) / timing.best)
        row["timing"].append({**timing.to_dict(), "output_tokens": tokens})
    return {"batch_sizes": list(batch_sizes), "sentences": len(sources), "series": series}
