"""Continuous vs request-level batching on several model directories, interleaved: an A/B for a noisy machine.

    python -m nmtserve.loadtest.batching_ab --model export/demo/fp32 --model /tmp/ragged-fp32 \\
        --input data/corpus/dev.en --duration 10 --rounds 2

``nmtserve bench server`` measures one model's servers level after level; on a shared machine a slow spell then
lands on one configuration only. Here every (model, batching mode) server runs side by side and, at each load
level of each round, they take turns on the same Poisson arrival sequence: a change in the machine's speed hits
all of them within seconds of each other. The order of the turns rotates from round to round, so no
configuration always runs first after another's backlog. The load levels are fractions of one saturation rate,
measured first (closed loop, 64 in flight, median over the request-level servers), so every configuration faces
the same offered load.

Prints one line per run and a table per level: p50/p99 as the median over rounds, and pooled over every round's
answers. Pooling matters for the tail: a 15 s run at a few dozen requests per second puts its p99 on 3-10 answers,
and on a VM whose speed drifts between runs (docs/benchmarks.md, issue 17, session 21) the median of such p99s
moves more than most policy changes do. The pooled p99 of the even and of the odd rounds, side by side, shows how
far it can be trusted. Writes JSON with every answer's latency, so other statistics can be drawn later.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from nmtserve.loadtest.run import LoadTestSpec, run_loadtest
from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.loadtest.stats import format_level
from nmtserve.loadtest.workload import read_lines

MODES = ("continuous", "request")
FRACTIONS = (0.5, 0.75, 0.9)


def _level(address: str, lines: list[str], mode: str, level: float, duration: float, seed: int = 0) -> dict:
    spec = LoadTestSpec(address, lines, mode, [level], duration, timeout=60.0, seed=seed)
    report = run_loadtest(spec, progress=False)
    result = report.results[0]
    print(f"    {format_level(result)}", flush=True)
    latencies = [sample.latency * 1000.0 for sample in report.samples[0] if sample.code == "OK"]
    return result.as_dict() | {"latencies_ms": latencies}


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
        keys = list(servers)
        for round_ in range(rounds):
            order = keys[round_ % len(keys) :] + keys[: round_ % len(keys)]
            for fraction in FRACTIONS:
                level = round(rate * fraction, 1)
                for turn, (name, mode) in enumerate(order):
                    print(f"round {round_ + 1}, {level} req/s ({fraction:.0%}), {name} {mode}", flush=True)
                    # one arrival sequence per round and level, the same for every configuration
                    row = _level(servers[name, mode].address, lines, "rate", level, duration, seed=round_)
                    row |= {"round": round_, "turn": turn, "fraction": fraction, "model": name, "mode": mode}
                    results["runs"].append(row)
    groups: dict[str, list[dict]] = {}
    for row in results["runs"]:
        groups.setdefault(f"{row['fraction']}/{row['model']}/{row['mode']}", []).append(row)
    results["pooled"] = {key: pooled(runs) for key, runs in groups.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "batching_ab.json").write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    return results


def _percentile(runs: list[dict], q: float) -> float | None:
    answers = [latency for r in runs for latency in r["latencies_ms"]]
    return float(np.percentile(answers, q)) if answers else None


def pooled(runs: list[dict]) -> dict[str, float]:
    """p50 and p99 over every answer of ``runs``, and the p99 of the even and of the odd rounds apart."""
    even, odd = ([r for r in runs if r["round"] % 2 == parity] for parity in (0, 1))
    stats = {"answers": float(sum(len(r["latencies_ms"]) for r in runs))}
    for name, q, subset in (
        ("p50", 50, runs),
        ("p99", 99, runs),
        ("p99_rounds_even", 99, even),
        ("p99_rounds_odd", 99, odd),
    ):
        value = _percentile(subset, q)
        if value is not None:
            stats[name] = value
    return stats


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _table(results: dict) -> str:
    header = "load  model / mode                      p50 ms (runs)          p99 ms (runs)          pooled p50 / p99"
    lines = [header + " (even, odd rounds)"]
    keys = sorted({(r["fraction"], r["model"], r["mode"]) for r in results["runs"]})
    for fraction, model, mode in keys:
        runs = [r for r in results["runs"] if (r["fraction"], r["model"], r["mode"]) == (fraction, model, mode)]
        p50 = [r["latency_ms"]["p50"] for r in runs if r["latency_ms"]]
        p99 = [r["latency_ms"]["p99"] for r in runs if r["latency_ms"]]
        p50_runs, p99_runs = (", ".join(f"{v:.0f}" for v in values) for values in (p50, p99))
        both = results["pooled"][f"{fraction}/{model}/{mode}"]
        halves = ", ".join(f"{both[k]:.0f}" for k in ("p99_rounds_even", "p99_rounds_odd") if k in both)
        lines.append(
            f"{fraction:4.0%}  {model + ' ' + mode:32s}  {_median(p50):6.0f} ({p50_runs})"
            f"  {_median(p99):6.0f} ({p99_runs})"
            f"  {both.get('p50', math.nan):6.0f} / {both.get('p99', math.nan):.0f} ({halves})"
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
