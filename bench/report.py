"""What a benchmark run prints and records besides its numbers: the machine, versions, and text tables."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def print_and_write(report: dict[str, Any], out: Path | None) -> None:
    """A small benchmark's figures: one JSON line on stdout, and indented JSON at ``out`` when given."""
    print(json.dumps(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int, device: str = "cpu") -> dict[str, Any]:
    """Enough to tell two result files apart: CPU, cores, GPU, load when the run started, library versions."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "device": device,
        "gpu": _gpu_names() if device == "cuda" else None,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_per_engine": threads,
        "load_average_at_start": list(load) if load else None,
        "python": platform.python_version(),
        "versions": {n: _version(n) for n in ("onnxruntime", "ctranslate2", "torch", "numpy", "nmtserve")},
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _gpu_names() -> list[str] | None:
    """The GPUs ``nvidia-smi`` lists (None where it is missing: the run still records its device)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    listing = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()] or None


def contention(results: dict[str, Any]) -> dict[str, Any]:
    """How much of a core the timed runs actually got (CPU time over wall time), and the load at the end."""
    shares: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if "cpu_over_wall" in value:
                shares.append(value["cpu_over_wall"])
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(results)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "min_cpu_over_wall": min(shares, default=1.0),
        "median_cpu_over_wall": sorted(shares)[len(shares) // 2] if shares else 1.0,
        "load_average_at_end": list(load) if load else None,
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def format_decode_cost(results: dict[str, Any]) -> str:
    lengths = results["lengths"]
    rows = []
    for name, row in results["engines"].items():
        per_length = dict(zip(row["length"], row["ms_per_token"], strict=True))
        cells = [f"{per_length[n]:.3f}" if n in per_length else "-" for n in lengths]
        growth = f"{row['growth']:.2f}×" if row["growth"] is not None else "-"
        rows.append([name, *cells, growth])
    span = f"len{lengths[-1]}/len{lengths[0]}"
    title = (
        f"Decode cost, ms per output token, encoder excluded (batch 1, beam 1, source {results['source_len']} tokens)"
    )
    return title + "\n" + _table(["engine", *[str(n) for n in lengths], span], rows)


def format_batch_throughput(results: dict[str, Any]) -> str:
    sizes = results["batch_sizes"]
    rows = []
    for label, row in results["series"].items():
        per_size = dict(zip(row["batch_size"], row["tokens_per_s"], strict=True))
        rows.append([label, *[f"{per_size[n]:.0f}" if n in per_size else "-" for n in sizes]])
    title = f"Output tokens/s against max batch size ({results['sentences']} sentences)"
    return title + "\n" + _table(["engine", *[str(n) for n in sizes]], rows)


def cohort_bound(row: dict[str, Any]) -> str:
    """How a part-3 row's cohorts were bounded: sentences, and padded source tokens where a budget was set."""
    tokens = row.get("batch_tokens")
    return f"{row['batch_size']} sent." if tokens is None else f"{row['batch_size']} sent., {tokens} tok."


def format_versus(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["precision"],
            str(r["beam"]),
            cohort_bound(r),
            f"{r['ours']['tokens_per_s']:.0f}",
            f"{r['ctranslate2']['tokens_per_s']:.0f}",
            f"{r['ours']['sentences_per_s']:.1f}",
            f"{r['ctranslate2']['sentences_per_s']:.1f}",
            f"{r['ratio_tokens_per_s']:.2f}×",
            f"{r['ratio_tokens_per_cpu_s']:.2f}×",
            f"{r['ratio_tokens_per_s_paired_median']:.2f}×",
            f"{r['identical_pct']:.1f}%",
        ]
        for r in results
    ]
    header = ["precision", "beam", "cohorts", "ours tok/s", "CT2 tok/s", "ours sent/s", "CT2 sent/s", "ours/CT2"]
    header += ["(CPU time)", "(paired median)", "identical"]
    sentences = results[0]["sentences"] if results else 0
    batch = results[0]["batch_size"] if results else 0
    return f"ONNX engine vs CTranslate2 ({sentences} sentences, max batch {batch})\n" + _table(header, rows)


def format_profile(profile: dict[str, Any]) -> str:
    graphs = profile["graph_times"]
    bound = "" if profile.get("batch_tokens") is None else f", cohorts of at most {profile['batch_tokens']} tokens"
    lines = [f"Where the time goes (ONNX engine, {profile['precision']}, beam {profile['beam']}{bound}):"]
    host = 100 * graphs["host_share"]
    lines.append(f"  total {graphs['total_s']:.2f} s; host side (Python beam loop, input assembly) {host:.0f}%")
    for graph, row in graphs["graphs"].items():
        lines.append(f"  {graph:<18} {100 * row['share']:5.1f}%  {row['calls']} calls")
    step = profile["operators"].get("decoder_step.onnx")
    if step:
        ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in step["ops"][:6])
        lines.append(f"  decoder_step kernels: {ops}")
        nodes = ", ".join(f"{n['node']} {100 * n['share']:.0f}%" for n in step["top_nodes"][:6])
        lines.append(f"  decoder_step heaviest nodes: {nodes}")
    top = ", ".join(f"{r['function']} {r['own_s']:.2f}s" for r in profile["python_top"][:5])
    lines.append(f"  Python, own time under cProfile: {top}")
    return "\n".join(lines)
