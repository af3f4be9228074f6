"""Part 1: decode cost per output token against output length, batch 1, beam 1.

With a K/V cache a step should cost about the same at step 250 as at step 10 (only attention reads grow, and
they are small next to the output projection), so per-token cost should be nearly flat in the output length;
without a cache every step re-runs the decoder over the whole prefix and the per-token cost grows linearly.
The length is forced (min_length = max_length = L, EOS forbidden until then) so every run decodes exactly L
steps whatever the model would have said.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from nmtserve.bench.engines import TranslateFn
from nmtserve.bench.timing import measure
from nmtserve.server.engine.options import DecodingOptions

LENGTHS = (16, 32, 64, 128, 256)


def forced_length(length: int) -> DecodingOptions:
    """Greedy decoding of exactly ``length`` tokens, whatever the source's length."""
    return DecodingOptions(
        beam_size=1, min_length=length, max_length=length, max_length_ratio=0.0, max_length_offset=length
    )


def run_decode_cost(
    engines: Mapping[str, TranslateFn],
    source: Sequence[int],
    lengths: Sequence[int] = LENGTHS,
    repeats: int = 3,
    skip: Mapping[str, int] | None = None,
    min_seconds: float = 1.0,
) -> dict[str, Any]:
    """Time every engine at every length; ``skip`` maps an engine to a length above which it is not run.

    Returns ``{"lengths", "source_len", "engines": {name: {"ms_per_token": [...], "growth": ..., ...}}}`` where
    ``growth`` is the per-token cost at the longest length over that at the shortest.
    """
    skip = skip or {}
    results: dict[str, Any] = {"lengths": list(lengths), "source_len": len(source), "engines": {}}
    work = [(name, length) for name in engines for length in lengths if length <= skip.get(name, max(lengths))]
    rows: dict[str, dict[str, list]] = {name: {"length": [], "ms_per_token": [], "timing": []} for name in engines}
    for name, length in tqdm(work, desc="decode cost", unit="run"):
        options = forced_length(length)
        decode = engines[name]
        timing, outputs = measure(
            lambda d=decode, o=options: d([source], o, 1), repeats=repeats, warmup=1, min_seconds=min_seconds
        )
        produced = len(outputs[0])
        if produced != length:
            raise RuntimeError(f"{name}: forced length {length} produced {produced} tokens")
        rows[name]["length"].append(length)
        rows[name]["ms_per_token"].append(1000.0 * timing.best / length)
        rows[name]["timing"].append(timing.to_dict())
    for name, row in rows.items():
        per_token = row["ms_per_token"]
        row["growth"] = per_token[-1] / per_token[0] if len(per_token) > 1 else None
        row["growth_lengths"] = [row["length"][0], row["length"][-1]] if per_token else []
        results["engines"][name] = row
    return results
