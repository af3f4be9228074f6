"""CPU seconds of the engine decoding a text in cohorts: one number, to compare two versions of the code.

    python -m nmtserve.bench.cohort_time --model export/demo/int8 --beam-size 1 --input data/corpus/dev.en

For a before/after of a code change, run it from two checkouts in turn, a few times each (the figure of one
process is the best of ``--repeats``): ``bench engine`` compares with CTranslate2 within one run, which is the
right ratio for that question, but the machine's speed drifts between runs by more than small changes gain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.int8_kernels import INT8_KERNELS


def cohort_seconds(
    model: Path, source: Path, sentences: int, beam_size: int, int8_kernels: str = "auto", repeats: int = 3
) -> float:
    """Best-of-``repeats`` process CPU time of ``translate_ids`` over the first ``sentences`` non-empty lines
    (one thread, batch 32, after a warm-up)."""
    engine = Engine.load(model, threads=1, spin=False, int8_kernels=int8_kernels)
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()][:sentences]
    ids = engine.encode_texts(lines)
    options = DecodingOptions(beam_size=beam_size, return_scores=False)
    engine.translate_ids(ids[:32], options, max_batch_size=32)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        engine.translate_ids(ids, options, max_batch_size=32)
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtserve.bench.cohort_time", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--input", type=Path, default=Path("data/corpus/dev.en"))
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--int8-kernels", choices=INT8_KERNELS, default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    seconds = cohort_seconds(args.model, args.input, args.sentences, args.beam_size, args.int8_kernels, args.repeats)
    print(f"{args.model} beam {args.beam_size}: {seconds:.3f} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
