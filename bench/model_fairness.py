"""Starvation across models: a light model's latency while another model is flooded, with and without StepTurns.

``python -m nmtserve.bench.model_fairness`` runs two engine threads as a multi-model server does (one Scheduler,
queue and engine per model; server/fairness.py), at the engine-thread level so that nothing else (gRPC, the
event loop) takes part:

- ``alone``: the light model by itself, under its light open-loop load: the yardstick;
- ``shared cpu``: the same light load while the other model's queue is kept full, each engine thread on its own
  (the operating system shares the cores between their steps);
- ``turns``: the same, the two engine threads sharing one ``StepTurns``.

Scenarios alternate within each repeat (the machine may be shared: the spread over repeats is printed). Every
answer is checked against the model's own offline translation of the sentence, and every request must finish.
Results: a table on stdout, JSON and a PNG of the light model's latency percentiles under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nmtserve.engine import DecodingOptions, Engine, Hypothesis
from nmtserve.engine.model_dir import demo_export
from nmtserve.loadtest.http_vs_grpc import SENTENCES  # the same 16 short UI sentences
from nmtserve.server.batching import Budget
from nmtserve.server.fairness import StepTurns
from nmtserve.server.metrics import ModelMetrics, ServerMetrics
from nmtserve.server.scheduler import Scheduler
from nmtserve.server.work import Request, WorkItem
from nmtserve.server.workqueue import WorkQueue

SCENARIOS = ("alone", "shared cpu", "turns")


class TimedSink:
    """A RequestSink on plain threads: when the answer came, what it was, and how many of the other model's
    decode steps ran while it was in flight (read from that model's own metrics)."""

    def __init__(self, steps_elsewhere: Any = None) -> None:
        self.start = time.perf_counter()
        self.end: float | None = None
        self.hypotheses: list[Hypothesis] = []
        self.error: BaseException | None = None
        self._steps = steps_elsewhere
        self.steps_at_start = steps_elsewhere() if steps_elsewhere else 0.0
        self.steps_during = 0.0
        self.done = threading.Event()

    def finished(self, index: int, hypotheses: list[Hypothesis]) -> None:
        self.hypotheses = hypotheses
        self._finish()

    def partial(self, index: int, token_ids: list[int]) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        self.error = error
        self._finish()

    def _finish(self) -> None:
        self.end = time.perf_counter()
        if self._steps:
            self.steps_during = self._steps() - self.steps_at_start
        self.done.set()

    @property
    def latency_s(self) -> float:
        assert self.end is not None
        return self.end - self.start


@dataclass
class Lane:
    """One model as a multi-model server runs it: its metrics, queue and engine thread."""

    name: str
    engine: Engine
    metrics: ModelMetrics
    queue: WorkQueue
    scheduler: Scheduler

    @classmethod
    def start(cls, name: str, engine: Engine, metrics: ServerMetrics, turns: StepTurns | None, max_batch: int) -> Lane:
        model = metrics.for_model(name, engine.info.precision)
        queue = WorkQueue(100_000, on_depth=model.queue_depth.set, on_tokens=model.queue_tokens.set)
        scheduler = Scheduler(engine, queue, Budget(max_batch, 64 * max_batch, 4 * max_batch), model, turns=turns,
                              turn_key=name)  # fmt: skip
        scheduler.start()
        return cls(name, engine, model, queue, scheduler)


@dataclass
class ScenarioResult:
    scenario: str
    light_latencies_s: list[float]
    light_requests: int
    light_lost: int
    light_wrong: int
    flood_sentences_per_s: float
    flood_wrong: int
    flood_steps_per_light_request: float
    light_share_of_turn_time: float | None = None
    flood_min_waiting: int | None = None  # least sentences the flood had waiting when a light request arrived
    extra: dict[str, Any] = field(default_factory=dict)

    def percentiles(self) -> dict[str, float]:
        lat = np.array(self.light_latencies_s) * 1000
        if not len(lat):
            return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
        return {
            "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()),
        }


def references(engine: Engine, sources: Sequence[Sequence[int]], options: DecodingOptions) -> list[list[int]]:
    """Each sentence translated alone, offline: what every served answer must equal."""
    return [engine.translate_ids([s], options)[0][0].token_ids for s in sources]


def run_scenario(
    scenario: str,
    flood: Engine,
    light: Engine,
    duration_s: float = 10.0,
    light_rate: float = 4.0,
    flood_depth: int = 64,
    max_batch: int = 32,
    options: DecodingOptions | None = None,
    seed: int = 0,
    checks: dict[str, tuple[list[list[int]], list[list[int]]]] | None = None,
) -> ScenarioResult:
    """One scenario: light open-loop Poisson arrivals (``light_rate`` requests/s, one sentence each) for
    ``duration_s``, the flood's queue kept at ``flood_depth`` sentences (unless ``alone``)."""
    assert scenario in SCENARIOS, scenario
    options = options or DecodingOptions()
    light_sources = light.encode_texts(SENTENCES)
    flood_sources = flood.encode_texts(SENTENCES)
    checks = checks or {
        "light": (light_sources, references(light, light_sources, options)),
        "flood": (flood_sources, references(flood, flood_sources, options)),
    }
    light_refs, flood_refs = checks["light"][1], checks["flood"][1]
    metrics = ServerMetrics()
    turns = StepTurns() if scenario == "turns" else None
    light_lane = Lane.start("light", light, metrics, turns, max_batch)
    flood_lane = Lane.start("flood", flood, metrics, turns, max_batch) if scenario != "alone" else None

    def flood_steps() -> float:
        value = metrics.registry.get_sample_value(
            "nmtserve_decode_step_seconds_count", {"model": "flood", "version": flood.info.precision}
        )
        return value or 0.0

    stop = threading.Event()
    flood_sinks: list[tuple[int, TimedSink]] = []

    def feed_flood() -> None:
        assert flood_lane is not None
        i = 0
        while not stop.is_set():
            if len(flood_lane.queue) < flood_depth:
                batch = []
                for _ in range(max_batch):
                    sink = TimedSink()
                    flood_sinks.append((i % len(SENTENCES), sink))
                    batch.append(WorkItem(Request(sink), 0, flood_sources[i % len(SENTENCES)], options))
                    i += 1
                flood_lane.queue.put(batch)
            else:
                time.sleep(0.002)

    feeder = threading.Thread(target=feed_flood, daemon=True) if flood_lane else None
    if feeder:
        feeder.start()
        time.sleep(0.5)  # the flood is running (its queue full) before the first light request
    rng = random.Random(seed)
    light_sinks: list[tuple[int, TimedSink]] = []
    flood_waiting: list[int] = []  # the flood's queue depth at each light arrival: saturated means never 0
    flood_done_before = sum(1 for _, s in flood_sinks if s.done.is_set())
    began = time.perf_counter()
    due = began
    while True:
        due += rng.expovariate(light_rate)
        if due - began > duration_s:
            break
        time.sleep(max(0.0, due - time.perf_counter()))
        index = len(light_sinks) % len(SENTENCES)
        if flood_lane is not None:
            flood_waiting.append(len(flood_lane.queue))
        sink = TimedSink(flood_steps if flood_lane else None)
        light_sinks.append((index, sink))
        light_lane.queue.put([WorkItem(Request(sink), 0, light_sources[index], options)])
    deadline = time.perf_counter() + 60
    for _, sink in light_sinks:
        sink.done.wait(max(0.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - began
    flood_done = sum(1 for _, s in flood_sinks if s.done.is_set()) - flood_done_before
    stop.set()
    if feeder:
        feeder.join(5)
    light_used = turns.used_s("light") if turns else None
    flood_used = turns.used_s("flood") if turns else None
    light_lane.scheduler.stop()
    if flood_lane:
        flood_lane.scheduler.stop()
    answered = [(i, s) for i, s in light_sinks if s.done.is_set() and s.error is None]
    flood_answered = [(i, s) for i, s in flood_sinks if s.done.is_set() and s.error is None and s.hypotheses]
    return ScenarioResult(
        scenario=scenario,
        light_latencies_s=[s.latency_s for _, s in answered],
        light_requests=len(light_sinks),
        light_lost=len(light_sinks) - len(answered),
        light_wrong=sum(1 for i, s in answered if s.hypotheses[0].token_ids != light_refs[i]),
        flood_sentences_per_s=flood_done / elapsed if flood_lane else 0.0,
        flood_wrong=sum(1 for i, s in flood_answered if s.hypotheses[0].token_ids != flood_refs[i]),
        flood_steps_per_light_request=float(np.mean([s.steps_during for _, s in answered])) if answered else 0.0,
        light_share_of_turn_time=(light_used / (light_used + flood_used)) if light_used and flood_used else None,
        flood_min_waiting=min(flood_waiting) if flood_waiting else None,
    )


def run(
    flood: Engine, light: Engine, repeats: int, duration_s: float, light_rate: float, flood_depth: int, max_batch: int
) -> dict[str, Any]:
    options = DecodingOptions()
    light_sources, flood_sources = light.encode_texts(SENTENCES), flood.encode_texts(SENTENCES)
    checks = {
        "light": (light_sources, references(light, light_sources, options)),
        "flood": (flood_sources, references(flood, flood_sources, options)),
    }
    runs: list[dict[str, Any]] = []
    work = [(r, s) for r in range(repeats) for s in SCENARIOS]  # alternating: A B C A B C ...
    for repeat, scenario in tqdm(work, desc="model fairness", unit="scenario"):
        result = run_scenario(
            scenario, flood, light, duration_s, light_rate, flood_depth, max_batch, options, seed=repeat, checks=checks
        )
        runs.append({"repeat": repeat, **result.__dict__, **result.percentiles()})
    return {"runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario: the percentiles over every repeat's latencies pooled, and each repeat's p99 (the spread)."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        mine = [r for r in runs if r["scenario"] == scenario]
        if not mine:
            continue
        pooled = np.array([x for r in mine for x in r["light_latencies_s"]]) * 1000
        out[scenario] = {
            "p50_ms": float(np.percentile(pooled, 50)),
            "p99_ms": float(np.percentile(pooled, 99)),
            "p99_ms_per_repeat": [round(r["p99_ms"], 1) for r in mine],
            "light_requests": sum(r["light_requests"] for r in mine),
            "lost": sum(r["light_lost"] for r in mine),
            "wrong": sum(r["light_wrong"] + r["flood_wrong"] for r in mine),
            "flood_sentences_per_s": float(np.mean([r["flood_sentences_per_s"] for r in mine])),
            "flood_steps_per_light_request": float(np.mean([r["flood_steps_per_light_request"] for r in mine])),
        }
    base = out.get("alone", {}).get("p99_ms")
    for row in out.values():
        row["p99_over_alone"] = row["p99_ms"] / base if base else None
    return out


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    header = ["scenario", "p50 ms", "p99 ms", "p99/alone", "p99 per repeat", "flood sent/s", "flood steps/req", "lost",
              "wrong"]  # fmt: skip
    rows = [
        [
            name,
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['p99_over_alone']:.2f}" if r["p99_over_alone"] else "-",
            " ".join(str(x) for x in r["p99_ms_per_repeat"]),
            f"{r['flood_sentences_per_s']:.1f}",
            f"{r['flood_steps_per_light_request']:.1f}",
            str(r["lost"]),
            str(r["wrong"]),
        ]
        for name, r in summary.items()
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    names = list(summary)
    x = np.arange(len(names))
    axes.bar(x - 0.2, [summary[n]["p50_ms"] for n in names], 0.4, label="p50")
    axes.bar(x + 0.2, [summary[n]["p99_ms"] for n in names], 0.4, label="p99")
    axes.set_xticks(x, names)
    axes.set_ylabel("light model latency (ms)")
    axes.set_title(title, fontsize=9)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtserve.bench.model_fairness", description=__doc__.split("\n")[0])
    parser.add_argument("--flood", default="fp32", help="demo export flooded with work (fp32 or int8)")
    parser.add_argument("--light", default="int8", help="demo export under the light load")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of each engine")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of light load per scenario")
    parser.add_argument("--light-rate", type=float, default=4.0, help="light requests per second (Poisson)")
    parser.add_argument("--flood-depth", type=int, default=64, help="sentences kept waiting for the flooded model")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/model_fairness"))
    args = parser.parse_args(argv)
    flood = Engine.load(demo_export(args.flood), threads=args.threads, spin=False)
    light = Engine.load(demo_export(args.light), threads=args.threads, spin=False)
    results = run(flood, light, args.repeats, args.duration, args.light_rate, args.flood_depth, args.max_batch)
    results["settings"] = vars(args) | {"out": str(args.out)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    title = (
        f"light demo {args.light} at {args.light_rate}/s, flooded demo {args.flood} (queue {args.flood_depth}), "
        f"{args.threads} threads each"
    )
    png = plot(results["summary"], args.out / "model_fairness.png", title)
    print(format_summary(results["summary"]))
    print(f"results: {args.out / 'results.json'}  plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
