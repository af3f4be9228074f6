"""A load test: one or more load levels against a running server, a progress bar, a JSON report and plots."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from nmtserve.loadtest.plots import latency_cdf, load_curves
from nmtserve.loadtest.runner import Connections, closed_loop, open_loop

if TYPE_CHECKING:
    from nmtserve.loadtest.http import HttpConnections
from nmtserve.loadtest.stats import LevelResult, Sample, format_level, summarize
from nmtserve.loadtest.workload import Workload
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class LoadTestSpec:
    target: str
    lines: list[str]
    mode: str  # "rate" (open loop) or "concurrency" (closed loop)
    levels: list[float]
    duration: float  # seconds per level
    texts_per_request: int = 1
    options: pb.DecodingOptions = field(default_factory=pb.DecodingOptions)
    timeout: float = 30.0
    max_inflight: int = 1024
    once: bool = False  # send every line exactly once (in file order) instead of cycling for ``duration``
    seed: int = 0
    connections: int = 4
    http: bool = False  # load the HTTP port's /v1/translate instead of gRPC (target is its HOST:PORT)


@dataclass
class LoadTestReport:
    spec: LoadTestSpec
    results: list[LevelResult]
    samples: list[list[Sample]]
    model: dict

    def as_dict(self) -> dict:
        spec = self.spec
        return {
            "target": spec.target,
            "protocol": "http" if spec.http else "grpc",
            "mode": spec.mode,
            "duration_s_per_level": spec.duration,
            "texts_per_request": spec.texts_per_request,
            "sentences_available": len(spec.lines),
            "once": spec.once,
            "options": MessageToDict(spec.options, preserving_proto_field_name=True),
            "model": self.model,
            "client_host": platform.node(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "levels": [result.as_dict() for result in self.results],
        }


async def _run(spec: LoadTestSpec, progress: bool) -> LoadTestReport:
    connections: Connections | HttpConnections
    if spec.http:  # aiohttp is the http extra: imported only for HTTP load
        from nmtserve.loadtest.http import HttpConnections

        connections = HttpConnections(spec.target)
    else:
        connections = Connections(spec.target, spec.connections)
    try:
        await connections.wait_ready()
        model = await connections.model_info()
        results, all_samples = [], []
        for level in spec.levels:
            workload = Workload(spec.lines, spec.texts_per_request, spec.seed)
            requests: list[list[str]] | Iterator[list[str]]
            if spec.once:
                requests = workload.once()
                total: int | None = len(requests)
            else:
                requests = iter(workload)
                total = round(level * spec.duration) if spec.mode == "rate" else None
            desc = f"{level:g} req/s" if spec.mode == "rate" else f"{level:g} in flight"
            with tqdm(total=total, desc=desc, unit="req", disable=not progress, leave=False) as bar:
                if spec.mode == "rate":
                    samples = await open_loop(
                        connections,
                        requests,
                        level,
                        spec.duration,
                        spec.options,
                        spec.timeout,
                        spec.max_inflight,
                        spec.seed,
                        bar.update,
                    )
                else:
                    samples = await closed_loop(
                        connections, requests, int(level), spec.duration, spec.options, spec.timeout, bar.update
                    )
            window = spec.duration if spec.mode == "rate" else None
            result = summarize(spec.mode, level, samples, window)
            if progress:
                tqdm.write(format_level(result))
            results.append(result)
            all_samples.append(samples)
        return LoadTestReport(spec, results, all_samples, model)
    finally:
        await connections.close()


def run_loadtest(spec: LoadTestSpec, progress: bool = True) -> LoadTestReport:
    if spec.mode not in ("rate", "concurrency"):
        raise ValueError("mode must be 'rate' or 'concurrency'")
    if not spec.levels or min(spec.levels) <= 0:
        raise ValueError("load levels must be > 0")
    return asyncio.run(_run(spec, progress))


def write_report(report: LoadTestReport, out: Path, name: str = "loadtest") -> list[Path]:
    """``NAME.json``, ``NAME_latency_cdf.png`` and (several levels) ``NAME_load.png`` in ``out``; the plots need
    matplotlib, which is not a serving dependency (without it, only the JSON is written)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    paths = [json_path]
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("no PNG plots: they need matplotlib, which this install lacks: pip install 'nmtserve[bench]'")
        return paths
    series = [("", result, samples) for result, samples in zip(report.results, report.samples, strict=True)]
    paths.append(latency_cdf(series, out / f"{name}_latency_cdf.png"))
    if len(report.results) > 1:
        paths.append(load_curves([("", report.results)], out / f"{name}_load.png"))
    return paths
