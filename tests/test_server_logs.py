"""Structured logs: the JSON format is one parseable object per line with the record's fields merged in."""

from __future__ import annotations

import json
import logging

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
