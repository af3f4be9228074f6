"""PNG plots of load-test results (matplotlib, imported lazily: it is not a serving dependency)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nmtserve.loadtest.stats import LevelResult, Sample


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(result: LevelResult, name: str = "") -> str:
    load = f"{result.offered:g} req/s" if result.mode == "rate" else f"{result.offered:g} in flight"
    return f"{name} {load}".strip()


def latency_cdf(
    series: Sequence[tuple[str, LevelResult, list[Sample]]], path: Path, title: str = "Latency CDF"
) -> Path:
    """One curve per (name, level, samples): fraction of successful requests answered within x ms."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, result, samples in series:
        latencies = np.sort([s.latency * 1000 for s in samples if s.code == "OK"])
        if len(latencies):
            ax.plot(latencies, np.arange(1, len(latencies) + 1) / len(latencies), label=_label(result, name))
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def load_curves(
    series: Sequence[tuple[str, Sequence[LevelResult]]], path: Path, title: str = "Latency and throughput vs load"
) -> Path:
    """For each named sweep: p50/p99 latency and throughput against offered load (two panels)."""
    plt = _pyplot()
    fig, (lat_ax, thr_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, results in series:
        results = sorted(results, key=lambda r: r.offered)
        x = [r.offered for r in results]
        for key, style in (("p50", "-o"), ("p99", "--s")):
            y = [r.latency_ms.get(key, np.nan) for r in results]
            lat_ax.plot(x, y, style, label=f"{name} {key}".strip())
        thr_ax.plot(x, [r.throughput_rps for r in results], "-o", label=name or "answered")
        if results and results[0].mode == "rate" and name == series[0][0]:
            thr_ax.plot(x, [r.sent_rps for r in results], ":", color="grey", label="sent (Poisson arrivals)")
    mode = series[0][1][0].mode if series and series[0][1] else "rate"
    xlabel = "offered load (requests/s)" if mode == "rate" else "requests in flight"
    lat_ax.set_xlabel(xlabel)
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_yscale("log")
    lat_ax.grid(True, which="both", alpha=0.3)
    lat_ax.legend(fontsize=8)
    thr_ax.set_xlabel(xlabel)
    thr_ax.set_ylabel("throughput (requests/s)")
    thr_ax.grid(True, alpha=0.3)
    thr_ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
