"""The GPU run script (``python -m nmtserve.bench.gpu``): its preflight here, and its stages on CPU.

No GPU is at hand, so the same stages run with ``--device cpu --quick``: exports from a checkpoint, the engine
benchmark beside CTranslate2, the summary. On this machine's CPU-only onnxruntime a CUDA run must stop at once
with a line that names what is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from nmtserve.model.checkpoint import DEMO_CHECKPOINT


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA onnxruntime is here")
def test_cuda_run_without_a_cuda_onnxruntime_says_what_is_missing(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nmtserve.bench.gpu", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2
    assert "no CUDAExecutionProvider" in run.stdout and "onnxruntime-gpu" in run.stdout
    assert not (tmp_path / "out" / "gpu_summary.json").exists()


def test_stages_run_on_cpu_and_print_the_ratio(tmp_path: Path) -> None:
    source = tmp_path / "sentences.en"
    source.write_text("Open the file and save it.\nThe program prints its version number.\n" * 6)
    flags = {"--checkpoint": DEMO_CHECKPOINT, "--source": source, "--out": tmp_path / "out", "--work-dir": tmp_path}
    command = [sys.executable, "-m", "nmtserve.bench.gpu", "--device", "cpu", "--quick", "--stages", "engine"]
    run = subprocess.run(
        command + [str(part) for pair in flags.items() for part in pair],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "gpu_summary.json").read_text())
    assert summary["device"] == "cpu" and "fp32" in summary["exports"]
    rows = summary["versus_ctranslate2"]
    assert {(r["precision"], r["beam"]) for r in rows} == {("fp32", 2), ("fp32", 1)}  # --quick: beams 2 and 1
    assert all(r["ours_tok_s"] > 0 and r["ct2_tok_s"] > 0 for r in rows)
    assert "ratio" in run.stdout and "server" not in summary["stages"]
