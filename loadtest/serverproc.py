"""``nmtserve serve`` in a child process, for soak tests and process-level tests: its JSON log is read in the
background (the "listening" record gives the ports), its memory can be sampled, and it is stopped by a signal.

Running the server in its own process matters twice: the load generator does not share its GIL, and what is
measured (RSS, exit status, signal handling) is the real server's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

SERVE_MODULE = ("-m", "nmtserve.cli.main")


def rss_of(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes (Linux /proc), or None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds_of(pid: int) -> float | None:
    """User plus system CPU time process ``pid`` has used so far, all its threads (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ServerProcess:
    """``with ServerProcess(model, "--threads", "1") as server: ... server.address ...``

    The one server-process helper of the project: load tools, deploy tools and tests all use it.

    ``launcher``: the interpreter arguments that run the CLI (default ``-m nmtserve.cli.main``; tests pass
    ``-c CODE`` to inject faults into the real server before it starts).
    """

    def __init__(
        self,
        model: Path | None = None,
        *flags: str,
        launcher: tuple[str, ...] = SERVE_MODULE,
        env: Mapping[str, str] | None = None,
        wait_serving: bool = True,
        argv: Sequence[str] | None = None,
        cwd: Path | None = None,
        fail_on_error: bool = False,
    ) -> None:
        """``argv`` replaces the whole command line (an installed entry point, as the container image runs it);
        ``fail_on_error`` makes ``wait_for`` give up at the first error the server logs (a model that fails to
        load, say), where waiting for "serving" is pointless."""
        if argv is None:
            argv = [sys.executable, *launcher, "serve", "--port", "0", "--metrics-port", "0", "--log-format", "json"]
            if model is not None:
                argv += ["--model", str(model)]
            argv += flags
        self.argv = list(argv)
        self.env = None if env is None else dict(env)
        self.cwd, self.wait_serving, self.fail_on_error = cwd, wait_serving, fail_on_error
        self.address = ""
        self.metrics_url = ""
        self.lines: list[str] = []  # every stderr line, as written
        self.records: list[dict] = []  # the JSON ones, parsed
        self._cond = threading.Condition()
        self._done = False
        self.process: subprocess.Popen | None = None

    # -- life cycle ------------------------------------------------------------------------------------------------

    def start(self) -> ServerProcess:
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env, cwd=self.cwd
        )
        threading.Thread(target=self._read, name="server-log", daemon=True).start()
        listening = self.wait_for("listening", timeout=120)
        self.address, self.metrics_url = listening["grpc"], listening["metrics"]
        if self.wait_serving:
            self.wait_for("serving", timeout=300)
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._cond:
                self.lines.append(line)
                if line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        self.records.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for(self, message: str, timeout: float = 60.0) -> dict:
        """The first log record whose message is ``message``, waiting up to ``timeout`` seconds for it."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self.records:
                    if record.get("message") == message:
                        return record
                    if self.fail_on_error and record.get("level") == "error":
                        raise RuntimeError(f"server logged an error before {message!r}: {record}")
                remaining = end - time.monotonic()
                if self._done or remaining <= 0:
                    why = "exited" if self._done else f"did not log it within {timeout} s"
                    raise RuntimeError(f"server {why} before logging {message!r}:\n{self.log_text()}")
                self._cond.wait(remaining)

    def log_text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def tail(self, n: int = 8) -> str:
        """The last ``n`` log records in one line, for error messages."""
        with self._cond:
            records = self.records[-n:]
        return " | ".join(str(r.get("message")) + (f" {r['error']}" if "error" in r else "") for r in records)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process, or None when it cannot be read."""
        return rss_of(self.pid)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status, waiting up to ``timeout`` seconds (then the log reader is drained too)."""
        assert self.process is not None
        status = self.process.wait(timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout=10)
        return status

    def kill(self) -> None:
        """SIGKILL if still running (a test's last resort in ``finally``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the server drains), then SIGKILL after ``timeout``; the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait(10)

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            self.stop(10)
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
