"""PNG figures of the three parts, small enough to commit (about 100 dpi, a few tens of kB each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 100
SIZE = (6.4, 4.0)


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=SIZE)


def plot_decode_cost(results: dict[str, Any], path: Path, title: str) -> Path:
    plt, figure, axes = _figure()
    for name, row in results["engines"].items():
        if row["length"]:
            axes.plot(row["length"], row["ms_per_token"], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(results["lengths"], [str(n) for n in results["lengths"]])
    axes.set_xlabel("output length (tokens, forced)")
    axes.set_ylabel("ms per output token (encoder excluded)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", ncols=2, framealpha=0.8)
    return _save(plt, figure, path)


def plot_batch_throughput(results: dict[str, Any], path: Path, title: str) -> Path:
    plt, figure, axes = _figure()
    for label, row in results["series"].items():
        axes.plot(row["batch_size"], row["tokens_per_s"], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xticks(results["batch_sizes"], [str(n) for n in results["batch_sizes"]])
    axes.set_xlabel("max batch size (sentences)")
    axes.set_ylabel("output tokens / s")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return _save(plt, figure, path)


def plot_versus(results: list[dict[str, Any]], path: Path, title: str) -> Path:
    plt, figure, axes = _figure()
    labels = [f"{r['precision']}\nbeam {r['beam']}" for r in results]
    if any(r.get("batch_tokens") is not None for r in results):
        labels = [f"{label}\n{r.get('batch_tokens') or 'no'} tok." for label, r in zip(labels, results, strict=True)]
    positions = range(len(results))
    width = 0.38
    ours = [r["ours"]["tokens_per_s"] for r in results]
    theirs = [r["ctranslate2"]["tokens_per_s"] for r in results]
    axes.bar([p - width / 2 for p in positions], ours, width, label="nmtserve ONNX engine")
    axes.bar([p + width / 2 for p in positions], theirs, width, label="CTranslate2")
    for p, r in zip(positions, results, strict=True):
        top = max(r["ours"]["tokens_per_s"], r["ctranslate2"]["tokens_per_s"])
        axes.annotate(f"{r['ratio_tokens_per_s']:.2f}×", (p, top), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(list(positions), labels)
    axes.set_ylabel("output tokens / s")
    axes.set_title(title, fontsize=10)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _save(plt, figure, path)


def plot_step_cost(results: dict[str, Any], path: Path, title: str) -> Path:
    """Measured step cost against rows (points) and the fitted fixed + per-row line, per engine and beam."""
    plt, figure, axes = _figure()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, per_beam) in enumerate(results["engines"].items()):
        color = colors[index % len(colors)]
        for beam, row in per_beam.items():
            style = "-" if beam == "1" else "--"
            axes.plot(row["rows"], row["step_ms"], "o", color=color, markersize=4)
            ends = [min(row["rows"]), max(row["rows"])]
            fitted = [row["fixed_ms"] + row["per_row_ms"] * r for r in ends]
            label = f"{name}, beam {beam}: {row['fixed_ms']:.2f} + {row['per_row_ms']:.3f}/row"
            axes.plot(ends, fitted, style, color=color, linewidth=1, label=label)
    axes.set_xlabel("rows per step (sentences x beam)")
    axes.set_ylabel("ms per decode step (CPU time)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=6, loc="upper left", framealpha=0.8)
    return _save(plt, figure, path)


def _save(plt, figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
