"""Wall-clock timing for the benchmarks: warm up, repeat, keep every sample.

The best (minimum) of the repeats is the headline figure: on a shared machine (training runs on the other core)
noise only ever adds time, so the minimum is the least disturbed estimate. All samples go to the JSON so the
spread stays visible.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tqdm import tqdm

Key = TypeVar("Key", bound=Hashable)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Timing:
    seconds: list[float]  # wall clock
    cpu_seconds: list[float]  # CPU time of this process over the same intervals

    @property
    def cpu_over_wall(self) -> float:
        """About 1.0 for a single-threaded run that had its core; well below 1.0: it waited for the CPU."""
        return sum(self.cpu_seconds) / max(sum(self.seconds), 1e-12)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best_cpu(self) -> float:
        """Least CPU time of the repeats: insensitive to waiting for a core, not to sharing caches or memory."""
        return min(self.cpu_seconds)

    def merged(self, other: Timing) -> Timing:
        return Timing(self.seconds + other.seconds, self.cpu_seconds + other.cpu_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_s": self.best,
            "median_s": self.median,
            "best_cpu_s": self.best_cpu,
            "samples_s": self.seconds,
            "cpu_samples_s": self.cpu_seconds,
            "cpu_over_wall": self.cpu_over_wall,
        }


def measure(
    fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, min_seconds: float = 0.0, max_repeats: int = 100
) -> tuple[Timing, Any]:
    """Call ``fn`` ``warmup`` times untimed, then at least ``repeats`` times timed, and more (up to ``max_repeats``)
    until the timed calls add up to ``min_seconds``: short runs get more samples, so that one quiet moment on a
    busy machine is likely among them. Returns the timing and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    while len(seconds) < max(1, repeats) or (sum(seconds) < min_seconds and len(seconds) < max_repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return Timing(seconds, cpu_seconds), result


def measure_in_turns(
    calls: Mapping[Key, Callable[[], Any]], rounds: int, progress: str | None = None
) -> tuple[dict[Key, Timing], dict[Key, Any]]:
    """Time each of ``calls`` once per round, in turn within the round, for ``rounds`` rounds (no warm-up: the
    caller's). Taking turns spreads a spell of load from elsewhere over every contestant instead of one. Returns
    each call's timing over all rounds and its last result; ``progress`` labels a progress bar."""
    timings: dict[Key, Timing] = {}
    results: dict[Key, Any] = {}
    for _ in tqdm(range(max(1, rounds)), desc=progress, unit="round", disable=progress is None):
        for key, call in calls.items():
            timing, results[key] = measure(call, repeats=1, warmup=0)
            timings[key] = timings[key].merged(timing) if key in timings else timing
    return timings, results


def limit_threads(threads: int) -> None:
    """Pin torch and any OpenMP/BLAS pool to ``threads``: every engine gets the same number (fairness).

    With more than one thread, OpenMP's threads (CTranslate2's) wait passively, as onnxruntime's do in our
    benchmarks (``spin=False``, the server's default): two pools in one process that spin between calls take the
    cores from each other. Measured on 2 cores with both spinning, both engines ran slower at 2 threads than at
    1, CTranslate2 greedy int8 at a third of its 1-thread speed."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if threads > 1:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:  # the benchmark of the ONNX engine alone does not need torch
        return
    torch.set_num_threads(threads)
