"""Starvation across models through a real server: a light model's latency while another model of the same
repository is flooded, against the same light load with no flood (the yardstick).

``python -m nmtserve.bench.model_fairness_server`` builds a model repository of the two demo exports (``demo/1``:
fp32, flooded; ``demo-int8/1``: int8, the light load), starts ``nmtserve serve --model-repository`` in its own
process, and drives it over gRPC from this one: ``--flood-clients`` closed-loop clients keep the flooded model's
queue full with ``--flood-texts``-sentence requests, while Poisson arrivals (``--light-rate`` per second, one
sentence each) go to the light model. Scenarios alternate within each repeat. Every light answer is compared with
the int8 model's offline translation; every code is counted. The server's own turn-wait histogram (the time the
light model's steps waited for the flood's, server/fairness.py) is read from /metrics.

The engine-thread-level benchmark (with and without StepTurns) is bench/model_fairness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from nmtserve.bench.model_fairness import SENTENCES, plot
from nmtserve.engine import Engine
from nmtserve.engine.model_dir import demo_export
from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc

SCENARIOS = ("alone", "flooded")
FLOODED, LIGHT = "demo", "demo-int8"


def build_repository(root: Path) -> Path:
    """REPO/demo/1 -> the fp32 demo export, REPO/demo-int8/1 -> the int8 one (symbolic links: nothing copied)."""
    for name, precision in ((FLOODED, "fp32"), (LIGHT, "int8")):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "1").symlink_to(demo_export(precision), target_is_directory=True)
    return root


def turn_wait(metrics_url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the server's nmtserve_turn_wait_seconds for ``model``."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "nmtserve_turn_wait_seconds_sum":
                total += sample.value
            elif sample.name == "nmtserve_turn_wait_seconds_count":
                count += sample.value
    return total, count


async def run_scenario(
    address: str,
    metrics_url: str,
    scenario: str,
    references: dict[str, str],
    duration_s: float,
    light_rate: float,
    flood_clients: int,
    flood_texts: int,
    seed: int,
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        stop = asyncio.Event()
        flood_codes: Counter[str] = Counter()
        flood_sentences = 0

        async def flood(client: int) -> None:
            nonlocal flood_sentences
            rng = random.Random(seed * 1000 + client)
            while not stop.is_set():
                texts = [rng.choice(SENTENCES) for _ in range(flood_texts)]
                try:
                    await stub.Translate(pb.TranslateRequest(texts=texts, model=FLOODED), timeout=120)
                    flood_codes["OK"] += 1
                    if not stop.is_set():
                        flood_sentences += len(texts)
                except grpc.aio.AioRpcError as error:
                    flood_codes[error.code().name] += 1

        flooders = [asyncio.create_task(flood(i)) for i in range(flood_clients if scenario == "flooded" else 0)]
        if flooders:
            await asyncio.sleep(2.0)  # the flood's queue is full before the first light request
        before = turn_wait(metrics_url, LIGHT)
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        wrong = 0

        async def light(text: str) -> None:
            nonlocal wrong
            start = time.perf_counter()
            try:
                answer = await stub.Translate(pb.TranslateRequest(texts=[text], model=LIGHT), timeout=60)
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                return
            latencies.append(time.perf_counter() - start)
            codes["OK"] += 1
            wrong += answer.translations[0].hypotheses[0].text != references[text]

        rng = random.Random(seed)
        tasks: list[asyncio.Task[None]] = []
        began = time.perf_counter()
        due = 0.0
        while True:
            due += rng.expovariate(light_rate)
            if due > duration_s:
                break
            await asyncio.sleep(max(0.0, began + due - time.perf_counter()))
            tasks.append(asyncio.create_task(light(SENTENCES[len(tasks) % len(SENTENCES)])))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
        after = turn_wait(metrics_url, LIGHT)
        sentences_in_window = flood_sentences
        stop.set()
        await asyncio.gather(*flooders)
    lat = np.array(latencies) * 1000
    waits = after[1] - before[1]
    return {
        "scenario": scenario,
        "requests": len(tasks),
        "codes": dict(codes),
        "wrong": wrong,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "latencies_s": latencies,
        "flood_sentences_per_s": sentences_in_window / elapsed if flooders else 0.0,
        "flood_codes": dict(flood_codes),
        "light_turn_wait_mean_ms": 1000 * (after[0] - before[0]) / waits if waits else 0.0,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        mine = [r for r in runs if r["scenario"] == scenario]
        pooled = np.array([x for r in mine for x in r["latencies_s"]]) * 1000
        codes: Counter[str] = Counter()
        for r in mine:
            codes.update(r["codes"])
        out[scenario] = {
            "p50_ms": float(np.percentile(pooled, 50)),
            "p99_ms": float(np.percentile(pooled, 99)),
            "p99_ms_per_repeat": [round(r["p99_ms"], 1) for r in mine],
            "requests": sum(r["requests"] for r in mine),
            "codes": dict(codes),
            "wrong": sum(r["wrong"] for r in mine),
            "flood_sentences_per_s": float(np.mean([r["flood_sentences_per_s"] for r in mine])),
            "light_turn_wait_mean_ms": float(np.mean([r["light_turn_wait_mean_ms"] for r in mine])),
        }
    base = out["alone"]["p99_ms"]
    for row in out.values():
        row["p99_over_alone"] = row["p99_ms"] / base
    return out


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'scenario':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'p99/alone':>9}  {'p99 per repeat':>28}  "
        f"{'flood sent/s':>12}  {'turn wait ms':>12}  codes  wrong"
    ]
    for name, r in summary.items():
        lines.append(
            f"{name:>8}  {r['p50_ms']:7.1f}  {r['p99_ms']:7.1f}  {r['p99_over_alone']:9.2f}  "
            f"{' '.join(str(x) for x in r['p99_ms_per_repeat']):>28}  {r['flood_sentences_per_s']:12.1f}  "
            f"{r['light_turn_wait_mean_ms']:12.2f}  {r['codes']}  {r['wrong']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtserve.bench.model_fairness_server", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of light load per scenario")
    parser.add_argument("--light-rate", type=float, default=4.0, help="light requests per second (Poisson)")
    parser.add_argument("--flood-clients", type=int, default=16, help="closed-loop clients of the flooded model")
    parser.add_argument("--flood-texts", type=int, default=8, help="sentences per flood request")
    parser.add_argument("--threads", type=int, default=0, help="the server's --threads (0: its default)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/model_fairness_server"))
    args = parser.parse_args(argv)
    light_engine = Engine.load(demo_export("int8"), threads=1, spin=False)
    # each sentence alone: int8 results can change with the batch's padding (one of SENTENCES does), and a light
    # request at this rate is almost always decoded alone
    references = {s: light_engine.translate([s])[0][0].text or "" for s in SENTENCES}
    del light_engine
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = build_repository(Path(tmp) / "repository")
        flags = ["--model-repository", str(repository)] + (["--threads", str(args.threads)] if args.threads else [])
        with ServerProcess(None, *flags) as server:
            work = [(r, s) for r in range(args.repeats) for s in SCENARIOS]
            for repeat, scenario in tqdm(work, desc="model fairness (server)", unit="scenario"):
                runs.append(
                    asyncio.run(
                        run_scenario(
                            server.address,
                            server.metrics_url,
                            scenario,
                            references,
                            args.duration,
                            args.light_rate,
                            args.flood_clients,
                            args.flood_texts,
                            seed=repeat,
                        )
                    )
                    | {"repeat": repeat}
                )
    summary = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"runs": runs, "summary": summary, "settings": vars(args) | {"out": str(args.out)}}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    title = (
        f"through the server: light {LIGHT} at {args.light_rate}/s, {FLOODED} flooded by {args.flood_clients} "
        f"clients x {args.flood_texts} sentences"
    )
    png = plot(summary, args.out / "model_fairness_server.png", title)
    print(format_summary(summary))
    print(f"results: {args.out / 'results.json'}  plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
