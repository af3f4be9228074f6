"""Latency and throughput statistics of one load level."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True)
class Sample:
    """One request: when it was due (seconds after the run started), how long it took, how it ended."""

    due: float
    latency: float  # seconds from ``due`` to the answer (open loop: queueing in the client counts, as it should)
    code: str  # gRPC status name, or CLIENT_OVERLOADED when the client's in-flight cap refused to send it
    texts: int


@dataclass(frozen=True)
class LevelResult:
    mode: str  # "rate" (open loop) or "concurrency" (closed loop)
    offered: float  # requests/s (open loop) or requests in flight (closed loop)
    duration_s: float  # the arrival window (open loop), or from the first request until the last answer
    requests: int
    ok: int
    sent_rps: float  # requests sent per second of the run (open loop: the realised Poisson arrival rate)
    throughput_rps: float  # successful requests per second
    sentences_per_s: float
    latency_ms: dict[str, float]  # p50, p90, p99, p99.9, mean, max of successful requests
    errors: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def percentile_key(p: float) -> str:
    return f"p{p:g}"


def summarize(mode: str, offered: float, samples: list[Sample], window: float | None = None) -> LevelResult:
    """Statistics of one level. With ``window`` (open loop: the arrival window), throughput counts the answers
    that arrived within it; otherwise (closed loop) it runs from the first request to the last answer."""
    ok = [s for s in samples if s.code == "OK"]
    latencies = np.array([s.latency for s in ok]) * 1000.0
    if window is not None:
        duration = window
        counted = [s for s in ok if s.due + s.latency <= window]
    elif samples:
        end = max(s.due + (s.latency if s.latency == s.latency else 0.0) for s in samples)
        duration = max(end - min(s.due for s in samples), 1e-9)
        counted = ok
    else:
        duration, counted = 0.0, []
    latency = {}
    if len(latencies):
        latency = {percentile_key(p): float(np.percentile(latencies, p)) for p in PERCENTILES}
        latency |= {"mean": float(latencies.mean()), "max": float(latencies.max())}
    errors = Counter(s.code for s in samples if s.code != "OK")
    return LevelResult(
        mode=mode,
        offered=offered,
        duration_s=duration,
        requests=len(samples),
        ok=len(ok),
        sent_rps=len(samples) / duration if duration else 0.0,
        throughput_rps=len(counted) / duration if duration else 0.0,
        sentences_per_s=sum(s.texts for s in counted) / duration if duration else 0.0,
        latency_ms=latency,
        errors=dict(errors),
    )


def format_level(result: LevelResult) -> str:
    unit = f"req/s offered ({result.sent_rps:.1f} sent)" if result.mode == "rate" else "in flight"
    lat = result.latency_ms
    latency = "  ".join(f"{k} {lat[k]:.1f} ms" for k in ("p50", "p90", "p99", "p99.9") if k in lat) or "no successes"
    errors = f"  errors {result.errors}" if result.errors else ""
    return (
        f"{result.offered:g} {unit}: {result.throughput_rps:.1f} req/s, {result.sentences_per_s:.1f} sentences/s "
        f"({result.ok}/{result.requests} ok)  {latency}{errors}"
    )
