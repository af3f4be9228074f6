"""What encoding joining sentences in length runs saves (``engine/batch.py``'s ``encoder_calls``), on CPU time.

The server admits what has arrived: at a burst's start or at low load a few sentences of any lengths, sorted by
length and encoded together, padded to the longest. This takes the input's lines in file order, deals them into
admissions of 2, 4, 8, 16 and 32 sentences in turn, and times ``DecodingBatch.add`` of each (thread CPU time, the
better of ``--repeats`` rounds, the two ways in turn within a round): in length runs (the engine's default on CPU)
and as one encoder call.

    python -m nmtserve.bench.encoder_runs --model export/demo/fp32 --input data/corpus/dev.en --sentences 600
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from nmtserve.bench.report import print_and_write
from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.batch import ENCODER_CALL_TOKENS, encoder_calls

SIZES = (2, 4, 8, 16, 32)


def admissions(lengths_in_order: list[int], sizes: tuple[int, ...] = SIZES) -> list[list[int]]:
    """Indices of the lines, dealt in file order into admissions of ``sizes`` in turn, each sorted by length."""
    out: list[list[int]] = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(lengths_in_order):
            return out
        chunk = list(range(start, min(start + size, len(lengths_in_order))))
        out.append(sorted(chunk, key=lengths_in_order.__getitem__))
        start += size
    return out


def padded_tokens(lengths: list[int], call_tokens: int | None) -> int:
    return sum((c.stop - c.start) * max(lengths[c]) for c in encoder_calls(lengths, call_tokens))


def measure(model: Path, lines: list[str], repeats: int = 3) -> dict:
    engine = Engine.load(model, threads=1, spin=False)
    sources = engine.encode_texts(lines)
    groups = [[sources[i] for i in group] for group in admissions([len(s) for s in sources])]
    options = DecodingOptions()
    best = {"runs": float("inf"), "one_call": float("inf")}
    for _ in range(repeats):
        for way, call_tokens in (("runs", ENCODER_CALL_TOKENS), ("one_call", None)):
            spent = 0.0
            for group in groups:
                batch = engine.new_batch()
                batch.encoder_call_tokens = call_tokens
                start = time.thread_time()
                batch.add(group, options)
                spent += time.thread_time() - start
            best[way] = min(best[way], spent)
    lengths = [[len(s) for s in group] for group in groups]
    return {
        "sentences": len(sources),
        "admissions": len(groups),
        "source_tokens": sum(map(sum, lengths)),
        "padded_tokens": {
            "runs": sum(padded_tokens(g, ENCODER_CALL_TOKENS) for g in lengths),
            "one_call": sum(padded_tokens(g, None) for g in lengths),
        },
        "encoder_calls": {
            "runs": sum(len(encoder_calls(g, ENCODER_CALL_TOKENS)) for g in lengths),
            "one_call": len(groups),
        },
        "cpu_ms": {way: round(seconds * 1e3, 1) for way, seconds in best.items()},
        "runs_over_one_call": round(best["runs"] / best["one_call"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    lines = [line for line in args.input.read_text().splitlines() if line.strip()][: args.sentences]
    report = measure(args.model, lines, args.repeats)
    print_and_write(report, args.out)


if __name__ == "__main__":
    main()
