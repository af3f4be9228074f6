"""Structured logs: the JSON format is one parseable object per line with the record's fields merged in."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc

from nmtserve.export.testing import tiny_export
from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
from nmtserve.server.logs import JsonFormatter, TextFormatter


def record(**fields) -> logging.LogRecord:
    entry = logging.LogRecord("nmtserve.test", logging.INFO, __file__, 1, "listening on %s", ("x",), None)
    entry.fields = fields
    return entry


def test_json_lines() -> None:
    line = JsonFormatter().format(record(grpc="127.0.0.1:1", inflight=0))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "listening on x" and entry["level"] == "info" and entry["logger"] == "nmtserve.test"
    assert entry["grpc"] == "127.0.0.1:1" and entry["inflight"] == 0 and entry["time"].endswith("+00:00")


def test_text_appends_fields() -> None:
    assert TextFormatter().format(record(port=5)).endswith("listening on x port=5")


# A HOME nobody can write to, root included (the suite may run as root, for whom a mode-0555 folder is writable).
UNWRITABLE_HOME = "/proc/nmtserve-no-home"


def test_every_server_line_is_json_with_an_unwritable_home(tmp_path: Path) -> None:
    """The real server, as the container runs it (HOME not writable): every stderr line, from the first, is JSON.

    The control shows the setting is what it claims: with onnxruntime's telemetry back on, the same HOME makes its
    import print the plain-text "Failed to persist telemetry device ID" line this test guards against."""
    # onnxruntime keeps its telemetry off wherever CI is set: both runs go without it, or the control proves nothing.
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "ORT_DISABLE_TELEMETRY")}
    env = base | {"HOME": UNWRITABLE_HOME, "ORT_DISABLE_TELEMETRY": "0"}
    control = subprocess.run(
        [sys.executable, "-c", "import onnxruntime"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "telemetry" in control.stderr
    model = tiny_export(tmp_path / "model", "fp32")
    env = base | {"HOME": UNWRITABLE_HOME}
    with ServerProcess(model, "--threads", "1", env=env) as server:
        with grpc.insecure_channel(server.address) as channel:
            reply = pb_grpc.TranslatorStub(channel).Translate(pb.TranslateRequest(texts=["hello"]), timeout=60)
        assert len(reply.translations) == 1
    assert server.lines and server.lines[0].startswith("{")
    for line in server.lines:
        assert isinstance(json.loads(line), dict), line
