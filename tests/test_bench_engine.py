"""``nmtserve bench engine`` end to end on the tiny model, and the pieces it is built from.

Timings are never asserted (they depend on the machine and its load); the tests check that every part runs,
decodes what it claims to (forced lengths, same outputs as CTranslate2 on fp32), and writes its JSON and PNGs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nmtserve.bench import artifacts
from nmtserve.bench.ctranslate2_engine import absolute_cap
from nmtserve.bench.decode_cost import forced_length
from nmtserve.bench.engine_bench import FIGURES, RESULTS_JSON, median_length_source
from nmtserve.bench.engines import onnx_translate
from nmtserve.bench.timing import measure
from nmtserve.cli.main import main
from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.model_dir import MANIFEST
from nmtserve.export.testing import TEXT, tiny_export

pytest.importorskip("ctranslate2")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


@pytest.fixture(scope="session")
def source_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench-source") / "dev.en"
    path.write_text("\n".join([*TEXT, "", "the cat", "open the list"]) + "\n", encoding="utf-8")
    return path


def test_bench_engine_quick_end_to_end(tiny_dir: Path, source_file: Path, tmp_path: Path) -> None:
    """The smoke test: all three parts on the tiny model, JSON with the expected keys, three PNGs."""
    out = tmp_path / "bench"
    argv = ["bench", "engine", "--checkpoint", str(tiny_dir.parent / "checkpoint"), "--model-dir", str(tiny_dir)]
    argv += ["--source", str(source_file), "--out", str(out), "--quick", "--profile", "always"]
    argv += ["--batch-tokens", "0", "--batch-tokens", "12"]  # part 3 with and without a token bound
    assert main(argv) == 0

    results = json.loads((out / RESULTS_JSON).read_text())
    assert {"config", "machine", "artifacts", "decoding", "decode_cost", "batch_throughput"} <= results.keys()
    assert {"versus_ctranslate2", "profile", "contention"} <= results.keys()
    assert results["machine"]["threads_per_engine"] == 1

    decode = results["decode_cost"]
    assert decode["lengths"] == [4, 8, 16]
    assert {"onnx fp32 (cache)", "ctranslate2 fp32", "torch (cache)", "torch (no cache)"} <= decode["engines"].keys()
    for row in decode["engines"].values():
        assert row["length"] == [4, 8, 16] and len(row["ms_per_token"]) == len(row["ms_per_token_with_encoder"]) == 3
        assert row["ms_fixed"] > 0 and "growth" in row

    throughput = results["batch_throughput"]
    assert set(throughput["series"]) == {"onnx fp32 beam 1", "onnx fp32 beam 2"}
    for row in throughput["series"].values():
        assert row["batch_size"] == [1, 4] and all(v > 0 for v in row["tokens_per_s"])

    versus = results["versus_ctranslate2"]
    rows = [(r["precision"], r["beam"], r["batch_tokens"]) for r in versus]
    assert rows == [("fp32", 2, None), ("fp32", 2, 12), ("fp32", 1, None), ("fp32", 1, 12)]
    for row in versus:
        assert row["identical_pct"] == 100.0  # same weights, same rules, fp32: the same translations
        assert row["ours"]["tokens_per_s"] > 0 and row["ctranslate2"]["tokens_per_s"] > 0
        assert row["ratio_tokens_per_s"] == pytest.approx(
            row["ours"]["tokens_per_s"] / row["ctranslate2"]["tokens_per_s"]
        )
        ours_s, theirs_s = row["ours"]["timing"]["samples_s"], row["ctranslate2"]["timing"]["samples_s"]
        paired = [c / o for o, c in zip(ours_s, theirs_s, strict=True)]  # identical outputs: equal token counts
        assert row["ratio_tokens_per_s_paired"] == pytest.approx(paired)

    assert [p["batch_tokens"] for p in results["profile"]] == [None, 12, None, 12]  # each row's own cohorts
    assert (out / "profile" / "python_profile-beam2-fp32-12tok.txt").is_file()
    profile = results["profile"][0]
    assert "decoder_step.onnx" in profile["graph_times"]["graphs"]
    assert profile["operators"]["decoder_step.onnx"]["ops"]
    assert 0 <= profile["graph_times"]["host_share"] <= 1

    for name in FIGURES.values():
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_forced_length_decodes_exactly(tiny_dir: Path) -> None:
    translate = onnx_translate(Engine.load(tiny_dir, threads=1))
    for length in (1, 5, 37):
        assert [len(ids) for ids in translate([[5, 6, 3], [7, 3]], forced_length(length), 4)] == [length, length]


def test_absolute_cap_ignores_source_length() -> None:
    options = absolute_cap(DecodingOptions(max_length=50))
    assert {options.max_length_for(n) for n in (1, 3, 30, 1000)} == {50}


def test_median_length_source() -> None:
    assert median_length_source([[1, 3], [1, 2, 3, 4, 3], [1, 2, 3]]) == [1, 2, 3]


def test_measure_keeps_every_sample() -> None:
    calls = []
    timing, result = measure(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5 and result == 5 and len(timing.seconds) == 3
    assert timing.best <= timing.median


def test_model_dir_from_other_weights_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    """Comparing engines on different weights would be meaningless: the manifest's weights sha256 must match."""
    other = tmp_path / "other-checkpoint"
    shutil.copytree(tiny_dir.parent / "checkpoint", other)
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes() + b" ")
    with pytest.raises(ValueError, match="same weights"):
        artifacts.prepare(other, [tiny_dir], [], tmp_path / "work")


def test_shipped_export_is_found_by_weights(tiny_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_dir / MANIFEST).read_text())
    sha = manifest["model"]["checkpoint"]["weights_sha256"]
    root = tmp_path / "shipped"
    shutil.copytree(tiny_dir, root / "demo-onnx" / "fp32")
    assert artifacts.find_shipped_export(sha, "fp32", (root,)) == root / "demo-onnx" / "fp32"
    assert artifacts.find_shipped_export(sha, "int8", (root,)) is None
    assert artifacts.find_shipped_export("0" * 64, "fp32", (root,)) is None


def test_bench_engine_on_cuda_without_a_gpu_is_a_clear_error(tiny_dir: Path, source_file: Path, tmp_path: Path) -> None:
    """``--device cuda`` takes the CUDA path of both engines; with the CPU onnxruntime (CI) it stops at once with
    the engine's own message instead of benchmarking the CPU under a CUDA label."""
    import onnxruntime as ort

    from nmtserve.engine import EngineError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the error path cannot be taken here")
    argv = ["bench", "engine", "--checkpoint", str(tiny_dir.parent / "checkpoint"), "--model-dir", str(tiny_dir)]
    argv += ["--source", str(source_file), "--out", str(tmp_path / "bench"), "--quick", "--device", "cuda"]
    with pytest.raises(EngineError, match="CUDAExecutionProvider"):
        main(argv)
    assert not (tmp_path / "bench" / RESULTS_JSON).exists()


def test_ctranslate2_compute_types_follow_the_device() -> None:
    """The baseline runs the arithmetic of our export of the same name, per device; a pairing that has no
    CTranslate2 equivalent (fp16 on CPU) is refused rather than silently swapped."""
    from nmtserve.bench.ctranslate2_engine import COMPUTE_TYPES, CTranslate2Engine

    assert COMPUTE_TYPES["cpu"] == {"fp32": "float32", "int8": "int8_float32"}
    assert COMPUTE_TYPES["cuda"]["fp16"] == "float16"
    with pytest.raises(ValueError, match="fp16"):
        CTranslate2Engine("unused", precision="fp16", device="cpu")


def test_fit_line_recovers_fixed_and_per_row_costs() -> None:
    from nmtserve.bench.step_cost import fit_line

    rows = [1, 2, 4, 8, 16, 32]
    exact = fit_line(rows, [0.4 + 0.14 * r for r in rows])
    assert exact["fixed_ms"] == pytest.approx(0.4) and exact["per_row_ms"] == pytest.approx(0.14)
    assert exact["worst_relative_miss"] < 1e-9
    bent = fit_line(rows, [0.4 + 0.14 * r + (0.5 if r == 32 else 0.0) for r in rows])
    assert bent["worst_relative_miss"] > 0.01  # a step that is not linear in its rows shows in the miss


def test_step_cost_times_both_engines_at_forced_lengths(tiny_dir: Path, source_file: Path, tmp_path: Path) -> None:
    """``bench/step_cost.py`` end to end: ours and CTranslate2, fp32 and int8, rows = sentences x beam."""
    from nmtserve.bench import step_cost

    int8 = tiny_export(tiny_dir.parent, "int8")
    out = tmp_path / "step_cost.json"
    argv = ["--input", str(source_file), "--checkpoint", str(tiny_dir.parent / "checkpoint")]
    argv += ["--model-dir", str(tiny_dir), "--model-dir", str(int8), "--work-dir", str(tmp_path / "work")]
    argv += ["--sentences", "1", "3", "--beams", "1", "2", "--length", "5", "--rounds", "1", "--out", str(out)]
    step_cost.main(argv)
    report = json.loads(out.read_text())
    engines = report["engines"]
    assert {"ours fp32", "ctranslate2 fp32", "ctranslate2 int8"} <= engines.keys()
    assert any(name.startswith("ours int8 u8") for name in engines)  # the int8 format that ran is named
    for per_beam in engines.values():
        assert per_beam["1"]["rows"] == [1, 3] and per_beam["2"]["rows"] == [2, 6]
        assert all(ms >= 0 for row in per_beam.values() for ms in row["step_ms"])
    pairs = report["cost_ours_over_ctranslate2"]
    assert len(pairs) == 2 and all(set(r) == {"1", "2"} for r in pairs.values())
    assert out.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)


def test_bench_engine_runs_our_int8_in_the_format_asked(tiny_dir: Path, source_file: Path, tmp_path: Path) -> None:
    """``--int8-kernels u8s8`` runs CTranslate2's arithmetic on a CPU where ``auto`` picks u8u8; the JSON says which."""
    int8 = tiny_export(tiny_dir.parent, "int8")
    for kernels in ("u8s8", "u8u8", "u8s7"):
        out = tmp_path / kernels
        argv = ["bench", "engine", "--checkpoint", str(tiny_dir.parent / "checkpoint"), "--model-dir", str(int8)]
        argv += ["--source", str(source_file), "--out", str(out), "--quick", "--parts", "ctranslate2"]
        assert main([*argv, "--profile", "never", "--int8-kernels", kernels]) == 0
        results = json.loads((out / RESULTS_JSON).read_text())
        assert results["int8_kernels_resolved"] == {"int8": kernels}
        assert results["config"]["int8_kernels"] == kernels


def test_cohort_time_prints_the_cpu_seconds_of_a_run(
    tiny_dir: Path, source_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nmtserve.bench.cohort_time import main

    assert main(["--model", str(tiny_dir), "--input", str(source_file), "--sentences", "4", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    seconds = float(printed.split(": ")[-1].split()[0])
    assert printed.startswith(f"{tiny_dir} beam 4") and 0 < seconds < 60
