"""Logging for the server: human-readable text, or one JSON object per line for log shippers.

Structured fields go in ``extra={"fields": {...}}``; the text format appends them as ``key=value``, the JSON format
merges them into the object, so the same call site serves both.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...fields, "exception"?}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in fields.items())
        return text


GRPC_LOGGER = "grpc._cython.cygrpc"


class ExpectedRaceFilter(logging.Filter):
    """Turns gRPC's ERROR traceback for ExecuteBatchError (a write or status on a call that already ended: the
    client cancelled mid-write, a deadline passed) into one INFO line: a normal race, not a server fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and type(error).__name__ == "ExecuteBatchError":
            record.msg, record.args = (
                "%s (the call ended first: client gone or deadline passed)",
                (record.getMessage(),),
            )
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def quiet_expected_races() -> None:
    """Install ``ExpectedRaceFilter`` on gRPC's logger (once)."""
    logger = logging.getLogger(GRPC_LOGGER)
    if not any(isinstance(f, ExpectedRaceFilter) for f in logger.filters):
        logger.addFilter(ExpectedRaceFilter())


def setup_logging(log_format: str = "text", level: str = "info") -> None:
    """Replace the root handlers with one stderr handler in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
