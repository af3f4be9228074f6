"""Soak test: many requests of mixed lengths and options near saturation, with cancellations, short deadlines and
a burst above capacity, checked for lost answers, wrong answers and memory growth.

    nmtserve soak --requests 10000 --out runs/soak

By default it starts ``nmtserve serve`` on the demo model in a child process (on 127.0.0.1, free ports) so that it
can sample the server's resident memory; ``--server HOST:PORT --server-pid PID`` targets a running one instead.
Phases:
1. saturation probe (``--rate auto``): a closed loop of the same request mix for ``--probe-s`` seconds; the
   later phases offer ``--load`` (default 0.9) times the measured request rate;
2. warm-up: ``--warmup-requests`` requests exactly like the main phase's, burst included; they are checked like
   the others, but the memory baseline is taken after them (onnxruntime's arenas and the allocator grow to the
   largest batch shapes the traffic produces, and the burst's full batches are among the largest);
3. main phase: ``--requests`` requests as Poisson arrivals; ``--cancel-fraction`` of them are cancelled by the
   client at a random point (0 to the probe's 10th-percentile latency: the probe runs at saturation, so its median
   is a queueing figure longer than most latencies at 0.9 load, and a window built on it lets most answers come
   before the cancel; its fast tail is close to a request's own decoding time), ``--deadline-fraction`` get a short
   deadline (uniform in ``--short-deadline-ms``), ``--stream-fraction`` of the others go over TranslateStream
   (with partial output); each request has 1-4 texts and one of several decoding-option sets; a burst of
   ``--burst`` extra requests (default: four times the server's queue capacity) is sent at once when ``--burst-at``
   of the phase has been sent, and must be partly refused with RESOURCE_EXHAUSTED;
4. checks: every request got exactly one answer (none lost, none answered twice) before a watchdog expired;
   every successful answer equals the offline engine's translation of its own texts with its own options (text
   of every hypothesis; scores within 1e-3); every RESOURCE_EXHAUSTED carried a retry hint; during the main
   phase the server's RSS stayed within ``--rss-bound-mib`` of its level when the phase began; and at the end
   the server reports SERVING with nothing in flight, queued or running.

``--hostile N`` mixes in N bounded hostile clients for the whole run (``hostile.py``: oversized requests refused at
the token check, streams that never read), and adds the check that every oversized request was refused.

It prints the figures and writes them as JSON (``OUT/NAME.json``); the exit status is 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import platform
import random
import statistics
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from nmtserve.loadtest.hostile import HostileClients
from nmtserve.loadtest.runner import Connections
from nmtserve.loadtest.serverproc import ServerProcess, rss_of
from nmtserve.loadtest.workload import read_lines
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb

# Sentences of mixed lengths (2 to ~60 tokens) in the style of the demo model's domain (software documentation).
SENTENCES = [
    "Hello.",
    "Thank you.",
    "Save the file.",
    "Open the menu.",
    "Close all windows.",
    "The printer is offline.",
    "Restart the computer now.",
    "This package is obsolete.",
    "Select a language from the list.",
    "The file could not be opened.",
    "Press Enter to continue.",
    "The package contains the documentation.",
    "Click the button to insert a new row.",
    "The server could not be reached because the network is down.",
    "You can change the default settings in the preferences dialog.",
    "This program prints the version number of the installed kernel.",
    "Choose a font and a size for the selected text.",
    "The backup was completed successfully at the scheduled time.",
    "Use the arrow keys to move the cursor to the next cell.",
    "The document contains links to other documents and to web pages.",
    "Select the cells that you want to print, then open the File menu and choose Print to print them.",
    "If the password is wrong, the system locks the account after three attempts and sends a message to the "
    "administrator.",
    "This package provides the shared libraries needed to run programs that were compiled against the library.",
    "To insert a table of contents, place the cursor where you want it and choose the command from the menu.",
    "The installer detects the hardware of the computer, loads the drivers it needs and asks which disk to use.",
    "When you save a document in another format, some formatting may be lost, so keep a copy in the original format.",
    "The configuration file is read when the service starts; changes take effect only after the service has been "
    "restarted.",
    "A spreadsheet consists of a number of individual sheets, each of which contains cells arranged in rows and "
    "columns, and each cell can hold text, a number or a formula.",
    "This tool converts documents between many formats, keeps their styles where it can, and reports every "
    "element it could not convert so that you can fix it by hand.",
    "The data are written to a temporary file first and moved into place only when the write has finished, so "
    "that a crash never leaves a half-written file behind.",
]

# Decoding-option sets of the mix: (name, weight, options; unset fields take the server's defaults).
VARIANTS: list[tuple[str, int, dict[str, Any]]] = [
    ("default", 4, {}),
    ("greedy", 2, {"beam_size": 1}),
    ("nbest", 1, {"beam_size": 3, "num_hypotheses": 2}),
    ("short", 1, {"beam_size": 2, "max_length": 16, "length_penalty": 0.6}),
    ("no_scores", 1, {"beam_size": 4, "return_scores": False}),
]
TEXT_COUNTS = (1, 1, 1, 1, 1, 2, 2, 3, 4)  # texts per request, drawn uniformly
RETRY_KEY = "grpc-retry-pushback-ms"


@dataclass
class SoakSpec:
    requests: int = 10_000
    rate: float | None = None  # requests/s; None: probe saturation and offer ``load`` times it
    load: float = 0.9
    probe_s: float = 20.0
    probe_concurrency: int = 16
    cancel_fraction: float = 0.1
    deadline_fraction: float = 0.1
    short_deadline_ms: tuple[float, float] = (20.0, 500.0)
    stream_fraction: float = 0.1
    burst: int | None = None  # None: four times the server's queue capacity
    burst_at: float = 0.5
    warmup_requests: int = 5000
    rss_bound_mib: float = 64.0
    watchdog_s: float = 300.0  # after the last request is sent, how long answers may take before they count lost
    max_inflight: int = 2000  # the client waits (rather than drops) beyond this many requests in flight
    connections: int = 4
    seed: int = 0
    hostile: int = 0  # hostile clients mixed in for the whole run (loadtest/hostile.py)


@dataclass
class Planned:
    """One request of the run and what became of it."""

    id: int
    kind: str  # "normal", "cancel", "deadline" or "burst"
    transport: str  # "unary" or "stream"
    texts: list[str]
    variant: str
    cancel_after_s: float | None = None
    timeout_s: float | None = None
    # outcome
    answers: int = 0  # must end as exactly 1
    code: str = ""
    hypotheses: list[list[tuple[str, float | None]]] = field(default_factory=list)
    latency_s: float = math.nan
    retry_hint: bool = False
    partials: int = 0


def variant_options(name: str) -> pb.DecodingOptions:
    settings = dict(next(v[2] for v in VARIANTS if v[0] == name))
    options = pb.DecodingOptions(
        beam_size=settings.pop("beam_size", 0),
        max_length=settings.pop("max_length", 0),
        num_hypotheses=settings.pop("num_hypotheses", 0),
    )
    for key, value in settings.items():
        setattr(options, key, value)
    return options


def plan(spec: SoakSpec, sentences: list[str], count: int, rng: random.Random, kind: str | None = None) -> list:
    names = [v[0] for v in VARIANTS]
    weights = [v[1] for v in VARIANTS]
    low, high = spec.short_deadline_ms
    out = []
    for i in range(count):
        if kind is None:
            roll = rng.random()
            this = "cancel" if roll < spec.cancel_fraction else "normal"
            if spec.cancel_fraction <= roll < spec.cancel_fraction + spec.deadline_fraction:
                this = "deadline"
        else:
            this = kind
        transport = "stream" if this == "normal" and rng.random() < spec.stream_fraction else "unary"
        texts = [rng.choice(sentences) for _ in range(rng.choice(TEXT_COUNTS))]
        request = Planned(i, this, transport, texts, rng.choices(names, weights)[0])
        if this == "deadline":
            request.timeout_s = rng.uniform(low, high) / 1000
        elif this == "cancel":
            request.cancel_after_s = rng.random()  # a fraction; scaled by the probe's p10 latency later
        out.append(request)
    return out


# -- sending ------------------------------------------------------------------------------------------------------


def _hypotheses(response: pb.TranslateResponse) -> list[list[tuple[str, float | None]]]:
    return [
        [(h.text, h.score if h.HasField("score") else None) for h in translation.hypotheses]
        for translation in response.translations
    ]


def _answer(request: Planned, code: str, started: float, response: pb.TranslateResponse | None = None) -> None:
    request.answers += 1
    if request.answers == 1:
        request.code = code
        request.latency_s = time.monotonic() - started
        if response is not None:
            request.hypotheses = _hypotheses(response)


async def send(client: Connections, request: Planned, cancel_scale_s: float) -> None:
    message = pb.TranslateRequest(texts=request.texts, options=variant_options(request.variant))
    started = time.monotonic()
    if request.transport == "stream":
        message.request_id = f"r{request.id}"
        message.stream_partial = True
        call = client.stub().TranslateStream(iter([message]), timeout=request.timeout_s)
        try:
            async for response in call:
                if response.partials:
                    request.partials += len(response.partials)
                elif response.HasField("error"):
                    name = next((c.name for c in grpc.StatusCode if c.value[0] == response.error.code), "UNKNOWN")
                    _answer(request, name, started)
                elif response.translations:
                    _answer(request, "OK", started, response)
        except grpc.aio.AioRpcError as error:
            if request.answers == 0:  # a stream-level status is the answer only if none came in-band
                _answer(request, error.code().name, started)
        return
    call = client.stub().Translate(message, timeout=request.timeout_s)
    timer = None
    if request.cancel_after_s is not None:
        timer = asyncio.get_running_loop().call_later(request.cancel_after_s * cancel_scale_s, call.cancel)
    try:
        response = await call
        _answer(request, "OK", started, response)
    except asyncio.CancelledError:  # grpc.aio raises this when the call was cancelled by the client
        if not call.cancelled():
            raise
        _answer(request, "CANCELLED", started)
    except grpc.aio.AioRpcError as error:
        _answer(request, error.code().name, started)
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            metadata = error.trailing_metadata() or ()
            request.retry_hint = any(key == RETRY_KEY for key, _ in metadata)
    finally:
        if timer is not None:
            timer.cancel()


async def probe(client: Connections, requests: list[Planned], concurrency: int, seconds: float) -> dict:
    """Closed loop over ``requests`` (normal ones, cycling) for ``seconds``: requests/s and latency."""
    done: list[Planned] = []
    source = iter(range(10**9))
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop_at:
            template = requests[next(source) % len(requests)]
            request = Planned(template.id, "normal", "unary", template.texts, template.variant)
            await send(client, request, 0.0)
            done.append(request)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    ok = [r for r in done if r.code == "OK"]
    latencies = sorted(r.latency_s for r in ok)
    return {
        "seconds": elapsed,
        "requests": len(done),
        "ok": len(ok),
        "requests_per_s": len(ok) / elapsed,
        "sentences_per_s": sum(len(r.texts) for r in ok) / elapsed,
        "latency_min_s": latencies[0] if ok else math.nan,
        "latency_p10_s": latencies[len(latencies) // 10] if ok else math.nan,
        "latency_p50_s": statistics.median(latencies) if ok else math.nan,
    }


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds, with the number of requests sent so far (all phases)."""

    def __init__(self, read, interval: float = 0.5) -> None:
        self.read, self.interval = read, interval
        self.samples: list[tuple[float, int, int]] = []  # (seconds, requests sent, bytes)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.read()
            if value is not None:
                self.samples.append((time.monotonic() - self._start, self.sent, value))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def main_phase(
    client: Connections,
    requests: list[Planned],
    burst: list[Planned],
    spec: SoakSpec,
    rate: float,
    cancel_scale_s: float,
    sampler: RssSampler | None,
    progress: bool,
    name: str = "soak",
) -> dict:
    rng = random.Random(spec.seed + len(requests) + len(burst))
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()
    pending: dict[asyncio.Task, Planned] = {}
    burst_index = int(len(requests) * spec.burst_at)
    waits = 0
    bar = tqdm(total=len(requests) + len(burst), desc=f"{name} {rate:.1f} req/s", unit="req", disable=not progress)

    def launch(request: Planned) -> None:
        task = asyncio.create_task(send(client, request, cancel_scale_s))
        tasks.add(task)
        pending[task] = request
        if sampler is not None:
            sampler.sent += 1  # every request, bursts included

        def finished(t: asyncio.Task) -> None:
            tasks.discard(t)
            pending.pop(t, None)
            bar.update()

        task.add_done_callback(finished)

    start = loop.time()
    due = 0.0
    for i, request in enumerate(requests):
        if i == burst_index:
            for extra in burst:
                launch(extra)
        due += rng.expovariate(rate)
        delay = start + due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        while len(tasks) >= spec.max_inflight:
            waits += 1
            await asyncio.sleep(0.01)
        launch(request)
    send_window = loop.time() - start
    if tasks:
        await asyncio.wait(set(tasks), timeout=spec.watchdog_s)
    unanswered = list(pending.values())
    for task in list(tasks):
        task.cancel()
    bar.close()
    return {
        "send_window_s": send_window,
        "offered_rate": rate,
        "sent_rate": len(requests) / send_window if send_window else 0.0,
        "client_waits": waits,
        "watchdog_unfinished": len(unanswered),
    }


# -- checks -------------------------------------------------------------------------------------------------------


def references(model: Path, requests: list[Planned], defaults: pb.DecodingOptions, threads: int) -> dict:
    """{(text, variant): n-best [(text, score)]} from the offline engine, for every text answered OK."""
    from nmtserve.engine import DecodingOptions, Engine

    engine = Engine.load(model, threads=threads, spin=False)
    wanted: dict[str, set[str]] = {}
    for request in requests:
        if request.code == "OK":
            wanted.setdefault(request.variant, set()).update(request.texts)
    out = {}
    for variant, texts in wanted.items():
        o = variant_options(variant)
        beam = o.beam_size or defaults.beam_size
        options = DecodingOptions(
            beam_size=beam,
            length_penalty=o.length_penalty if o.HasField("length_penalty") else defaults.length_penalty,
            max_length=o.max_length or defaults.max_length,
            num_hypotheses=o.num_hypotheses or min(defaults.num_hypotheses, beam),
            return_scores=o.return_scores if o.HasField("return_scores") else defaults.return_scores,
        )
        ordered = sorted(texts)
        for text, nbest in zip(ordered, engine.translate(ordered, options), strict=True):
            out[(text, variant)] = [(h.text, h.score) for h in nbest]
    return out


def wrong_answers(requests: list[Planned], refs: dict) -> list[dict]:
    wrong = []
    for request in requests:
        if request.code != "OK":
            continue
        if len(request.hypotheses) != len(request.texts):
            wrong.append({"id": request.id, "why": "wrong number of translations"})
            continue
        for text, got in zip(request.texts, request.hypotheses, strict=True):
            want = refs[(text, request.variant)]
            same_text = [t for t, _ in got] == [t for t, _ in want]
            same_scores = all(
                (a is None) == (b is None) and (a is None or abs(a - b) <= 1e-3)
                for (_, a), (_, b) in zip(got, want, strict=True)
            )
            if not (same_text and same_scores):
                wrong.append({"id": request.id, "variant": request.variant, "got": got, "want": want})
    return wrong


def rss_figures(sampler: RssSampler | None, main_from: int, bound_mib: float) -> dict:
    """RSS before and during the main phase (the samples taken once ``main_from`` requests had been sent)."""
    if sampler is None or not sampler.samples:
        return {"measured": False}
    mib = 1024 * 1024
    samples = sampler.samples
    main = [s for s in samples if s[1] >= main_from]
    before = [s for s in samples if s[1] < main_from] or samples[:1]
    if not main:
        return {"measured": False}
    baseline = before[-1][2]
    peak = max(s[2] for s in main)
    # least-squares slope of RSS against requests sent, main phase
    xs, ys = [s[1] for s in main], [s[2] for s in main]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return {
        "measured": True,
        "samples": len(samples),
        "start_mib": samples[0][2] / mib,
        "warmup_peak_mib": max(s[2] for s in before) / mib,
        "baseline_mib": baseline / mib,
        "peak_after_warmup_mib": peak / mib,
        "end_mib": main[-1][2] / mib,
        "growth_mib": (peak - baseline) / mib,
        "slope_mib_per_1000_requests": slope * 1000 / mib,
        "bound_mib": bound_mib,
        "within_bound": (peak - baseline) / mib <= bound_mib,
        "series": [(round(t, 2), n, round(b / mib, 2)) for t, n, b in samples],
    }


def server_state(target: str, metrics_url: str | None, timeout: float = 60.0) -> dict:
    """Health, and (polled until idle, up to ``timeout``) in-flight/queued/running gauges and request counters."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        health = health_pb2.HealthCheckResponse.ServingStatus.Name(check.status)
    state: dict = {"health": health}
    if metrics_url is None:
        return state
    from prometheus_client.parser import text_string_to_metric_families

    end = time.monotonic() + timeout
    while True:
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        samples: dict[tuple[str, tuple], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:  # summed over models (sum without (model, version)): the whole server
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("model", "version")))
                samples[(sample.name, labels)] = samples.get((sample.name, labels), 0.0) + sample.value
        gauges = {
            name: samples.get((f"nmtserve_{name}", ()), math.nan)
            for name in ("inflight_requests", "queue_depth", "running_sentences", "queue_tokens")
        }
        if all(value == 0 for value in gauges.values()) or time.monotonic() > end:
            break
        time.sleep(0.2)
    state.update(gauges)
    state["requests_by_code"] = {
        f"{dict(labels)['method']} {dict(labels)['code']}": int(value)
        for (name, labels), value in samples.items()
        if name == "nmtserve_requests_total"
    }
    state["abandoned_sentences"] = {
        dict(labels)["stage"]: int(value)
        for (name, labels), value in samples.items()
        if name == "nmtserve_abandoned_sentences_total"
    }
    state["engine_errors"] = int(samples.get(("nmtserve_engine_errors_total", ()), 0))
    return state


# -- the run ------------------------------------------------------------------------------------------------------


async def _exercise(target: str, spec: SoakSpec, phases: list, sampler, progress: bool) -> dict:
    client = Connections(target, spec.connections)
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in client.channels))
        info = await client.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        main = phases[-1][1]
        normal = [r for r in main if r.kind == "normal"] or main
        figures: dict = {"model": {"name": info.name, "version": info.version, "precision": info.precision}}
        if spec.rate is None:
            if progress:
                print(f"probing saturation for {spec.probe_s:g} s ...", file=sys.stderr, flush=True)
            figures["probe"] = await probe(client, normal, spec.probe_concurrency, spec.probe_s)
            rate = max(0.1, spec.load * figures["probe"]["requests_per_s"])
            scale = figures["probe"]["latency_p10_s"]
        else:
            rate, scale = spec.rate, 1.0
        figures["cancel_window_s"] = scale
        for name, requests, burst in phases:
            figures[name] = await main_phase(client, requests, burst, spec, rate, scale, sampler, progress, name)
        figures["defaults"] = info.default_options
        return figures
    finally:
        await client.close()


def run_soak(
    spec: SoakSpec,
    model: Path,
    target: str,
    rss=None,
    metrics_url: str | None = None,
    queue_capacity: int | None = None,
    sentences: list[str] | None = None,
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Run against ``target`` (HOST:PORT); ``rss``: a callable returning the server's RSS in bytes, or None."""
    rng = random.Random(spec.seed)
    sentences = sentences or SENTENCES
    # four times the queue: above what the queue and the engine threads' running batches hold together (with
    # 2 engine threads of 32 sentences a queue of 64 takes a burst of 2 x 64 whole)
    burst_size = spec.burst if spec.burst is not None else 4 * (queue_capacity or 256)
    phases, next_id = [], 0
    for name, count in (("warmup", spec.warmup_requests), ("main", spec.requests)):
        if count == 0:
            continue
        requests = plan(spec, sentences, count, rng)
        burst = plan(spec, sentences, burst_size, rng, kind="burst")
        for request in requests + burst:
            request.id, next_id = next_id, next_id + 1
        for request in burst:
            request.texts = request.texts[:1]  # one sentence each: the burst is about request count
        phases.append((name, requests, burst))
    main, burst = phases[-1][1], phases[-1][2]
    warmup = [r for name, requests, extra in phases[:-1] for r in requests + extra]
    started = time.time()
    sampler = RssSampler(rss) if rss is not None else None
    with contextlib.ExitStack() as stack:
        if sampler is not None:
            stack.enter_context(sampler)
        hostile = stack.enter_context(HostileClients(target, spec.hostile)) if spec.hostile else None
        figures = asyncio.run(_exercise(target, spec, phases, sampler, progress))
    if hostile is not None:
        figures["hostile"] = hostile.figures()
    defaults = figures.pop("defaults")
    everything = warmup + main + burst
    state = server_state(target, metrics_url)
    if progress:
        print("computing the offline references ...", file=sys.stderr, flush=True)
    refs = references(model, everything, defaults, threads)
    wrong = wrong_answers(everything, refs)
    lost = [r.id for r in everything if r.answers == 0]
    duplicated = [r.id for r in everything if r.answers > 1]
    exhausted = [r for r in everything if r.code == "RESOURCE_EXHAUSTED" and r.transport == "unary"]
    by_kind: dict[str, dict[str, int]] = {}
    for request in main + burst:
        label = request.kind if request.transport == "unary" else f"{request.kind} (stream)"
        by_kind.setdefault(label, Counter())[request.code or "NO ANSWER"] += 1
    ok_latency = sorted(r.latency_s * 1000 for r in main if r.code == "OK" and r.kind == "normal")

    def pct(p: float) -> float:
        return ok_latency[min(len(ok_latency) - 1, int(p / 100 * len(ok_latency)))] if ok_latency else math.nan

    rss_figures_ = rss_figures(sampler, len(warmup), spec.rss_bound_mib)
    figures.update(
        {
            "spec": {k: v for k, v in asdict(spec).items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "wall_s": time.time() - started,
            "requests": len(main),
            "burst_requests": len(burst),
            "warmup_requests": len(warmup),
            "sentences": sum(len(r.texts) for r in everything),
            "codes": dict(Counter(r.code or "NO ANSWER" for r in main + burst)),
            "warmup_codes": dict(Counter(r.code or "NO ANSWER" for r in warmup)),
            "codes_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "burst_codes": dict(Counter(r.code or "NO ANSWER" for r in burst)),
            "lost": len(lost),
            "lost_ids": lost[:50],
            "answered_twice": len(duplicated),
            "wrong": len(wrong),
            "wrong_examples": wrong[:5],
            "checked_ok_answers": sum(1 for r in everything if r.code == "OK"),
            "distinct_references": len(refs),
            "resource_exhausted_with_retry_hint": f"{sum(r.retry_hint for r in exhausted)}/{len(exhausted)}",
            "stream_partials": sum(r.partials for r in everything),
            "latency_ms_normal_ok": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
            "rss": rss_figures_,
            "server_end": state,
        }
    )
    checks = {
        "no_request_lost": not lost,
        "no_request_answered_twice": not duplicated,
        "no_wrong_answer": not wrong,
        "burst_partly_refused": figures["burst_codes"].get("RESOURCE_EXHAUSTED", 0) > 0,
        "every_refusal_has_a_retry_hint": all(r.retry_hint for r in exhausted),
        "rss_flat_after_warmup": rss_figures_.get("within_bound", True),
        "serving_at_end": state["health"] == "SERVING",
        "idle_at_end": all(state.get(k, 0) == 0 for k in ("inflight_requests", "queue_depth", "running_sentences")),
    }
    if "hostile" in figures:
        checks["hostile_oversized_requests_refused"] = figures["hostile"]["all_oversized_refused"]
    figures["checks"] = checks
    figures["passed"] = all(checks.values())
    return figures


def format_report(figures: dict) -> str:
    lines = [
        f"soak: {figures['requests']} requests + a burst of {figures['burst_requests']}, after a warm-up of "
        f"{figures['warmup_requests']}; {figures['wall_s']:.0f} s"
    ]
    if "probe" in figures:
        p = figures["probe"]
        lines.append(
            f"  saturation probe: {p['requests_per_s']:.1f} req/s ({p['sentences_per_s']:.1f} sentences/s), "
            f"p10 {p['latency_p10_s'] * 1000:.0f} ms, p50 {p['latency_p50_s'] * 1000:.0f} ms; "
            f"cancel window {figures['cancel_window_s'] * 1000:.0f} ms"
        )
    m = figures["main"]
    lines.append(f"  offered {m['offered_rate']:.1f} req/s, sent {m['sent_rate']:.1f} req/s")
    lines.append(f"  warm-up answers by status: {figures['warmup_codes']}")
    lines.append(f"  main-phase answers by status: {figures['codes']}")
    for kind, codes in figures["codes_by_kind"].items():
        lines.append(f"    {kind}: {codes}")
    lat = figures["latency_ms_normal_ok"]
    lines.append(f"  latency of successful normal requests: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms")
    lines.append(
        f"  lost {figures['lost']}, answered twice {figures['answered_twice']}, wrong {figures['wrong']} "
        f"(of {figures['checked_ok_answers']} successful answers, warm-up included, checked against the offline "
        "engine)"
    )
    lines.append(f"  RESOURCE_EXHAUSTED with a retry hint: {figures['resource_exhausted_with_retry_hint']}")
    rss = figures["rss"]
    if rss.get("measured"):
        lines.append(
            f"  server RSS: start {rss['start_mib']:.0f} MiB, warm-up peak {rss['warmup_peak_mib']:.0f} MiB, main "
            f"phase from {rss['baseline_mib']:.0f} to peak {rss['peak_after_warmup_mib']:.0f} MiB, end "
            f"{rss['end_mib']:.0f} MiB (growth {rss['growth_mib']:.1f} MiB, bound {rss['bound_mib']:g}; slope "
            f"{rss['slope_mib_per_1000_requests']:+.2f} MiB per 1000 requests)"
        )
    if "hostile" in figures:
        lines.append(f"  hostile clients: {figures['hostile']}")
    lines.append(f"  server at the end: {figures['server_end']}")
    lines.append(f"  checks: {figures['checks']}")
    lines.append("  PASSED" if figures["passed"] else "  FAILED")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``nmtserve soak``."""
    parser.add_argument("--model", type=Path, default=None, help="exported model (default: the demo export)")
    parser.add_argument("--server", default=None, help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--server-pid", type=int, default=None, help="with --server: its pid, for RSS")
    parser.add_argument("--metrics-url", default=None, help="with --server: its /metrics URL")
    parser.add_argument("--input", type=Path, default=None, help="sentences, one per line (default: built in)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", default="auto", help="requests/s, or auto (probe saturation)")
    parser.add_argument("--load", type=float, default=0.9, help="with --rate auto: fraction of saturation")
    parser.add_argument("--probe-s", type=float, default=20.0)
    parser.add_argument("--cancel-fraction", type=float, default=0.1)
    parser.add_argument("--deadline-fraction", type=float, default=0.1)
    parser.add_argument("--short-deadline-ms", type=float, nargs=2, default=(20.0, 500.0), metavar=("MIN", "MAX"))
    parser.add_argument("--stream-fraction", type=float, default=0.1)
    parser.add_argument("--burst", type=int, default=None, help="burst size (default: four times the queue capacity)")
    parser.add_argument("--burst-at", type=float, default=0.5)
    parser.add_argument("--warmup-requests", type=int, default=5000, help="before the main phase (0: none)")
    parser.add_argument("--rss-bound-mib", type=float, default=64.0)
    parser.add_argument("--watchdog-s", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (server and references)")
    parser.add_argument("--queue-size", type=int, default=256, help="the started server's max_queue_size")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra flag for the started server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hostile",
        type=int,
        default=0,
        metavar="N",
        help="mix in N hostile clients for the whole run: half send oversized requests, half open streams that "
        "never read (default 0)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--name", default="soak")
    parser.add_argument("--quiet", action="store_true")


def run_command(args: argparse.Namespace) -> int:
    """``nmtserve soak``: the exit status is 0 only when every check passed."""

    from nmtserve.server.config import resolve_model_dir

    model = resolve_model_dir(args.model)
    spec = SoakSpec(
        requests=args.requests,
        rate=None if args.rate == "auto" else float(args.rate),
        load=args.load,
        probe_s=args.probe_s,
        cancel_fraction=args.cancel_fraction,
        deadline_fraction=args.deadline_fraction,
        short_deadline_ms=tuple(args.short_deadline_ms),
        stream_fraction=args.stream_fraction,
        burst=args.burst,
        burst_at=args.burst_at,
        warmup_requests=args.warmup_requests,
        rss_bound_mib=args.rss_bound_mib,
        watchdog_s=args.watchdog_s,
        seed=args.seed,
        hostile=args.hostile,
    )
    sentences = read_lines(args.input) if args.input else None
    progress = not args.quiet
    if args.server:
        pid = args.server_pid
        rss = (lambda: rss_of(pid)) if pid else None
        figures = run_soak(spec, model, args.server, rss, args.metrics_url, None, sentences, args.threads, progress)
    else:
        flags = ["--threads", str(args.threads), "--no-spin", "--max-queue-size", str(args.queue_size)]
        flags += ["--max-texts-per-request", str(min(256, args.queue_size))]
        flags += ["--drain-timeout-s", "60"]
        if args.hostile:  # never-reading streams are cancelled within the run
            flags += ["--stream-stall-timeout-s", "2"]
        flags += args.serve_arg
        with ServerProcess(model, *flags) as server:
            figures = run_soak(
                spec,
                model,
                server.address,
                server.rss_bytes,
                server.metrics_url,
                args.queue_size,
                sentences,
                args.threads,
                progress,
            )
            figures["server_exit_status"] = server.stop()
            figures["checks"]["server_exit_0_after_sigterm"] = figures["server_exit_status"] == 0
            figures["passed"] = all(figures["checks"].values())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(format_report(figures))
    print(f"wrote {path}")
    return 0 if figures["passed"] else 1
