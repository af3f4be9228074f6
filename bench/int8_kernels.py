"""One int8 export in each of its CPU formats (engine/int8_kernels.py) against its fp32 export: speed, BLEU against
references where there are any, and agreement with fp32's own output (the quality figure for text without
references).

    python -m nmtserve.bench.int8_kernels --source data/corpus/dev.en --reference data/corpus/dev.de \\
        --sentences 500 --out docs/benchmarks/int8_kernels/dev_500.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import sacrebleu

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.int8_kernels import cpu_flags, u8s8_saturates
from nmtserve.engine.model_dir import demo_export


def _best_of(engine: Engine, texts: list[str], options: DecodingOptions, repeats: int) -> tuple[float, list[str]]:
    """Sentences per second of the fastest of ``repeats`` passes, and the translations."""
    engine.translate(texts[:16], options)  # warm-up: first-call allocations stay out of the figure
    seconds, hypotheses = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        hypotheses = [nbest[0].text or "" for nbest in engine.translate(texts, options)]
        seconds = min(seconds, time.perf_counter() - start)
    return len(texts) / seconds, hypotheses


def measure(
    fp32_dir: Path, int8_dir: Path, texts: list[str], references: list[str] | None, beam: int, repeats: int
) -> dict:
    options = DecodingOptions(beam_size=beam)
    runs: dict[str, dict] = {}
    baseline: list[str] = []
    for name, directory, kernels in (
        ("fp32", fp32_dir, "u8s8"),
        ("u8s8", int8_dir, "u8s8"),
        ("u8u8", int8_dir, "u8u8"),
        ("u8s7", int8_dir, "u8s7"),
    ):
        engine = Engine.load(directory, threads=1, spin=False, int8_kernels=kernels)
        speed, hypotheses = _best_of(engine, texts, options, repeats)
        baseline = baseline or hypotheses
        run = {
            "sentences_per_s": round(speed, 1),
            "bleu_against_fp32_output": round(sacrebleu.corpus_bleu(hypotheses, [baseline]).score, 2),
            "identical_to_fp32": sum(a == b for a, b in zip(hypotheses, baseline, strict=True)),
        }
        if references is not None:
            run["bleu"] = round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)
        runs[name] = run
        print(name, run, flush=True)
    vnni = sorted(flag for flag in cpu_flags() if "vnni" in flag)
    return {
        "sentences": len(texts),
        "beam_size": beam,
        "repeats": repeats,
        "threads": 1,
        "vnni_flags": vnni,
        "u8s8_saturates_here": u8s8_saturates(),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", type=Path, default=None, help="fp32 export (default: the demo's)")
    parser.add_argument("--int8", type=Path, default=None, help="int8 export of the same model (default: the demo's)")
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--reference", type=Path, default=None, help="references, line by line (optional)")
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    sources = args.source.read_text().splitlines()
    targets = args.reference.read_text().splitlines() if args.reference else [""] * len(sources)
    pairs = [(s, t) for s, t in zip(sources, targets, strict=True) if s.strip()][: args.sentences]
    texts = [s for s, _ in pairs]
    references = [t for _, t in pairs] if args.reference else None
    report = measure(
        args.fp32 or demo_export("fp32"),
        args.int8 or demo_export("int8"),
        texts,
        references,
        args.beam_size,
        args.repeats,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
