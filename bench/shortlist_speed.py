"""The vocabulary shortlist's speed and quality: a shortlist export beside its full-vocabulary export, CTranslate2
on the same weights, and CTranslate2 with the same table as its vocabulary map (``use_vmap``).

    python -m nmtserve.bench.shortlist_speed --pair export/demo/fp32 /tmp/sl/fp32 --pair export/demo/int8 \\
        /tmp/sl/int8 --source data/corpus/dev.en --reference data/corpus/dev.de --sentences 300 --out DIR

Per precision and beam, the four decoders run in turn within each repeat (so a spell of load from another process
lands on all of them), one thread each; tokens/s are from CPU time, best of the repeats, which moves far less than
wall time on a shared machine. BLEU (sacrebleu) is reported where references are given; the shortlist's agreement
with the full vocabulary's output is reported always (the quality figure for text without references).
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nmtserve.bench.artifacts import _cached_ctranslate2
from nmtserve.bench.ctranslate2_engine import CTranslate2Engine, absolute_cap, write_vmap
from nmtserve.bench.engine_bench import load_sources
from nmtserve.bench.engines import TranslateFn, ctranslate2_translate, onnx_translate
from nmtserve.bench.timing import limit_threads, measure_in_turns
from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.model_dir import TOKENIZER, load_model_info
from nmtserve.model.checkpoint import DEMO_CHECKPOINT

DECODERS = ("full", "shortlist", "ctranslate2", "ctranslate2 vmap")


def batch_vocabulary(engine: Engine, sources: list[list[int]], batch_size: int) -> float:
    """Mean shortlist union over the engine's cohorts (length-sorted batches of ``batch_size``)."""
    shortlist = engine.runtime.shortlist
    assert shortlist is not None
    ordered = sorted(sources, key=len)
    sizes = [
        len(np.unique(np.concatenate([shortlist.candidates(s) for s in ordered[i : i + batch_size]])))
        for i in range(0, len(ordered), batch_size)
    ]
    return float(np.mean(sizes))


def run_pair(
    full_dir: Path,
    shortlist_dir: Path,
    ctranslate2_dir: Path,
    sources: list[list[int]],
    references: list[str] | None,
    beams: list[int],
    batch_size: int,
    repeats: int,
) -> list[dict[str, Any]]:
    full, shortlisted = Engine.load(full_dir, threads=1), Engine.load(shortlist_dir, threads=1)
    precision = full.info.precision
    assert shortlisted.runtime.shortlist is not None
    vmap_dir = write_vmap(
        shortlisted.runtime.shortlist, ctranslate2_dir, shortlist_dir.parent / f"ct2-vmap-{precision}"
    )
    decoders: dict[str, TranslateFn] = {
        "full": onnx_translate(full),
        "shortlist": onnx_translate(shortlisted),
        "ctranslate2": ctranslate2_translate(CTranslate2Engine(ctranslate2_dir, 1, precision)),
        "ctranslate2 vmap": ctranslate2_translate(CTranslate2Engine(vmap_dir, 1, precision, use_vmap=True)),
    }
    rows = []
    for beam in beams:
        options = absolute_cap(DecodingOptions(beam_size=beam, max_length=256))
        for translate in decoders.values():
            translate(sources[:16], options, batch_size)
        calls = {name: partial(translate, sources, options, batch_size) for name, translate in decoders.items()}
        timings, outputs = measure_in_turns(calls, repeats, f"{precision} beam {beam}")
        row: dict[str, Any] = {"precision": precision, "beam": beam, "sentences": len(sources)}
        for name in DECODERS:
            tokens = sum(len(ids) for ids in outputs[name])
            per_round = [tokens / s for s in timings[name].cpu_seconds]
            row[name] = {"tokens_per_cpu_s": tokens / timings[name].best_cpu, "per_round": per_round}
        speed = {name: row[name]["tokens_per_cpu_s"] for name in DECODERS}
        row["ratios"] = {
            "shortlist / full": speed["shortlist"] / speed["full"],
            "shortlist / ctranslate2": speed["shortlist"] / speed["ctranslate2"],
            "shortlist / ctranslate2 vmap": speed["shortlist"] / speed["ctranslate2 vmap"],
            "full / ctranslate2": speed["full"] / speed["ctranslate2"],
            "ctranslate2 vmap / ctranslate2": speed["ctranslate2 vmap"] / speed["ctranslate2"],
        }
        same = sum(a == b for a, b in zip(outputs["full"], outputs["shortlist"], strict=True))
        row["shortlist_identical_to_full_pct"] = 100.0 * same / len(sources)
        row["mean_batch_vocabulary"] = batch_vocabulary(shortlisted, sources, batch_size)
        if references is not None:
            import sacrebleu

            decode = full.tokenizer.decode
            row["bleu"] = {
                name: sacrebleu.corpus_bleu([decode(ids) for ids in outputs[name]], [references]).score
                for name in DECODERS
            }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in DECODERS}, indent=1), flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['precision']} b{r['beam']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, name in enumerate(DECODERS):
        ax.bar(x + (i - 1.5) * 0.2, [r[name]["tokens_per_cpu_s"] for r in rows], 0.2, label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel("output tokens per CPU second (1 thread)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", nargs=2, type=Path, action="append", required=True, metavar=("FULL", "SHORTLIST"))
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--beams", type=int, nargs="+", default=[4, 1])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="the exports' weights, for CT2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    limit_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    info = load_model_info(args.pair[0][0])
    sources = load_sources(args.source, args.pair[0][0] / TOKENIZER, args.sentences, info.max_positions)
    references = None
    if args.reference is not None:
        lines = [line for line in args.reference.read_text(encoding="utf-8").splitlines()]
        kept = [i for i, line in enumerate(args.source.read_text(encoding="utf-8").splitlines()) if line.strip()]
        references = [lines[i] for i in kept[: len(sources)]]
    weights = info.manifest["model"]["checkpoint"]["weights_sha256"]
    ctranslate2_dir = _cached_ctranslate2(args.checkpoint, weights, args.out / "work")
    rows = []
    for full_dir, shortlist_dir in args.pair:
        rows += run_pair(
            full_dir, shortlist_dir, ctranslate2_dir, sources, references, args.beams, args.batch_size, args.repeats
        )
    (args.out / "shortlist.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "shortlist.png", f"Vocabulary shortlist: {args.source.name}, {len(sources)} sentences")
    print(f"wrote {args.out / 'shortlist.json'} and shortlist.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
