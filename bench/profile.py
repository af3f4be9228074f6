"""Where the ONNX engine's time goes: per-graph wall time, the Python beam loop, and onnxruntime's op profile.

Three separate runs over the same sentences, because each instrument distorts what the others measure:
1. ``Runtime.run`` wrapped with a timer: wall time per graph (binding and output handling included); what is
   left of the total is the host side (Python beam rules, input assembly, tokenisation-free bookkeeping);
2. cProfile of the whole ``translate_ids`` (inflates Python time, but ranks the Python functions);
3. onnxruntime's own profiler on fresh sessions: kernel time per operator type inside each graph.
Results are plain dicts (JSON); the cProfile listing is also written as text (pstats' dump format is marshal).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnxruntime as ort

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.cache import HostCache, RaggedHostCache
from nmtserve.engine.int8_kernels import session_source
from nmtserve.engine.runtime import Binding, _session_options, open_session


def _translate(
    engine: Engine,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_size: int,
    batch_tokens: int | None = None,
) -> None:
    engine.translate_ids(
        sources, replace(options, return_scores=False), max_batch_size=batch_size, max_batch_tokens=batch_tokens
    )


def graph_times(
    engine: Engine,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_size: int,
    batch_tokens: int | None = None,
) -> dict[str, Any]:
    """Wall time per graph, and per host-side cache move (``reorder``/``trim`` of ``HostCache`` or
    ``RaggedHostCache``: numpy row copies that stand in for the ``reorder_cache``/``trim_cache`` graphs on CPU),
    and the host remainder, from one run."""
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timer(function: Any, label: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                name = label(args)
                seconds[name] += time.perf_counter() - start
                calls[name] += 1

        return timed

    run = Binding.run  # every graph call goes through a Binding (a batch's step keeps its own)
    Binding.run = timer(run, lambda args: args[0].graph)  # type: ignore[method-assign]
    moves = {(cls, name): getattr(cls, name) for cls in (HostCache, RaggedHostCache) for name in ("reorder", "trim")}
    for (cls, name), method in moves.items():
        setattr(cls, name, timer(method, lambda args, name=name: f"host cache {name}"))
    try:
        start = time.perf_counter()
        _translate(engine, sources, options, batch_size, batch_tokens)
        total = time.perf_counter() - start
    finally:
        Binding.run = run  # type: ignore[method-assign]
        for (cls, name), method in moves.items():
            setattr(cls, name, method)
    in_graphs = sum(seconds.values())
    return {
        "total_s": total,
        "graphs": {g: {"seconds": s, "calls": calls[g], "share": s / total} for g, s in sorted(seconds.items())},
        "host_s": total - in_graphs,
        "host_share": (total - in_graphs) / total,
    }


def python_profile(
    engine: Engine,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_size: int,
    batch_tokens: int | None = None,
    top: int = 20,
) -> tuple[list[dict[str, Any]], str]:
    """The ``top`` functions by own time under cProfile, as dicts and as pstats' text listing."""
    profiler = cProfile.Profile()
    profiler.enable()
    _translate(engine, sources, options, batch_size, batch_tokens)
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).sort_stats("tottime")
    stats.print_stats(top)
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {"function": f"{Path(filename).name}:{line}({function})", "calls": calls, "own_s": own, "cum_s": cumulative}
        )
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    return rows[:top], stream.getvalue()


def operator_profile(
    engine: Engine,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_size: int,
    batch_tokens: int | None = None,
) -> dict[str, Any]:
    """Kernel time per operator type and graph from onnxruntime's profiler (sessions recreated with it on).

    The raw trace files (megabytes of per-node events) are summarised and deleted.
    """
    with tempfile.TemporaryDirectory(prefix="nmtserve-ort-profile-") as tmp:
        return _operator_profile(engine, sources, options, batch_size, batch_tokens, Path(tmp))


def _operator_profile(
    engine: Engine,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_size: int,
    batch_tokens: int | None,
    work_dir: Path,
    top_nodes: int = 15,
) -> dict[str, Any]:
    runtime = engine.runtime
    saved = dict(runtime.sessions)
    profiled: dict[str, ort.InferenceSession] = {}
    for graph in saved:
        session_options = _session_options(runtime.config)
        session_options.enable_profiling = True
        session_options.profile_file_prefix = str(work_dir / graph.removesuffix(".onnx"))
        model, _ = session_source(runtime.info.path(graph), runtime.int8_kernels)  # as the engine runs it
        profiled[graph] = open_session(model, runtime.config, session_options)
    runtime.sessions = profiled
    try:
        _translate(engine, sources, options, batch_size, batch_tokens)
    finally:
        runtime.sessions = saved
    result: dict[str, Any] = {}
    for graph, session in profiled.items():
        events = json.loads(Path(session.end_profiling()).read_text())
        by_op: dict[str, float] = defaultdict(float)
        by_node: dict[tuple[str, str], float] = defaultdict(float)
        run_us = 0.0
        for event in events:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                op = event.get("args", {}).get("op_name", "?")
                by_op[op] += event.get("dur", 0)
                by_node[(event["name"].removesuffix("_kernel_time"), op)] += event.get("dur", 0)
            elif event.get("cat") == "Session" and event.get("name") == "model_run":
                run_us += event.get("dur", 0)
        kernels = sum(by_op.values())
        ranked = sorted(by_op.items(), key=lambda kv: kv[1], reverse=True)
        result[graph] = {
            "model_run_s": run_us / 1e6,
            "kernels_s": kernels / 1e6,
            "ops": [{"op": op, "seconds": us / 1e6, "share": us / kernels if kernels else 0.0} for op, us in ranked],
            "top_nodes": [
                {"node": node, "op": op, "seconds": us / 1e6, "share": us / kernels if kernels else 0.0}
                for (node, op), us in sorted(by_node.items(), key=lambda kv: kv[1], reverse=True)[:top_nodes]
            ],
        }
    return result


def profile_engine(
    engine: Engine,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_size: int,
    out_dir: Path,
    batch_tokens: int | None = None,
) -> dict[str, Any]:
    """All three views for one configuration (cohorts bounded as part 3's row was); writes
    ``python_profile-<configuration>.txt`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _translate(engine, sources[:16], options, batch_size, batch_tokens)  # warm-up
    graphs = graph_times(engine, sources, options, batch_size, batch_tokens)
    functions, listing = python_profile(engine, sources, options, batch_size, batch_tokens)
    tag = f"beam{options.beam_size}-{engine.info.precision}" + ("" if batch_tokens is None else f"-{batch_tokens}tok")
    (out_dir / f"python_profile-{tag}.txt").write_text(listing)
    operators = operator_profile(engine, sources, options, batch_size, batch_tokens)
    return {
        "beam": options.beam_size,
        "precision": engine.info.precision,
        "batch_tokens": batch_tokens,
        "graph_times": graphs,
        "python_top": functions,
        "operators": operators,
    }
