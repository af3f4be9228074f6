"""Where continuous batching's engine time goes: sentences join a running ``DecodingBatch`` every other step.

    python -m nmtserve.bench.continuous_cost --model export/demo/fp32 --input data/corpus/dev.en

The server's continuous mode tops its batch up between steps; this drives the engine the same way without a
server (3 sentences join every other step while the batch has room for them, beam 4, max batch 32) and prints
the CPU time of the whole run and each graph's share of it. Thread CPU time, because on a shared machine wall
time measures the neighbours. For the Python side, run it under ``python -m cProfile -s tottime``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from nmtserve.bench.engine_bench import load_sources
from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.runtime import Binding


def measure(model: Path, source: Path, sentences: int = 200, join: int = 3, max_batch: int = 32) -> dict:
    engine = Engine.load(model, threads=1, spin=False)
    sources = load_sources(source, model / "sentencepiece.model", sentences, engine.info.max_positions)
    seconds: dict[str, float] = defaultdict(float)
    run = Binding.run  # every graph call goes through a Binding (a batch's step keeps its own)

    def timed(binding: Binding, *args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return run(binding, *args, **kwargs)
        finally:
            seconds[binding.graph] += time.thread_time() - start

    Binding.run = timed  # type: ignore[method-assign,assignment]
    try:
        return _drive(engine, sources, model, seconds, join, max_batch)
    finally:
        Binding.run = run  # type: ignore[method-assign]


def _drive(
    engine: Engine, sources: list[list[int]], model: Path, seconds: dict[str, float], join: int, max_batch: int
) -> dict:
    batch, options = engine.new_batch(), DecodingOptions(beam_size=4)
    queued = steps = 0
    start = time.thread_time()
    while queued < len(sources) or len(batch):
        if queued < len(sources) and steps % 2 == 0 and len(batch) < max_batch:
            take = min(join, max_batch - len(batch), len(sources) - queued)
            batch.add(sources[queued : queued + take], options, keys=list(range(queued, queued + take)))
            queued += take
        batch.step()
        steps += 1
    total = time.thread_time() - start
    graphs = {g: s / total for g, s in sorted(seconds.items())}
    result: dict[str, Any] = {"cpu_s": total, "steps": steps, "graphs": graphs, "host": 1 - sum(graphs.values())}
    shares = ", ".join(f"{g.removesuffix('.onnx')} {s:.0%}" for g, s in graphs.items())
    print(f"{model}: {total:.2f} s CPU, {steps} steps; {shares}, host {result['host']:.0%}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    prog = "python -m nmtserve.bench.continuous_cost"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="model directory (repeatable)")
    parser.add_argument("--input", type=Path, default=Path("data/corpus/dev.en"))
    parser.add_argument("--sentences", type=int, default=200)
    args = parser.parse_args(argv)
    for model in args.model:
        measure(model, args.input, args.sentences)
    return 0


if __name__ == "__main__":
    sys.exit(main())
