"""The p99/p50 of decoding the server benchmark's equal-length sentences one at a time, with nothing else running:
the spread that comes from the sentences themselves (their outputs differ in length) and that no scheduler removes.
The server's p99/p50 at half load (``nmtserve bench server``, target <= 2) is measured against this floor.

    python -m nmtserve.bench.latency_floor --model export/demo/fp32 --input data/corpus/dev.en
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from nmtserve.bench.report import print_and_write
from nmtserve.engine import DecodingOptions, Engine
from nmtserve.loadtest.bench import equal_length_lines, equal_work_lines


def latency_floor(model: Path, lines: list[str], beam: int = 4, equal_work: bool = False) -> dict:
    """Batch-1 decode times of the lines ``nmtserve bench server`` uses for its equal-length check (or, with
    ``equal_work``, of those whose outputs are of equal length too: what is left is the machine's own jitter)."""
    equal = (equal_work_lines if equal_work else equal_length_lines)(model, lines)
    engine = Engine.load(model, threads=1, spin=False)
    options = DecodingOptions(beam_size=beam)
    engine.translate(equal[:8], options)  # warm-up
    milliseconds, output_tokens = [], []
    for line in equal:
        start = time.perf_counter()
        (nbest,) = engine.translate([line], options)
        milliseconds.append((time.perf_counter() - start) * 1e3)
        output_tokens.append(len(nbest[0].token_ids))
    source_tokens = [len(ids) for ids in engine.encode_texts(equal)]
    p50, p99 = np.percentile(milliseconds, [50, 99])
    return {
        "sentences": len(equal),
        "source_tokens_min_max": [min(source_tokens), max(source_tokens)],
        "output_tokens_p50_p99_max": [*np.percentile(output_tokens, [50, 99]).round(1).tolist(), max(output_tokens)],
        "batch_1_ms_p50": round(float(p50), 1),
        "batch_1_ms_p99": round(float(p99), 1),
        "p99_over_p50": round(float(p99 / p50), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True, help="the text file given to nmtserve bench server")
    parser.add_argument("--equal-work", action="store_true", help="equal output lengths as well as source lengths")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    lines = [line for line in args.input.read_text().splitlines() if line.strip()]
    report = latency_floor(args.model, lines, equal_work=args.equal_work)
    print_and_write(report, args.out)


if __name__ == "__main__":
    main()
