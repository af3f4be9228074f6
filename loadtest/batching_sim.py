"""Continuous vs request-level batching on a clock made of the engine's own CPU time: latency without the noise.

    python -m nmtserve.loadtest.batching_sim --model export/demo/fp32 --model /tmp/ragged-fp32 \\
        --input data/corpus/dev.en --requests 300

On a machine shared with other jobs, wall-clock latency percentiles move more between runs than between
batching modes (docs/benchmarks.md). Here the real engine (``DecodingBatch``: real encoder and decoder-step
calls) decodes a Poisson arrival sequence, but time advances by the CPU time each engine call took (thread CPU
time, which other processes barely change), and arrivals are admitted by the rules of ``server/scheduler.py``:
- ``request``: an idle engine takes up to ``max_batch_size`` waiting sentences; arrivals join during the batch's
  first ``join_window_steps`` steps while it has room;
- ``continuous``: between steps, waiting sentences join once they are ``join_fraction`` of the running batch or
  ``max_join_steps`` steps after the last join; when more wait than the batch has room for, the batch either
  drains (``drain_under_backlog``, the rule of session 4) or the oldest waiting fill its room (the batch stays
  full, ``continuous-fill``); ``continuous-eager`` joins newcomers at the very next step (no join threshold);
  ``continuous-later8`` closes the batch to newcomers once 8 sentences joined after its oldest one, until that
  one finishes (the server's ``max_later_joins``); ``continuous-age12`` once its oldest one has run 12 steps (a
  rule tried and not kept, docs/benchmarks.md, issue 17, session 16).
What is left out: gRPC, queueing delays of the real server (``max_queue_delay_ms``), length grouping of the
backlog. The offered load is a fraction of the saturation rate measured the same way (a closed batch decoding
every sentence, cohorts of ``max_batch_size``). Prints p50/p99 per mode, model and load; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.batch import DecodingBatch

FRACTIONS = (0.5, 0.75, 0.9)


@dataclass(frozen=True)
class Policy:
    mode: str  # "continuous" or "request"
    max_batch_size: int = 32
    join_window_steps: int = 8
    join_fraction: float = 0.25
    max_join_steps: int = 8
    drain_under_backlog: bool = True
    join_age_steps: int = 0  # continuous: join only while the batch's oldest sentence has run fewer steps (0: any)
    max_later_joins: int = 0  # continuous: join only while fewer sentences joined after the oldest one (0: any)

    @property
    def name(self) -> str:
        if self.mode == "request":
            return "request"
        if self.join_age_steps:
            return f"continuous-age{self.join_age_steps}"
        if self.max_later_joins:
            return f"continuous-later{self.max_later_joins}"
        if self.join_fraction == 0:
            return "continuous-eager"
        return "continuous" if self.drain_under_backlog else "continuous-fill"


POLICIES = {
    p.name: p
    for p in (
        Policy("request"),
        Policy("continuous"),
        Policy("continuous", drain_under_backlog=False),
        Policy("continuous", join_fraction=0.0),  # newcomers join at the very next step
        Policy("continuous", join_age_steps=12),
        Policy("continuous", max_later_joins=8),
    )
}


def _timed(call, clock: list[float], steps: float | None, batch: object):
    """Run ``call`` and advance the clock by ``steps`` when given (a step clock), else by what a modelled batch
    says the call cost (its ``last_cost``, ``loadtest/queue_model.py``), else by the call's thread CPU time."""
    start = time.thread_time()
    result = call()
    modelled = getattr(batch, "last_cost", None)
    clock[0] += steps if steps is not None else modelled if modelled is not None else time.thread_time() - start
    return result


class SteppedBatch(Protocol):
    """What ``simulate`` drives: a ``DecodingBatch``, or ``queue_model.ModelledBatch``."""

    def __len__(self) -> int: ...

    def add(self, sources: list[list[int]], options: DecodingOptions, keys: list[int]) -> object: ...

    def step(self) -> Sequence[Any]: ...


def simulate(
    engine: Engine | None,
    sources: list[list[int]],
    arrivals: np.ndarray,
    policy: Policy,
    options: DecodingOptions | None = None,
    step_clock: bool = False,
    batch: SteppedBatch | None = None,
) -> np.ndarray:
    """Latency (s, simulated clock) of every source, arriving at ``arrivals`` (s), decoded under ``policy`` with
    ``options`` (default: beam 4).

    ``step_clock``: time is counted in decode steps instead (each step 1, encoding 0), so latencies and arrivals
    are in steps. Tests of the admission rules use it: the CPU-time clock depends on how busy the machine is.
    ``batch``: an empty batch to decode in (default: a new one). The server's engine thread keeps one batch for
    its whole life, whose host buffers have grown to the largest batch it has held (``engine/cache.py``); a new
    batch grows them again under the measured traffic, 0.1-0.7 s a step when a cache of 100+ rows grows
    (fresh pages), which no server sentence pays after warm-up. So ``run`` passes a warmed batch.
    """
    options = options or DecodingOptions(beam_size=4)
    if batch is None:
        if engine is None:
            raise ValueError("simulate needs an engine or a batch")
        batch = engine.new_batch()
    if len(batch):
        raise ValueError("simulate needs an empty batch")
    clock = [0.0]
    done = np.full(len(sources), np.nan)
    waiting: list[int] = []
    following, live, steps_since_join, batch_steps = 0, 0, 0, 0
    joined_at: dict[int, int] = {}  # source -> batch_steps when it joined
    admitted = 0  # sentences admitted into the running batch so far
    admitted_by: dict[int, int] = {}  # source -> admitted once it had joined (its group included)
    while following < len(sources) or waiting or live:
        while following < len(sources) and arrivals[following] <= clock[0]:
            waiting.append(following)
            following += 1
        if not live and not waiting:
            clock[0] = float(arrivals[following])  # idle until the next arrival
            continue
        room = policy.max_batch_size - live
        if not live:
            join, batch_steps = True, 0
        elif policy.mode == "request":
            join = batch_steps < policy.join_window_steps and bool(waiting) and room > 0
        else:
            backlog = len(waiting) > room
            join = bool(waiting) and room > 0 and not (backlog and policy.drain_under_backlog)
            join = join and (
                backlog
                or len(waiting) >= math.ceil(live * policy.join_fraction)
                or steps_since_join >= policy.max_join_steps
            )
            oldest = min(joined_at, key=joined_at.__getitem__)
            join = join and not (policy.join_age_steps and batch_steps - joined_at[oldest] >= policy.join_age_steps)
            later = admitted - admitted_by[oldest]
            join = join and not (policy.max_later_joins and later >= policy.max_later_joins)
        if join:
            take, waiting = waiting[:room], waiting[room:]
            take.sort(key=lambda i: len(sources[i]))
            add = lambda take=take: batch.add([sources[i] for i in take], options, keys=take)  # noqa: E731
            _timed(add, clock, 0.0 if step_clock else None, batch)
            live += len(take)
            joined_at.update(dict.fromkeys(take, batch_steps))
            admitted += len(take)
            admitted_by.update(dict.fromkeys(take, admitted))
            steps_since_join = 0
        for finished in _timed(batch.step, clock, 1.0 if step_clock else None, batch):
            done[finished.key] = clock[0] - arrivals[finished.key]
            del joined_at[finished.key], admitted_by[finished.key]
            live -= 1
        steps_since_join += 1
        batch_steps += 1
    return done


def saturation_rate(engine: Engine, sources: list[list[int]], batch_size: int, repeats: int = 2) -> float:
    """Sentences per CPU second of the engine decoding every source in cohorts (its best batch throughput), best
    of ``repeats``: the offered loads are fractions of it, so one slow measurement would lighten every load."""
    rates = []
    for _ in range(repeats):
        start = time.thread_time()
        engine.translate_ids(sources, DecodingOptions(beam_size=4, return_scores=False), max_batch_size=batch_size)
        rates.append(len(sources) / (time.thread_time() - start))
    return max(rates)


def warmed_batch(engine: Engine, sources: list[list[int]], policy: Policy) -> DecodingBatch:
    """A batch whose buffers have grown as the server's do in its warm-up: every source arriving at once."""
    batch = engine.new_batch()
    simulate(engine, sources, np.zeros(len(sources)), policy, batch=batch)
    return batch


def run(
    models: list[Path],
    lines_path: Path,
    requests: int,
    seeds: list[int],
    out: Path,
    policies: list[str] | None = None,
) -> dict:
    """Every seed draws its own sentences and arrivals; every (load, model, policy) decodes the same ones."""
    engines = {str(model): Engine.load(model, threads=1, spin=False) for model in models}
    first = next(iter(engines.values()))
    texts = [line for line in lines_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = [POLICIES[name] for name in policies or list(POLICIES)]
    results: dict = {"requests": requests, "policies": [p.name for p in chosen], "seeds": []}
    print(f"{'seed':>4} {'load':>5}  {'model':32s} {'policy':16s}  p50 ms  p99 ms  p99/p50")
    for seed in seeds:
        rng = np.random.default_rng(seed)
        sources = first.encode_texts([texts[i] for i in rng.permutation(len(texts))[:requests]])
        rates = {name: saturation_rate(engine, sources, 32) for name, engine in engines.items()}
        rate = max(rates.values())
        print(f"seed {seed}: saturation (sentences per CPU second): " + ", ".join(f"{r:.1f}" for r in rates.values()))
        gaps = rng.exponential(1.0, len(sources))
        batches = {name: warmed_batch(engine, sources, POLICIES["continuous"]) for name, engine in engines.items()}
        runs = []
        for fraction in FRACTIONS:
            arrivals = np.cumsum(gaps) / (rate * fraction)
            for name, engine in engines.items():
                for policy in chosen:
                    latency = simulate(engine, sources, arrivals, policy, batch=batches[name]) * 1000
                    p50, p99 = (float(np.percentile(latency, q)) for q in (50, 99))
                    runs.append(
                        {"fraction": fraction, "model": name, "mode": policy.name, "p50_ms": p50, "p99_ms": p99}
                    )
                    print(
                        f"{seed:4d} {fraction:5.0%}  {name[-32:]:32s} {policy.name:16s} {p50:7.0f} {p99:7.0f}"
                        f" {p99 / p50:8.2f}",
                        flush=True,
                    )
        results["seeds"].append({"seed": seed, "saturation": rates, "rate": rate, "runs": runs})
    results["wins"] = p99_wins(results["seeds"])
    for line in results["wins"]:
        print(line)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batching_sim.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def p99_wins(seeds: list[dict]) -> list[str]:
    """Per model, load and continuous policy: in how many seeds its p99 (and p50) beat request-level's."""
    table: dict[tuple[str, float, str], list[tuple[bool, bool]]] = {}
    for seed in seeds:
        request = {(r["model"], r["fraction"]): r for r in seed["runs"] if r["mode"] == "request"}
        for r in seed["runs"]:
            base = request.get((r["model"], r["fraction"]))
            if r["mode"] != "request" and base:
                won = (r["p99_ms"] < base["p99_ms"], r["p50_ms"] < base["p50_ms"])
                table.setdefault((r["model"], r["fraction"], r["mode"]), []).append(won)
    return [
        f"{model[-32:]} {fraction:.0%} {mode}: lower p99 than request-level in {sum(w for w, _ in wins)}/{len(wins)}"
        f" seeds, lower p50 in {sum(m for _, m in wins)}/{len(wins)}"
        for (model, fraction, mode), wins in table.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nmtserve.loadtest.batching_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, action="append", required=True, help="model directory (repeatable)")
    parser.add_argument("--input", type=Path, default=Path("data/corpus/dev.en"))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (sentences, arrivals)")
    parser.add_argument("--policy", choices=list(POLICIES), action="append", help="default: all")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/batching_sim"))
    args = parser.parse_args(argv)
    run(args.model, args.input, args.requests, args.seed, args.out, args.policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
