"""One command for a GPU machine: ``python -m nmtserve.bench.gpu`` builds what it needs and prints the figures.

A GPU machine lent to a session may reach no package registry and take only a small transfer (tens of MiB:
neither the shipped exports nor the onnxruntime-gpu wheel fit), so everything is derived from ``model/demo``'s
checkpoint (33 MB) on the spot, with a time budget (10 minutes by default):
1. preflight: an NVIDIA GPU (``nvidia-smi``), onnxruntime's ``CUDAExecutionProvider``, CTranslate2's CUDA device
   count; what is missing is printed as one line each, and the run goes on with what works (no CTranslate2 on
   CUDA: our engine's figures alone);
2. exports: fp16 and fp32 from the checkpoint (``export_model``, verified against PyTorch on CPU), and the
   CTranslate2 conversion of the same weights (``bench/artifacts.py`` caches them under ``--work-dir``);
3. ``nmtserve bench engine --device cuda`` parts ``batch`` (tokens/s against batch size) and ``ctranslate2``
   (ours vs CTranslate2, same weights, sentences, beam and precision);
4. ``nmtserve bench server --device cuda`` on the fp16 export: saturation, continuous vs request-level p50/p99
   at 25-90 % load, p99/p50 on equal lengths.
Each stage prints its wall time and the budget left; a stage that does not fit is skipped, said so.

``--device cpu`` runs the very same stages on CPU (tiny sizes with ``--quick``): that is how the tests cover
this script's logic on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmtserve.model.checkpoint import DEMO_CHECKPOINT

GPL = Path("/usr/share/common-licenses/GPL-3")  # an English text most Debian/Ubuntu images carry
PRECISIONS = {"cuda": ("fp16", "fp32"), "cpu": ("fp32",)}
STAGES = ("engine", "server")  # the exports always run: both stages need them


@dataclass
class Budget:
    """Wall-clock budget of the whole run; stages ask before they start."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def preflight(device: str) -> tuple[list[str], bool]:
    """(problems that stop the run, whether CTranslate2 can run on ``device``); prints one line per finding."""
    import onnxruntime as ort

    problems: list[str] = []
    ctranslate2_ok = True
    if device == "cuda":
        smi = shutil.which("nvidia-smi")
        if smi is None:
            problems.append("no nvidia-smi: this machine shows no NVIDIA GPU")
        else:
            gpus = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False).stdout.strip()
            print(f"GPU: {gpus or 'nvidia-smi lists none'}")
        providers = ort.get_available_providers()
        if "CUDAExecutionProvider" not in providers:
            problems.append(
                f"onnxruntime {ort.__version__} has no CUDAExecutionProvider ({', '.join(providers)}): "
                "install onnxruntime-gpu (the 'gpu' extra) in place of onnxruntime"
            )
    try:
        import ctranslate2

        if device == "cuda" and ctranslate2.get_cuda_device_count() < 1:
            print("CTranslate2 sees no CUDA device (it needs CUDA 12's cuBLAS): our engine's figures only")
            ctranslate2_ok = False
    except ImportError:
        print("ctranslate2 is not installed: our engine's figures only")
        ctranslate2_ok = False
    for problem in problems:
        print(f"cannot run: {problem}")
    return problems, ctranslate2_ok


def find_source(given: Path | None) -> Path:
    """The sentences to translate: ``--source``, the corpus's dev split, or the GPL text split into sentences."""
    for candidate in (given, Path("data/corpus/dev.en")):
        if candidate is not None and candidate.is_file():
            return candidate
    if GPL.is_file():
        out = Path("runs/bench/gpu/gpl3.en")
        out.parent.mkdir(parents=True, exist_ok=True)
        text = " ".join(GPL.read_text().split())
        sentences = re.split(r"(?<=[.;:!?])\s+", text)
        out.write_text("\n".join(s for s in sentences if len(s.split()) >= 3) + "\n")
        return out
    raise SystemExit("no sentences: pass --source FILE (one sentence per line), e.g. data/corpus/dev.en")


def _stage(name: str, budget: Budget, needs_s: float) -> bool:
    if budget.left() < needs_s:
        print(f"[skip] {name}: {budget.left():.0f} s left of the budget, it needs about {needs_s:.0f} s")
        return False
    print(f"[{budget.seconds - budget.left():6.0f} s] {name}", flush=True)
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nmtserve.bench import artifacts
    from nmtserve.bench.engine_bench import EngineBenchConfig
    from nmtserve.bench.engine_bench import run as run_engine_bench

    budget = Budget(args.budget_s)
    problems, ctranslate2_ok = preflight(args.device)
    if problems:
        raise SystemExit(2)
    source = find_source(args.source)
    print(f"sentences: {source}")
    work, out = Path(args.work_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precisions = PRECISIONS[args.device]
    summary: dict[str, Any] = {"device": args.device, "source": str(source), "stages": {}}

    if _stage("exports from the checkpoint (fp16/fp32, CTranslate2)", budget, 60):
        started = time.monotonic()
        found = artifacts.prepare(Path(args.checkpoint), [], list(precisions), work, 1)
        summary["stages"]["exports_s"] = time.monotonic() - started
        summary["exports"] = {p: str(d) for p, d in found.onnx.items()}
    else:
        raise SystemExit("no time left for the exports")

    parts = ("batch", "ctranslate2") if ctranslate2_ok else ("batch",)
    stages = set(args.stages.split(","))
    if "engine" in stages and _stage(f"bench engine --device {args.device} ({', '.join(parts)})", budget, 120):
        started = time.monotonic()
        config = EngineBenchConfig(
            checkpoint=Path(args.checkpoint),
            precisions=precisions,
            device=args.device,
            threads=args.threads,
            out=out / "engine",
            source_file=source,
            sentences=args.sentences,
            batch_sentences=min(args.sentences, 200),
            repeats=args.repeats,
            parts=parts,
            profile="never",
            work_dir=work,
            quick=args.quick,
        )
        results = run_engine_bench(config)
        summary["stages"]["engine_s"] = time.monotonic() - started
        summary["versus_ctranslate2"] = [
            {k: row[k] for k in ("precision", "beam", "ratio_tokens_per_s", "identical_pct")}
            | {"ours_tok_s": row["ours"]["tokens_per_s"], "ct2_tok_s": row["ctranslate2"]["tokens_per_s"]}
            for row in results.get("versus_ctranslate2", [])
        ]

    duration = 3.0 if args.quick else args.server_duration
    if "server" in stages and _stage(f"bench server --device {args.device}", budget, 20 * duration + 60):
        from nmtserve.loadtest.bench import Bench
        from nmtserve.loadtest.bench import run as run_server_bench
        from nmtserve.loadtest.workload import read_lines

        started = time.monotonic()
        bench = Bench(
            model=Path(summary["exports"][precisions[0]]),
            lines=read_lines(source),
            duration=duration,
            sentences=min(args.sentences, 20 if args.quick else 100),
            threads=args.threads,
            out=out / "server",
            repeats=1,
            progress=False,
            device=args.device,
        )
        server = run_server_bench(bench)
        summary["stages"]["server_s"] = time.monotonic() - started
        summary["server_checks"] = server["checks"]
    summary["total_s"] = budget.seconds - budget.left()
    (out / "gpu_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"\n== {summary['device']} run, {summary['total_s']:.0f} s ==")
    for row in summary.get("versus_ctranslate2", []):
        print(
            f"{row['precision']} beam {row['beam']}: ours {row['ours_tok_s']:.0f} tok/s, CTranslate2 "
            f"{row['ct2_tok_s']:.0f} tok/s, ratio {row['ratio_tokens_per_s']:.2f}x, "
            f"identical {row['identical_pct']:.0f} %"
        )
    for key, value in summary.get("server_checks", {}).items():
        print(f"server {key}: {value:.3g}" if isinstance(value, float) else f"server {key}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtserve.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the same stages, no GPU")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--source", type=Path, default=None, help="default: data/corpus/dev.en, else the GPL-3 text")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/gpu/work"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gpu"))
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of both engines (host side on CUDA)")
    parser.add_argument("--server-duration", type=float, default=8.0, help="seconds per server load level")
    parser.add_argument("--budget-s", type=float, default=600.0, help="stop starting stages after this")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of every stage)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
