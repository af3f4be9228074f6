"""One loaded model version's serving machinery: engine, bounded queue, engine threads and request checker
(``Backend``), built by ``build_backend``; and the measures of its memory (``held_bytes``, ``files_bytes``).

Each version has its own, so a flood of requests to one model fills that model's queue, never another's; the
engine threads of all versions share one ``StepTurns`` (``fairness.py``) for their turns on the CPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from nmtserve.engine import Engine
from nmtserve.server.admission import RequestChecker
from nmtserve.server.batching import Budget
from nmtserve.server.config import ConfigError, ServerConfig, batching_mode, engine_plan
from nmtserve.server.fairness import StepTurns
from nmtserve.server.metrics import EngineMetrics
from nmtserve.server.repository import VersionEntry
from nmtserve.server.scheduler import EngineThreads, Scheduler
from nmtserve.server.validation import default_options
from nmtserve.server.workqueue import WorkQueue

log = logging.getLogger(__name__)

WARMUP_TEXTS = (
    "Hello.",
    "The package contains the documentation.",
    "Select the cells that you want to print, then open the File menu and choose Print to print them.",
)
SELECTION_WINDOW_FACTOR = 4  # the batcher looks at 4 x max_batch_size waiting sentences, dealt round robin by request
SCHEDULER_STOP_S = 5.0  # how long stopping waits for the engine threads to finish their steps


@dataclass
class Backend:
    """What a loaded model version gives the service."""

    engine: Engine
    queue: WorkQueue
    checker: RequestChecker
    scheduler: EngineThreads | None = None
    config: ServerConfig | None = None  # the server's settings with the model's overrides
    metrics: EngineMetrics | None = None  # the version's own series (model and version labels)

    def stop(self) -> None:
        """Stop the engine threads (after their steps) and the checker's workers; blocking."""
        if self.scheduler is not None:
            self.scheduler.stop(SCHEDULER_STOP_S)
        self.checker.close()


def warm_up(engine: Engine, config: ServerConfig) -> float:
    """Translate a few sentences so that onnxruntime's first-run allocations happen before SERVING; seconds."""
    start = time.perf_counter()
    engine.translate(list(WARMUP_TEXTS), default_options(config))
    return time.perf_counter() - start


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33
    except (AttributeError, OSError):
        return None
    function.restype = _MallInfo2
    return function


MALLINFO2 = _mallinfo2()


def held_bytes() -> int:
    """Bytes the process's C heap holds now: glibc's in-use chunks plus its mmapped ones (``mallinfo2``), where
    onnxruntime keeps weights, sessions and arenas. Unlike the resident set size, it shrinks when a model is freed
    (glibc keeps freed pages for reuse, so an RSS delta across a load after an unload reads near 0). Falls back to
    the resident set size (``/proc``) without glibc, 0 where neither can be read."""
    if MALLINFO2 is not None:
        info = MALLINFO2()
        return int(info.uordblks + info.hblkhd)
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def files_bytes(path: Path) -> int:
    """Bytes of a version directory's files (symlinks followed): the estimate a memory budget is checked with."""
    try:
        return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())
    except OSError:
        return 0


def build_backend(
    entry: VersionEntry,
    config: ServerConfig,
    metrics: EngineMetrics,
    engine: Engine | None = None,
    turns: StepTurns | None = None,
) -> Backend:
    """Load (unless given), check and warm one version and start its engine threads; blocking, raises on failure."""
    workers, threads = engine_plan(config)
    if engine is None:
        engine = Engine.load(entry.path, config.device, threads, spin=config.spin, int8_kernels=config.int8_kernels)
    if config.max_input_tokens + 1 > engine.info.max_positions:
        raise ConfigError(
            f"max_input_tokens {config.max_input_tokens} exceeds what the model can encode "
            f"({engine.info.max_positions - 1})"
        )
    if config.warmup:
        seconds = warm_up(engine, config)
        log.info(
            "warmed up", extra={"fields": {"name": entry.model, "version": entry.version, "seconds": round(seconds, 3)}}
        )
    queue = WorkQueue(
        config.max_queue_size,
        on_depth=metrics.queue_depth.set,
        max_tokens=config.max_queue_tokens,
        on_tokens=metrics.queue_tokens.set,
    )
    metrics.queue_capacity.labels("sentences").set(config.max_queue_size)
    metrics.queue_capacity.labels("tokens").set(config.max_queue_tokens)
    budget = Budget(config.max_batch_size, config.max_batch_tokens, SELECTION_WINDOW_FACTOR * config.max_batch_size)
    scheduler = EngineThreads(
        partial(
            Scheduler,
            engine,
            queue,
            budget,
            metrics,
            continuous=batching_mode(config.batching, engine.info.cache_layout) == "continuous",
            max_delay_s=config.max_queue_delay_ms / 1000,
            join_fraction=config.join_fraction,
            max_join_steps=config.max_join_steps,
            max_later_joins=config.max_later_joins,
            join_window_steps=config.join_window_steps,
            turns=turns,
            turn_key=(entry.model, entry.version),
        ),
        workers,
    )
    scheduler.start()
    checker = RequestChecker(config, engine.tokenizer, engine.decodable_vocabulary)
    return Backend(engine, queue, checker, scheduler, config, metrics)
