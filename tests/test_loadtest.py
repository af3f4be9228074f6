"""The load generator against a real server: open and closed loop, JSON report, PNG plots, statistics."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nmtserve.cli.main import main
from nmtserve.export.testing import tiny_export
from nmtserve.loadtest import batching_ab
from nmtserve.loadtest.bench import engine_rate
from nmtserve.loadtest.serverproc import cpu_seconds_of
from nmtserve.loadtest.stats import Sample, summarize
from nmtserve.loadtest.workload import Workload, read_lines
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


@pytest.fixture(scope="module")
def server(model_dir: Path):
    config = ServerConfig(model=model_dir, port=0, metrics_port=0, threads=1, warmup=False, max_length=16)
    with BackgroundServer(config) as running:
        yield running


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "input.en"
    path.write_text("the cat sat on the mat\n\nopen the file\nsave it\na package manager installs software\n")
    return path


def test_open_loop_sweep_writes_json_and_plots(server: BackgroundServer, input_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = ["loadtest", "--server", server.address, "--input", str(input_file), "--rate", "10,20"]
    assert main([*argv, "--duration", "1", "--out", str(out), "--quiet", "--seed", "1"]) == 0
    report = json.loads((out / "loadtest.json").read_text())
    assert [level["offered"] for level in report["levels"]] == [10, 20]
    for level in report["levels"]:
        assert level["ok"] == level["requests"] > 0 and not level["errors"]
        assert 0 < level["latency_ms"]["p50"] <= level["latency_ms"]["p99"] <= level["latency_ms"]["p99.9"]
    assert report["model"]["precision"] == "fp32"
    for png in ("loadtest_latency_cdf.png", "loadtest_load.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "req/s offered" in printed and "p99.9" in printed


def test_closed_loop_once_sends_every_line(server: BackgroundServer, input_file: Path, tmp_path: Path) -> None:
    argv = ["loadtest", "--server", server.address, "--input", str(input_file), "--concurrency", "3", "--once"]
    assert main([*argv, "--duration", "30", "--out", str(tmp_path), "--name", "closed", "--quiet"]) == 0
    level = json.loads((tmp_path / "closed.json").read_text())["levels"][0]
    assert level["requests"] == level["ok"] == 4 and level["mode"] == "concurrency"


def test_statistics() -> None:
    samples = [Sample(due=i * 0.1, latency=(i + 1) / 1000, code="OK", texts=2) for i in range(100)]
    samples += [Sample(due=10.0, latency=0.5, code="DEADLINE_EXCEEDED", texts=2)]
    samples += [Sample(due=10.0, latency=math.nan, code="CLIENT_OVERLOADED", texts=2)]
    result = summarize("rate", 10.0, samples)
    assert result.requests == 102 and result.ok == 100
    assert result.latency_ms["p50"] == pytest.approx(50.5) and result.latency_ms["max"] == pytest.approx(100)
    assert result.errors == {"DEADLINE_EXCEEDED": 1, "CLIENT_OVERLOADED": 1}
    assert result.duration_s == pytest.approx(10.5)
    assert result.sentences_per_s == pytest.approx(200 / 10.5)


def test_workload(tmp_path: Path) -> None:
    path = tmp_path / "lines"
    path.write_text("a\n\nb\nc\n")
    lines = read_lines(path)
    assert lines == ["a", "b", "c"]
    stream = iter(Workload(lines, texts_per_request=1, seed=0))
    assert sorted(next(stream)[0] for _ in range(3)) == ["a", "b", "c"]  # without replacement
    assert Workload(lines, texts_per_request=2).once() == [["a", "b"], ["c"]]


def test_open_loop_throughput_counts_answers_within_the_window() -> None:
    samples = [Sample(due=i, latency=0.5, code="OK", texts=1) for i in range(10)]  # the last answer at 9.5 s
    samples.append(Sample(due=9.8, latency=1.0, code="OK", texts=1))  # answered after the 10 s window
    result = summarize("rate", 1.0, samples, window=10.0)
    assert result.throughput_rps == pytest.approx(1.0) and result.ok == 11


def test_cpu_seconds_of_counts_a_busy_process_and_not_an_idle_one() -> None:
    """The server benchmark's CPU figure: a child that spins 0.6 s then sleeps has used about 0.6 s, one that only
    sleeps about none; a process that is gone reads None rather than a number."""
    busy = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    children = [subprocess.Popen([sys.executable, "-c", code]) for code in (busy, "import time; time.sleep(30)")]
    try:
        time.sleep(2.5)
        spinning, sleeping = (cpu_seconds_of(child.pid) for child in children)
        assert spinning is not None and sleeping is not None
        assert 0.55 <= spinning - sleeping <= 1.0  # both paid the interpreter's start-up
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert cpu_seconds_of(children[0].pid) is None


def test_engine_rate_reports_wall_and_cpu_rates(model_dir: Path) -> None:
    """Two engine threads on one engine: the CPU rate counts every thread's time, so it is at least the wall rate
    shared over the busy threads, and both are real rates of the same work."""
    from nmtserve.engine import Engine

    engine = Engine.load(model_dir, "cpu", 1, spin=False)
    lines = ["the cat sat on the mat", "open the file", "save it", "a package manager installs software"] * 4
    rate = engine_rate(engine, lines, batch_size=4, workers=2)
    assert 0 < rate.sentences_per_s < math.inf and 0 < rate.sentences_per_cpu_s < math.inf
    assert rate.sentences_per_cpu_s >= rate.sentences_per_s / 3  # two engine threads and the caller at most
    sustained = engine_rate(engine, lines, batch_size=4, workers=2, sustain_s=0.5)
    assert sustained.passes >= 1 and rate.passes == 1
    # the rates count every pass, and the passes lasted at least the half second asked for
    assert sustained.passes * len(lines) / sustained.sentences_per_s >= 0.5
    assert sustained.sentences_per_cpu_s >= sustained.sentences_per_s / 3


def test_batching_ab_takes_turns_in_rotation_and_pools_every_answer(
    model_dir: Path, input_file: Path, tmp_path: Path
) -> None:
    """Two real server processes (continuous, request-level) on the same arrivals: the order of turns rotates
    per round, each round has its own arrival sequence, and the pooled percentiles are those of every answer."""
    results = batching_ab.run([model_dir], read_lines(input_file), 1.0, 2, 1, tmp_path)
    runs = results["runs"]
    assert len(runs) == 2 * len(batching_ab.FRACTIONS) * len(batching_ab.MODES)
    for run in runs:
        assert run["ok"] == run["requests"] == len(run["latencies_ms"]) > 0
    first = {r["round"]: r["mode"] for r in runs if r["turn"] == 0}
    assert first == {0: "continuous", 1: "request"}
    for (fraction, mode), same in itertools.groupby(
        sorted(runs, key=lambda r: (r["fraction"], r["mode"], r["round"])), key=lambda r: (r["fraction"], r["mode"])
    ):
        same = list(same)
        stats = results["pooled"][f"{fraction}/{model_dir.name}/{mode}"]
        everything = [latency for r in same for latency in r["latencies_ms"]]
        assert stats["answers"] == len(everything)
        assert stats["p99"] == pytest.approx(float(np.percentile(everything, 99)))
        assert stats["p99_rounds_odd"] == pytest.approx(float(np.percentile(same[1]["latencies_ms"], 99)))
        # the two modes saw the same arrivals in a round: as many requests
        assert {r["requests"] for r in runs if (r["fraction"], r["round"]) == (fraction, 0)} == {same[0]["requests"]}
    saved = json.loads((tmp_path / "batching_ab.json").read_text())
    assert saved["pooled"] == results["pooled"]
