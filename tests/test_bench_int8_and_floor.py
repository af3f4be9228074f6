"""``bench/int8_kernels.py``, ``bench/latency_floor.py`` and ``bench/encoder_runs.py`` end to end on the tiny
exports, by the real engine."""

from __future__ import annotations

import json
import statistics

import pytest

from nmtserve.bench import encoder_runs, int8_kernels, latency_floor
from nmtserve.engine import DecodingOptions, Engine
from nmtserve.export.testing import tiny_export
from nmtserve.loadtest.bench import equal_length_lines, equal_work_lines

LINES = ["a b c d", "", "e f g h", "i j k l", "m n o p", "q r s t u v w x y z", "b c d e"]


def test_both_int8_formats_are_measured_against_fp32(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp() / "tiny-model"
    fp32, int8 = tiny_export(base, "fp32"), tiny_export(base, "int8")
    work = tmp_path_factory.mktemp("int8-kernels")
    (work / "src.txt").write_text("\n".join(LINES) + "\n")
    (work / "ref.txt").write_text("\n".join(line[::-1] for line in LINES) + "\n")
    out = work / "report.json"
    argv = ["--fp32", str(fp32), "--int8", str(int8), "--source", str(work / "src.txt"), "--reference"]
    int8_kernels.main([*argv, str(work / "ref.txt"), "--repeats", "1", "--beam-size", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["sentences"] == 6  # the blank line is skipped, with its reference
    runs = report["runs"]
    assert set(runs) == {"fp32", "u8s8", "u8u8", "u8s7"}
    assert runs["fp32"]["identical_to_fp32"] == 6  # fp32 against itself (the tiny outputs are too short for BLEU)
    assert all(run["sentences_per_s"] > 0 and 0 <= run["bleu"] <= 100 for run in runs.values())


def test_the_latency_floor_decodes_the_equal_length_set_one_by_one(tmp_path_factory: pytest.TempPathFactory) -> None:
    fp32 = tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")
    source = tmp_path_factory.mktemp("floor") / "src.txt"
    source.write_text("\n".join(LINES) + "\n")
    out = source.with_suffix(".json")
    latency_floor.main(["--model", str(fp32), "--input", str(source), "--out", str(out)])
    report = json.loads(out.read_text())
    low, high = report["source_tokens_min_max"]
    assert report["sentences"] >= 4 and high - low <= 2  # the median length, within one token either side
    assert report["batch_1_ms_p99"] >= report["batch_1_ms_p50"] > 0 and report["p99_over_p50"] >= 1


def test_encoder_runs_are_timed_against_one_call_on_the_same_admissions(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    fp32 = tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")
    source = tmp_path_factory.mktemp("encoder-runs") / "src.txt"
    source.write_text("\n".join(["a", "b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f"] * 8) + "\n")
    out = source.with_suffix(".json")
    encoder_runs.main(["--model", str(fp32), "--input", str(source), "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["sentences"] == 16 and report["admissions"] == 4  # 2 + 4 + 8, then the 2 left
    padded, calls = report["padded_tokens"], report["encoder_calls"]
    assert report["source_tokens"] <= padded["runs"] < padded["one_call"]  # one-token and 31-token lines split
    assert calls["runs"] > calls["one_call"] == 4
    assert report["cpu_ms"]["runs"] > 0 and report["cpu_ms"]["one_call"] > 0


def test_equal_work_lines_keep_equal_sources_whose_translations_are_equal_in_length_too(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    fp32 = tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")
    lines = [" ".join(chr(97 + (i * 7 + k * 3) % 26) for k in range(5)) for i in range(40)]
    equal, work = equal_length_lines(fp32, lines), equal_work_lines(fp32, lines)
    engine = Engine.load(fp32, threads=1, spin=False)
    outputs = {line: len(engine.translate([line], DecodingOptions(beam_size=4))[0][0].token_ids) for line in equal}
    middle = statistics.median_low(outputs.values())
    assert work == [line for line in equal if abs(outputs[line] - middle) <= 1]  # one at a time, as the server's rows
    assert work and len(work) <= len(equal)
