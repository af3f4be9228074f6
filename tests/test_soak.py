"""The soak test, short: a few hundred requests against ``nmtserve serve`` on the demo model (a child process on
127.0.0.1), near its saturation rate, with cancellations, short deadlines, streams and a burst above capacity.

The full run (10,000 requests; figures in docs/reliability.md) is the same script with its default sizes:
``nmtserve soak``.
"""

from __future__ import annotations

import json
from pathlib import Path

from nmtserve.cli.main import main


def test_short_soak(tmp_path: Path, capsys) -> None:
    argv = ["soak", "--requests", "300", "--probe-s", "4", "--queue-size", "64", "--warmup-requests", "100"]
    # A short run's warm-up is too short for onnxruntime's arenas to reach every batch shape they will see, so the
    # RSS bound here is looser than the full soak's 64 MiB; it still catches a leak per request or per answer.
    argv += ["--rss-bound-mib", "128", "--out", str(tmp_path), "--quiet"]
    status = main(argv)
    report = capsys.readouterr().out
    figures = json.loads((tmp_path / "soak.json").read_text())
    assert status == 0 and figures["passed"], report
    assert figures["lost"] == 0 and figures["answered_twice"] == 0 and figures["wrong"] == 0
    codes = figures["codes"]
    assert sum(codes.values()) == 300 + figures["burst_requests"]
    assert codes["OK"] > 150 and figures["checked_ok_answers"] == codes["OK"] + figures["warmup_codes"]["OK"]
    assert figures["burst_codes"]["RESOURCE_EXHAUSTED"] > 0
    by_kind = figures["codes_by_kind"]
    assert "CANCELLED" in by_kind["cancel"] and "DEADLINE_EXCEEDED" in by_kind["deadline"]
    assert by_kind["normal (stream)"].get("OK", 0) > 0 and figures["stream_partials"] > 0
    assert figures["rss"]["measured"] and figures["server_end"]["health"] == "SERVING"
    assert figures["server_exit_status"] == 0
    assert "PASSED" in report


def test_short_soak_with_hostile_clients(tmp_path: Path, capsys) -> None:
    """The same checks with two hostile clients mixed in for the whole run (oversized requests refused at the
    token check, streams that never read): nothing lost or wrong for the others, RSS flat, all oversized refused."""
    argv = ["soak", "--requests", "150", "--probe-s", "3", "--queue-size", "64", "--warmup-requests", "50"]
    argv += ["--rss-bound-mib", "128", "--hostile", "2", "--out", str(tmp_path), "--quiet"]
    status = main(argv)
    report = capsys.readouterr().out
    figures = json.loads((tmp_path / "soak.json").read_text())
    assert status == 0 and figures["passed"], report
    assert figures["lost"] == 0 and figures["wrong"] == 0
    hostile = figures["hostile"]
    assert hostile["oversized_requests"].get("INVALID_ARGUMENT", 0) > 0 and hostile["all_oversized_refused"]
    assert sum(hostile["unread_streams"].values()) > 0
    assert figures["checks"]["hostile_oversized_requests_refused"]
