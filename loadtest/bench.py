"""Server benchmarks for docs/benchmarks.md: every figure comes from one run of this script.

    nmtserve bench server --model DIR --input data/corpus/dev.en --out runs/bench/server

Each server runs in its own process (``nmtserve serve``), so the load generator does not share its GIL; the
three servers (continuous, request-level, ``max_batch_size 1``) run side by side and take turns, so a change in
the machine's load (a training run shares it) spreads over all of them. The engine baseline runs first, alone.
Measured:
1. engine alone: ``Engine.translate`` on the first N sentences (length-sorted inside, the server's batch size);
2. the servers on the same N sentences, each sentence its own request, all sent at once (the better of two
   bursts, as the engine's figure is the better of two runs). Besides wall-clock rates, both sides' CPU time:
   sentences per CPU second of the server process against the engine's is what the server costs on top of the
   engine, without the time either waited for a core (on a shared machine CPU time still moves between runs,
   with cache and memory contention, but less than wall-clock rates);
3. the servers at saturation on the same N sentences: a closed loop that keeps N requests in flight, cycling
   through those sentences for ``--duration`` seconds. This is the figure the engine's is compared with
   ("server at saturation"): a burst also measures its own start and its drain, when the last sentences decode
   in a nearly empty batch, which the engine alone (globally length-sorted cohorts) barely has; with fewer
   requests in flight than N the server has less to group by length, so it runs below the engine's rate by
   what the engine's global sort is worth (docs/benchmarks.md, issue 17, session 17). The engine's side of
   this check is sustained too: passes over the same sentences repeated for ``--duration`` seconds;
4. saturation throughput (closed loop, 64 in flight, cycling through the whole input), median of
   ``--repeats`` runs per server: the rate the load levels below are fractions of;
5. continuous vs request-level batching under open-loop Poisson arrivals at 25/50/75/90 % of the default
   server's saturation rate: latency percentiles, throughput, a latency CDF and load curves;
6. the tail the server adds: p99 / p50 at half saturation on sentences of one source length (the median's), where
   every request is the same amount of work and any spread comes from queueing and batching, not the workload.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nmtserve.loadtest.plots import latency_cdf, load_curves
from nmtserve.loadtest.run import LoadTestReport, LoadTestSpec, run_loadtest
from nmtserve.loadtest.serverproc import ServerProcess, cpu_seconds_of
from nmtserve.loadtest.stats import LevelResult, format_level
from nmtserve.loadtest.workload import read_lines
from nmtserve.server.config import ServerConfig, batching_mode, engine_plan


@dataclass
class Bench:
    model: Path
    lines: list[str]
    duration: float
    sentences: int
    threads: int
    out: Path
    repeats: int = 2
    progress: bool = True
    device: str = "cpu"  # the servers' and the engine's: "cpu" or "cuda"
    workers: int = 0  # the servers' engine_workers (0: their default); the engine alone runs as many threads

    def load(
        self, server: ServerProcess, mode: str, level: float, once: bool = False, lines: list[str] | None = None
    ) -> LoadTestReport:
        """One load level; ``once`` sends the first ``sentences`` lines exactly once, otherwise the load cycles
        through ``lines`` (default: all of them) for ``duration`` seconds."""
        lines = self.lines[: self.sentences] if once else (lines or self.lines)
        duration = 3600.0 if once else self.duration  # ``once`` stops when every line was sent
        spec = LoadTestSpec(server.address, lines, mode, [level], duration, once=once, timeout=60.0)
        report = run_loadtest(spec, progress=self.progress)
        print(f"  {format_level(report.results[0])}", flush=True)
        return report


SERVERS = {  # name -> flags; the default batching mode is ServerConfig's
    "continuous": ("--batching", "continuous"),
    "request": ("--batching", "request"),
    "batch_1": ("--max-batch-size", "1"),
}


def _with_cpu(
    bench: Bench, server: ServerProcess, level: float, once: bool = False, lines: list[str] | None = None
) -> tuple[LoadTestReport, float]:
    """``bench.load``'s report for one closed-loop level, and the server's sentences per CPU second of its process
    (every thread) meanwhile."""
    start_cpu = cpu_seconds_of(server.pid) or 0.0
    report = bench.load(server, "concurrency", level, once, lines)
    used = (cpu_seconds_of(server.pid) or 0.0) - start_cpu
    result = report.results[0]
    return report, (result.sentences_per_s * result.duration_s / used if used > 0 else 0.0)


def _shares(engine, lines: list[str], batch_size: int, workers: int) -> list[list[str]]:
    """``lines`` in length-sorted cohorts of ``batch_size``, dealt round robin to ``workers`` threads."""
    lengths = [len(ids) for ids in engine.encode_texts(lines)]
    ordered = [lines[i] for i in sorted(range(len(lines)), key=lengths.__getitem__)]
    cohorts = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return [[line for cohort in cohorts[w::workers] for line in cohort] for w in range(workers)]


@dataclass(frozen=True)
class EngineRate:
    sentences_per_s: float  # the faster of the runs (sustained: over all passes)
    sentences_per_cpu_s: float  # the cheaper of the runs in the process's CPU time, every thread (sustained: all)
    passes: int = 1  # passes over the lines counted in the rates


def engine_rate(
    engine, lines: list[str], batch_size: int, workers: int = 1, runs: int = 2, sustain_s: float = 0.0
) -> EngineRate:
    """``Engine.translate`` (length-sorted inside) on ``lines``, its cohorts shared among ``workers`` threads on the
    one engine as the server's engine threads share it: the best of ``runs`` passes; or, with ``sustain_s``,
    passes repeated for at least that long and counted together, the statistic of a server's closed-loop run of
    that length (a best pass of a few seconds is a best case that a 15-second run cannot have)."""
    shares = [share for share in _shares(engine, lines, batch_size, workers) if share]

    def one_pass() -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(len(shares)) as pool:
            list(pool.map(lambda share: engine.translate(share, max_batch_size=batch_size), shares))
        return time.perf_counter() - start, time.process_time() - start_cpu

    if sustain_s > 0:
        passes, wall, cpu = 0, 0.0, 0.0
        while wall < sustain_s:
            pass_wall, pass_cpu = one_pass()
            passes, wall, cpu = passes + 1, wall + pass_wall, cpu + pass_cpu
        return EngineRate(passes * len(lines) / wall, passes * len(lines) / cpu, passes)
    timings = [one_pass() for _ in range(runs)]
    return EngineRate(len(lines) / min(w for w, _ in timings), len(lines) / min(c for _, c in timings))


def engine_alone(
    model: Path,
    lines: list[str],
    threads: int,
    ceiling_sentences: int = 60,
    device: str = "cpu",
    workers: int = 1,
    sustain_s: float = 0.0,
) -> dict:
    """The engine without a server, at the server's batch size and engine threads (the best of two passes, and
    with ``sustain_s`` also sustained for that long); and how much batching can gain at all (the same
    ``ceiling_sentences`` sentences at batch 1 and at the server's batch size, one thread)."""
    from nmtserve.engine import Engine

    batch = ServerConfig().max_batch_size
    engine = Engine.load(model, device=device, threads=threads, spin=False)
    engine.translate(lines[:8])  # warm-up
    rate = engine_rate(engine, lines, batch, workers)
    sustained = engine_rate(engine, lines, batch, workers, sustain_s=sustain_s) if sustain_s > 0 else None
    few = lines[:ceiling_sentences]
    batched, single = (engine_rate(engine, few, size).sentences_per_s for size in (batch, 1))
    return {
        "sentences": len(lines),
        "batch_size": batch,
        "engine_threads": workers,
        "sentences_per_s": rate.sentences_per_s,
        "sentences_per_cpu_s": rate.sentences_per_cpu_s,
        "sustained": None if sustained is None else {"seconds": sustain_s, **vars(sustained)},
        "batching_ceiling": {"sentences": len(few), "batched": batched, "batch_1": single, "ratio": batched / single},
    }


def equal_length_lines(model: Path, lines: list[str], spread: int = 1) -> list[str]:
    """The lines whose token length (the model's own tokenizer) is within ``spread`` tokens of the median length."""
    from nmtserve.engine.model_dir import read_manifest
    from nmtserve.engine.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model, read_manifest(model).get("tokenizer"))
    lengths = [len(ids) for ids in tokenizer.encode_batch(lines)]
    middle = statistics.median_low(lengths)
    return [line for line, n in zip(lines, lengths, strict=True) if abs(n - middle) <= spread]


def equal_work_lines(model: Path, lines: list[str], spread: int = 1, beam: int = 4) -> list[str]:
    """``equal_length_lines`` whose translations (the model's own beam search, decoded offline) are also within
    ``spread`` tokens of their median: equal work per request, so that a spread of latencies is the scheduler's
    and the arrivals' alone, not the outputs' (``bench.latency_floor`` measures that part)."""
    from nmtserve.engine import DecodingOptions, Engine

    equal = equal_length_lines(model, lines, spread)
    engine = Engine.load(model, threads=1, spin=False)
    outputs = [len(nbest[0].token_ids) for nbest in engine.translate(equal, DecodingOptions(beam_size=beam))]
    middle = statistics.median_low(outputs)
    return [line for line, n in zip(equal, outputs, strict=True) if abs(n - middle) <= spread]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run(bench: Bench) -> dict:
    """All measurements; the servers run side by side (idle ones cost nothing) and take turns, so that a change
    in the machine's load spreads over every configuration instead of favouring one."""
    bench.out.mkdir(parents=True, exist_ok=True)
    from nmtserve.engine.model_dir import load_model_info

    default = batching_mode(ServerConfig().batching, load_model_info(bench.model).cache_layout)
    # what the servers resolve their settings to
    plan = ServerConfig(device=bench.device, engine_workers=bench.workers, threads=bench.threads)
    workers, threads = engine_plan(plan)
    results: dict = {"model": str(bench.model), "engine_workers": workers, "threads": threads}
    results["duration_s"] = bench.duration
    results["default_batching"] = default
    print(f"engine alone on {bench.sentences} sentences ...", flush=True)
    results["device"] = bench.device
    results["engine_alone"] = engine_alone(
        bench.model,
        bench.lines[: bench.sentences],
        threads,
        device=bench.device,
        workers=workers,
        sustain_s=bench.duration,
    )
    alone = results["engine_alone"]
    ceiling = alone["batching_ceiling"]
    print(
        f"  {alone['sentences_per_s']:.1f} sentences/s, {alone['sentences_per_cpu_s']:.1f} per CPU second; batching"
        f" gains the engine {ceiling['ratio']:.2f}x",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                ServerProcess(
                    bench.model,
                    *("--threads", str(threads), "--engine-workers", str(workers), "--device", bench.device),
                    *flags,
                )
            )
            for name, flags in SERVERS.items()
        }
        n, same_lines = bench.sentences, bench.lines[: bench.sentences]
        for name in ("continuous", "request"):
            # Like the engine, the server gets every sentence at once (each its own request) and orders the work;
            # and like the engine's figure (the better of two runs), the server's is the better of two bursts: the
            # first burst after start-up also pays for growing onnxruntime's memory arena to the batch's shapes.
            print(f"{name}: the same {n} sentences, one request each, all in flight (twice)", flush=True)
            bursts = [_with_cpu(bench, servers[name], n, once=True) for _ in "ab"]
            same = max(bursts, key=lambda burst: burst[0].results[0].sentences_per_s)
            entry = results.setdefault(name, {})
            entry["same_sentences"] = same[0]
            entry["same_sentences_runs"] = [report.results[0].sentences_per_s for report, _ in bursts]
            entry["same_sentences_per_cpu_s_runs"] = [per_cpu_s for _, per_cpu_s in bursts]
            entry["same_sentences_per_cpu_s"] = max(per_cpu_s for _, per_cpu_s in bursts)
            print(f"{name}: the same {n} sentences at saturation ({n} in flight, {bench.duration:.0f} s)", flush=True)
            report, per_cpu_s = _with_cpu(bench, servers[name], n, lines=same_lines)
            entry["same_sentences_saturated"] = report.results[0].as_dict()
            entry["same_sentences_saturated_per_cpu_s"] = per_cpu_s
        saturation: dict[str, list[LevelResult]] = {name: [] for name in SERVERS}
        for repeat in range(bench.repeats):
            for name, server in servers.items():
                print(f"{name}: saturation (closed loop), run {repeat + 1}", flush=True)
                in_flight = 8 if name == "batch_1" else 64
                saturation[name].append(bench.load(server, "concurrency", in_flight).results[0])
        rate = _median([r.sentences_per_s for r in saturation[default]])
        levels = [round(rate * fraction, 1) for fraction in FRACTIONS]
        sweeps: dict[str, list[LevelResult]] = {"continuous": [], "request": []}
        cdf = []
        for fraction, level in zip(FRACTIONS, levels, strict=True):
            for name in sweeps:
                print(f"{name}: open loop at {level} req/s ({fraction:.0%} of saturation)", flush=True)
                report = bench.load(servers[name], "rate", level)
                sweeps[name].append(report.results[0])
                if fraction == 0.5:
                    cdf.append((name, report.results[0], report.samples[0]))
        equal = Bench(**{**vars(bench), "lines": equal_length_lines(bench.model, bench.lines)})
        print(f"{default}: {len(equal.lines)} sentences of the median length, saturation then half of it", flush=True)
        equal_saturation = equal.load(servers[default], "concurrency", 64).results[0]
        equal_half = equal.load(servers[default], "rate", round(equal_saturation.sentences_per_s / 2, 1)).results[0]

    for name in SERVERS:
        entry = results.setdefault(name, {})
        if "same_sentences" in entry:
            entry["same_sentences"] = entry["same_sentences"].results[0].as_dict()
        entry["saturation_runs"] = [r.as_dict() for r in saturation[name]]
        entry["saturation_sentences_per_s"] = _median([r.sentences_per_s for r in saturation[name]])
        if name in sweeps:
            entry["open_loop"] = [r.as_dict() for r in sweeps[name]]
    results["equal_length"] = {
        "sentences": len(equal.lines),
        "saturation": equal_saturation.as_dict(),
        "half_saturation": equal_half.as_dict(),
    }
    half = results[default]["open_loop"][FRACTIONS.index(0.5)]["latency_ms"]
    equal_latency = results["equal_length"]["half_saturation"]["latency_ms"]
    results["checks"] = {
        "batching_speedup": results[default]["saturation_sentences_per_s"]
        / results["batch_1"]["saturation_sentences_per_s"],
        "server_vs_engine": max(results[n]["same_sentences"]["sentences_per_s"] for n in ("continuous", "request"))
        / results["engine_alone"]["sentences_per_s"],
        "server_vs_engine_cpu": max(results[n]["same_sentences_per_cpu_s"] for n in ("continuous", "request"))
        / results["engine_alone"]["sentences_per_cpu_s"],
        # both sustained for --duration seconds: the server's closed loop against the engine's repeated passes
        "saturated_server_vs_engine": max(
            results[n]["same_sentences_saturated"]["sentences_per_s"] for n in ("continuous", "request")
        )
        / results["engine_alone"]["sustained"]["sentences_per_s"],
        "saturated_server_vs_engine_cpu": max(
            results[n]["same_sentences_saturated_per_cpu_s"] for n in ("continuous", "request")
        )
        / results["engine_alone"]["sustained"]["sentences_per_cpu_s"],
        "p99_over_p50_at_half_saturation": half["p99"] / half["p50"],
        "p99_over_p50_at_half_saturation_equal_length": equal_latency["p99"] / equal_latency["p50"],
    }
    (bench.out / "server_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    latency_cdf(cdf, bench.out / "latency_cdf.png", "Latency CDF at half the saturation rate (dev.en, beam 4)")
    load_curves(list(sweeps.items()), bench.out / "load_curves.png", "Continuous vs request-level batching")
    print(json.dumps(results["checks"], indent=2))
    return results


FRACTIONS = (0.25, 0.5, 0.75, 0.9)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``nmtserve bench server``."""
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--input", type=Path, default=Path("data/corpus/dev.en"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/server"))
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load level")
    parser.add_argument("--sentences", type=int, default=300, help="sentences of the engine-vs-server comparison")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads (0: the server's default, from the CPUs and quota)"
    )
    parser.add_argument(
        "--engine-workers",
        type=int,
        default=0,
        help="the servers' engine threads per model, and the engine alone's (0: the server's default)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="saturation runs per server (the median is kept)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the servers' engines run")
    parser.add_argument("--quiet", action="store_true")


def run_command(args: argparse.Namespace) -> int:
    """``nmtserve bench server``: figures as JSON and PNG under ``--out``."""
    lines = read_lines(args.input)
    bench = Bench(
        args.model,
        lines,
        args.duration,
        args.sentences,
        args.threads,
        args.out,
        args.repeats,
        not args.quiet,
        args.device,
        args.engine_workers,
    )
    run(bench)
    return 0
