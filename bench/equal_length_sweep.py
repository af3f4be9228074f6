"""p99/p50 at half load on equal-length sentences under a few scheduler settings, twice each, taking turns: the
equal-length check of ``nmtserve bench server`` alone, for trying settings against its target (<= 2).

    python -m nmtserve.bench.equal_length_sweep --out docs/benchmarks/server_session11_gpl3/equal_length_sweep.json

``--equal-work`` keeps only the sentences whose translations are of equal length too (``equal_work_lines``), which
separates the scheduler's share of p99/p50 from the outputs' own spread; ``--setting`` picks settings by name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nmtserve.loadtest.bench import Bench, equal_length_lines, equal_work_lines
from nmtserve.loadtest.serverproc import ServerProcess

TWO_BY_ONE = ("--engine-workers", "2", "--threads", "1")
REQUEST = ("--batching", "request")  # named: ``auto`` is continuous batching for a ragged export
SETTINGS = {
    "request, join window 8 (default)": (*TWO_BY_ONE, *REQUEST),
    "request, join window 16": (*TWO_BY_ONE, *REQUEST, "--join-window-steps", "16"),
    "request, join window 32": (*TWO_BY_ONE, *REQUEST, "--join-window-steps", "32"),
    "request, 3 engine threads": ("--engine-workers", "3", "--threads", "1", *REQUEST),
    "continuous": (*TWO_BY_ONE, "--batching", "continuous"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("export/demo/fp32"))
    parser.add_argument("--input", type=Path, default=Path("data/corpus/dev.en"))
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--equal-work", action="store_true", help="equal output lengths as well as source lengths")
    parser.add_argument("--setting", action="append", choices=sorted(SETTINGS), help="default: every setting")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    lines = [line for line in args.input.read_text().splitlines() if line.strip()]
    equal = (equal_work_lines if args.equal_work else equal_length_lines)(args.model, lines)
    settings = {name: SETTINGS[name] for name in args.setting or SETTINGS}
    print(f"{len(equal)} sentences", flush=True)
    bench = Bench(args.model, equal, args.duration, len(equal), 1, args.out.parent, progress=False)
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for name, flags in settings.items():
            with ServerProcess(args.model, *flags) as server:
                saturation = bench.load(server, "concurrency", 64).results[0]
                half = bench.load(server, "rate", round(saturation.sentences_per_s / 2, 1)).results[0]
            latency = half.as_dict()["latency_ms"]
            row = {
                "saturation_sentences_per_s": round(saturation.sentences_per_s, 1),
                "p50_ms": round(latency["p50"]),
                "p99_ms": round(latency["p99"]),
                "p99_over_p50": round(latency["p99"] / latency["p50"], 2),
            }
            results.setdefault(name, []).append(row)
            print(f"{name}, run {repeat + 1}: {row}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"sentences": len(equal), "equal_work": args.equal_work, "settings": results}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
