"""Part 1: decode cost per output token against output length, batch 1, beam 1.

With a K/V cache a step should cost about the same at step 250 as at step 10 (only attention reads grow, and
they are small next to the output projection), so per-token cost should be nearly flat in the output length;
without a cache every step re-runs the decoder over the whole prefix and the per-token cost grows linearly.
The length is forced (min_length = max_length = L, EOS forbidden until then) so every run decodes exactly L
steps whatever the model would have said; a run of length 1 gives the fixed cost (encoding, first step setup),
which is subtracted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from nmtserve.bench.engines import TranslateFn
from nmtserve.bench.timing import Timing, measure
from nmtserve.engine.decoding import DecodingOptions

LENGTHS = (16, 32, 64, 128, 256)


def forced_length(length: int) -> DecodingOptions:
    """Greedy decoding of exactly ``length`` tokens, whatever the source's length."""
    return DecodingOptions(
        beam_size=1, min_length=length, max_length=length, max_length_ratio=0.0, max_length_offset=length
    )


def _time_forced(
    decode: TranslateFn, source: Sequence[int], length: int, repeats: int, min_seconds: float, warmup: int
) -> Timing:
    options = forced_length(length)
    timing, outputs = measure(
        lambda: decode([source], options, 1), repeats=repeats, warmup=warmup, min_seconds=min_seconds
    )
    if len(outputs[0]) != length:
        raise RuntimeError(f"forced length {length} produced {len(outputs[0])} tokens")
    return timing


def run_decode_cost(
    engines: Mapping[str, TranslateFn],
    source: Sequence[int],
    lengths: Sequence[int] = LENGTHS,
    repeats: int = 3,
    min_seconds: float = 1.0,
    rounds: int = 5,
) -> dict[str, Any]:
    """Time every engine at every length, and at length 1 (encoding + one step: the per-sentence fixed cost).

    The timings are taken in ``rounds`` interleaved passes over all (engine, length) pairs, each pass giving every
    pair ``repeats`` calls and a share of ``min_seconds``, and the best over all passes is kept. This VM's speed
    drifts by tens of percent over seconds: timed back to back, one length could land in a slow spell and the
    next in a fast one, and their ratio (the growth this part is about) would measure the drift. Interleaved,
    every length sees every spell.

    ``ms_per_token`` is the decoding cost alone, (T(L) - T(1)) / (L - 1): left in, the encoder's fixed cost would
    inflate short lengths and make the growth look flatter than it is. ``ms_per_token_with_encoder`` is T(L) / L.
    ``growth`` is ``ms_per_token`` at the longest length over that at the shortest.
    """
    results: dict[str, Any] = {"lengths": list(lengths), "source_len": len(source), "engines": {}}
    work = [(name, length) for name in engines for length in (1, *lengths)]
    timings: dict[str, dict[int, Timing]] = {name: {} for name in engines}
    with tqdm(total=rounds * len(work), desc="decode cost", unit="run") as bar:
        for round_index in range(rounds):
            for name, length in work:
                timing = _time_forced(
                    engines[name], source, length, repeats, min_seconds / rounds, warmup=int(round_index == 0)
                )
                previous = timings[name].get(length)
                timings[name][length] = previous.merged(timing) if previous else timing
                bar.update()
    for name, by_length in timings.items():
        fixed = by_length[1].best
        per_token = [1000.0 * max(by_length[n].best - fixed, 0.0) / (n - 1) for n in lengths]
        results["engines"][name] = {
            "length": list(lengths),
            "ms_per_token": per_token,
            "ms_per_token_with_encoder": [1000.0 * by_length[n].best / n for n in lengths],
            "ms_fixed": 1000.0 * fixed,
            "growth": per_token[-1] / per_token[0] if len(per_token) > 1 and per_token[0] > 0 else None,
            "growth_lengths": [lengths[0], lengths[-1]],
            "timing": [by_length[n].to_dict() for n in lengths],
            "timing_length_1": by_length[1].to_dict(),
        }
    return results
