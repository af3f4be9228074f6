"""A decode step's cost against the rows it decodes, for our engine and CTranslate2 on the same weights.

A step's time is close to ``fixed + per_row x rows``: the fixed part is what a step costs whatever its size (the
kernels' launches, the graph call, the host loop, reading the weights once), the per-row part is the arithmetic
(every row multiplies through every weight matrix). Fitting both for each engine says where a difference in
tokens/s comes from: a lower ``per_row`` is faster matrix kernels, which no scheduling or Python work on our side
can win back; a lower ``fixed`` is less overhead per step, which counts where steps are small (small batches,
greedy decoding, the tail of a cohort).

Method: for each engine, beam and sentence count n, n copies of one source (the input's median length) are decoded
to exactly ``length`` tokens (min = max length) and to 1 token (encoding and setup), in one batch; the step cost is
(T(length) - T(1)) / (length - 1), CPU time, the best of ``rounds`` rounds in which every engine takes its turn.
A step decodes n x beam rows (the first step of beam search decodes one row per sentence: 1 step in ``length``).

    python -m nmtserve.bench.step_cost --input data/corpus/dev.en --out step_cost_dev.json
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmtserve.bench.engines import TranslateFn
from nmtserve.bench.plots import plot_step_cost
from nmtserve.bench.report import machine_info, print_and_write
from nmtserve.bench.timing import limit_threads, measure_in_turns
from nmtserve.engine.decoding import DecodingOptions
from nmtserve.engine.int8_kernels import INT8_KERNELS

SENTENCES = (1, 2, 4, 8, 16, 32)
BEAMS = (1, 4)
LENGTH = 32


def forced(beam: int, length: int) -> DecodingOptions:
    """Exactly ``length`` tokens per hypothesis at ``beam`` (EOS banned until then, no source-relative cap)."""
    return DecodingOptions(
        beam_size=beam, min_length=length, max_length=length, max_length_ratio=0.0, max_length_offset=length
    )


def fit_line(rows: Sequence[int], step_ms: Sequence[float]) -> dict[str, float]:
    """Least-squares ``step_ms = fixed_ms + per_row_ms x rows``, and how well it fits: the largest miss, relative to
    the mean step."""
    measured = np.asarray(step_ms, float)
    per_row, fixed = np.polyfit(np.asarray(rows, float), measured, 1)
    miss = np.abs(fixed + per_row * np.asarray(rows, float) - measured).max()
    relative = float(miss / measured.mean())
    return {"fixed_ms": float(fixed), "per_row_ms": float(per_row), "worst_relative_miss": relative}


def measure_step_cost(
    engines: Mapping[str, TranslateFn],
    source: Sequence[int],
    sentences: Sequence[int] = SENTENCES,
    beams: Sequence[int] = BEAMS,
    length: int = LENGTH,
    rounds: int = 3,
) -> dict[str, Any]:
    """Step cost per (engine, beam, sentence count), and the fitted fixed and per-row parts (see the module doc)."""
    calls = {}
    for name, decode in engines.items():
        for beam in beams:
            for n in sentences:
                for tokens in (1, length):
                    options, batch = forced(beam, tokens), [list(source)] * n
                    calls[(name, beam, n, tokens)] = lambda d=decode, o=options, b=batch: d(b, o, len(b))
    for call in calls.values():  # warm-up: sessions, arenas, CTranslate2's first-call allocations
        call()
    timings, outputs = measure_in_turns(calls, rounds, progress="step cost")
    for (name, _, n, tokens), out in outputs.items():
        if len(out) != n or any(len(ids) != tokens for ids in out):
            raise RuntimeError(f"{name}: a forced length of {tokens} gave {[len(ids) for ids in out]} tokens")
    results: dict[str, Any] = {"source_len": len(source), "length": length, "rounds": rounds, "engines": {}}
    for name in engines:
        per_beam = {}
        for beam in beams:
            step_ms = [
                1000.0
                * max(timings[(name, beam, n, length)].best_cpu - timings[(name, beam, n, 1)].best_cpu, 0.0)
                / (length - 1)
                for n in sentences
            ]
            rows = [n * beam for n in sentences]
            per_beam[str(beam)] = {"rows": rows, "step_ms": step_ms, **fit_line(rows, step_ms)}
        results["engines"][name] = per_beam
    return results


def ratios(results: dict[str, Any], ours: str, theirs: str) -> dict[str, dict[str, float | None]]:
    """Our cost over theirs (below 1: ours is cheaper), per beam: the fixed part, the per-row part, and whole steps
    (median over the sentence counts)."""

    def over(a: float, b: float) -> float | None:
        return a / b if b > 0 else None  # a tiny model's step can time as 0 next to its encoding

    out: dict[str, dict[str, float | None]] = {}
    for beam, mine in results["engines"][ours].items():
        other = results["engines"][theirs][beam]
        steps = [r for r in map(over, mine["step_ms"], other["step_ms"]) if r is not None]
        out[beam] = {
            "fixed": over(mine["fixed_ms"], other["fixed_ms"]),
            "per_row": over(mine["per_row_ms"], other["per_row_ms"]),
            "step_median": statistics.median(steps) if steps else None,
        }
    return out


def format_table(results: dict[str, Any]) -> str:
    lines = [f"Decode step cost, ms (CPU time; source {results['source_len']} tokens, {results['length']} steps)"]
    for name, per_beam in results["engines"].items():
        for beam, row in per_beam.items():
            steps = " ".join(f"{r}:{ms:.2f}" for r, ms in zip(row["rows"], row["step_ms"], strict=True))
            lines.append(
                f"  {name:<18} beam {beam}: fixed {row['fixed_ms']:.3f} + {row['per_row_ms']:.4f}/row "
                f"(worst miss {100 * row['worst_relative_miss']:.0f} %)   rows:ms {steps}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from nmtserve.bench import artifacts
    from nmtserve.bench.ctranslate2_engine import CTranslate2Engine
    from nmtserve.bench.engine_bench import load_sources, median_length_source
    from nmtserve.bench.engines import ctranslate2_translate, onnx_translate
    from nmtserve.engine import Engine
    from nmtserve.model.checkpoint import DEMO_CHECKPOINT, TOKENIZER, load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="sentences; the median-length one is decoded")
    parser.add_argument("--model-dir", type=Path, action="append", help="exports (default: shipped fp32 and int8)")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="weights of every engine")
    parser.add_argument("--int8-kernels", default="auto", choices=INT8_KERNELS, help="our int8 format on CPU")
    parser.add_argument("--sentences", type=int, nargs="+", default=list(SENTENCES))
    parser.add_argument("--beams", type=int, nargs="+", default=list(BEAMS))
    parser.add_argument("--length", type=int, default=LENGTH)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ctranslate2", action="store_true", help="our engine alone")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/work"), help="cached conversions")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON, and a PNG beside)")
    args = parser.parse_args(argv)
    limit_threads(1)
    found = artifacts.prepare(args.checkpoint, list(args.model_dir or ()), ["fp32", "int8"], args.work_dir)
    model, _, _ = load_checkpoint(found.checkpoint)
    lines = load_sources(args.input, found.checkpoint / TOKENIZER, 10_000, model.config.max_positions)
    source = median_length_source(lines)
    engines: dict[str, TranslateFn] = {}
    for precision, directory in sorted(found.onnx.items()):
        engine = Engine.load(directory, threads=1, spin=False, int8_kernels=args.int8_kernels)
        label = f"ours {precision}" + (f" {engine.runtime.int8_kernels}" if precision == "int8" else "")
        engines[label] = onnx_translate(engine)
        if not args.no_ctranslate2:
            ct2 = CTranslate2Engine(found.ctranslate2, threads=1, precision=precision)
            engines[f"ctranslate2 {precision}"] = ctranslate2_translate(ct2)
    results = measure_step_cost(engines, source, args.sentences, args.beams, args.length, args.rounds)
    names = list(engines)
    pairs = [(a, b) for a, b in zip(names[::2], names[1::2], strict=False) if b.startswith("ctranslate2")]
    results["cost_ours_over_ctranslate2"] = {f"{a} / {b}": ratios(results, a, b) for a, b in pairs}
    results["machine"] = machine_info(1)
    print(format_table(results))
    print_and_write(results, args.out)
    if args.out is not None:
        title = f"decode step cost, source of {len(source)} tokens, 1 thread"
        plot_step_cost(results, args.out.with_suffix(".png"), title)


if __name__ == "__main__":
    main()
