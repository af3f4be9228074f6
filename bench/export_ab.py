"""Two or more exports of one model on the same sentences: tokens per CPU second and agreement with the first.

    python -m nmtserve.bench.export_ab /tmp/emb-columns-fp32 /tmp/emb-rows-fp32 --source /tmp/legal.en --beam-size 1

For a graph change that keeps the weights (an export option, a rewrite): the exports take turns within each
repeat, and each keeps its best CPU time (``bench/timing.py``), which other processes on a shared machine move far
less than wall time. One thread, batch 32, through the same ``onnx_translate`` as ``nmtserve bench engine``.
Prints one line per export.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from nmtserve.bench.engines import onnx_translate
from nmtserve.bench.timing import measure_in_turns
from nmtserve.engine import DecodingOptions, Engine


def compare(models: list[Path], source: Path, beam_size: int, repeats: int = 3, limit: int | None = None) -> list[dict]:
    texts = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    engines = {model: Engine.load(model, threads=1, spin=False) for model in models}
    sources = engines[models[0]].encode_texts(texts)
    decoders = {
        model: partial(onnx_translate(engine), sources, DecodingOptions(beam_size=beam_size), 32)
        for model, engine in engines.items()
    }
    timings, outputs = measure_in_turns(decoders, repeats)
    tokens = sum(len(ids) for ids in outputs[models[0]])
    rows = []
    for model in models:
        same = sum(a == b for a, b in zip(outputs[models[0]], outputs[model], strict=True))
        row = {
            "model": str(model),
            "cpu_s": timings[model].best_cpu,
            "tokens_per_cpu_s": tokens / timings[model].best_cpu,
            "speed_vs_first": timings[models[0]].best_cpu / timings[model].best_cpu,
            "same_as_first": same,
            "sentences": len(sources),
        }
        rows.append(row)
        print(
            f"{model!s:40s} {row['cpu_s']:7.2f} s  {row['tokens_per_cpu_s']:7.0f} tok/CPU s"
            f"  x{row['speed_vs_first']:.3f}  same as first {same}/{len(sources)}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtserve.bench.export_ab", description=__doc__.split("\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help="model directories; the first is the baseline")
    parser.add_argument("--source", type=Path, required=True, help="one sentence per line")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N sentences")
    args = parser.parse_args(argv)
    compare(args.models, args.source, args.beam_size, args.repeats, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
