"""Continuous vs request-level batching on several model directories, interleaved: an A/B for a noisy machine.

    python -m nmtserve.loadtest.batching_ab --model export/demo/fp32 --model /tmp/ragged-fp32 \\
        --input data/corpus/dev.en --duration 10 --rounds 2

``nmtserve bench server`` measures one model's servers level after level; on a shared machine a slow spell then
lands on one configuration only. Here every (model, batching mode) server runs side by side and, at each load
level of each round, they take turns on the same Poisson arrival sequence: a change in the machine's speed hits
all of them within seconds of each other. The load levels are fractions of one saturation rate, measured first
(closed loop, 64 in flight, median over the request-level servers), so every configuration faces the same
offered load. Prints one line per run and a table of p50/p99 per level (median over rounds); writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

from nmtserve.loadtest.run import LoadTestSpec, run_loadtest
from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.loadtest.stats import format_level
from nmtserve.loadtest.workload import read_lines

MODES = ("continuous", "request")
FRACTIONS = (0.5, 0.75, 0.9)


def _level(address: str, lines: list[str], mode: str, level: float, duration: float) -> dict:
    report = run_loadtest(LoadTestSpec(address, lines, mode, [level], duration, timeout=60.0), progress=False)
    result = report.results[0]
    print(f"    {format_level(result)}", flush=True)
    return result.as_dict()


def run(models: list[Path], lines: list[str], duration: float, rounds: int, threads: int, out: Path) -> dict:
    names = [f"{model.name if model.name not in ('fp32', 'int8') else str(model)}" for model in models]
    results: dict = {"models": [str(m) for m in models], "duration_s": duration, "rounds": rounds, "runs": []}
    with contextlib.ExitStack() as stack:
        servers = {
            (name, mode): stack.enter_context(
                ServerProcess(model, "--threads", str(threads), "--batching", mode, "--no-spin")
            )
            for name, model in zip(names, models, strict=True)
            for mode in MODES
        }
        saturation = []
        for (name, mode), server in servers.items():
            if mode == "request":
                print(f"saturation, {name} {mode}", flush=True)
                saturation.append(_level(server.address, lines, "concurrency", 64, duration)["sentences_per_s"])
        rate = statistics.median(saturation)
        results["saturation_sentences_per_s"] = saturation
        for round_ in range(rounds):
            for fraction in FRACTIONS:
                level = round(rate * fraction, 1)
                for (name, mode), server in servers.items():
                    print(f"round {round_ + 1}, {level} req/s ({fraction:.0%}), {name} {mode}", flush=True)
                    row = _level(server.address, lines, "rate", level, duration)
                    results["runs"].append({**row, "round": round_, "fraction": fraction, "model": name, "mode": mode})
    out.mkdir(parents=True, exist_ok=True)
    (out / "batching_ab.json").write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    return results


def _table(results: dict) -> str:
    lines = ["load  model / mode                      p50 ms (runs)          p99 ms (runs)"]
    keys = sorted({(r["fraction"], r["model"], r["mode"]) for r in results["runs"]})
    for fraction, model, mode in keys:
        runs = [r for r in results["runs"] if (r["fraction"], r["model"], r["mode"]) == (fraction, model, mode)]
        p50 = [r["latency_ms"]["p50"] for r in runs]
        p99 = [r["latency_ms"]["p99"] for r in runs]
        p50_runs, p99_runs = (", ".join(f"{v:.0f}" for v in values) for values in (p50, p99))
        lines.append(
            f"{fraction:4.0%}  {model + ' ' + mode:32s}  {statistics.median(p50):6.0f} ({p50_runs})"
            f"  {statistics.median(p99):6.0f} ({p99_runs})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtserve.loadtest.batching_ab", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="model directory (repeatable)")
    parser.add_argument("--input", type=Path, default=Path("data/corpus/dev.en"))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/batching_ab"))
    args = parser.parse_args(argv)
    run(args.model, read_lines(args.input), args.duration, args.rounds, args.threads, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
