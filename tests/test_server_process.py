"""``nmtserve serve`` as a real process: torch can never be imported, it logs JSON, serves, and drains on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nmtserve.export.testing import tiny_export
from nmtserve.loadtest.client import TranslatorClient

# Runs the real CLI with an import hook that makes any import of torch fail loudly.
NO_TORCH_MAIN = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch must not be imported on the serving path")
        return None

sys.meta_path.insert(0, NoTorch())
from nmtserve.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


def read_log(process: subprocess.Popen, message: str, timeout: float = 60.0) -> dict:
    """The first JSON log record with ``message`` (the server logs to stderr)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"server exited ({process.poll()}) before logging {message!r}")
        record = json.loads(line)
        if record["message"] == message:
            return record
    raise AssertionError(f"no {message!r} log within {timeout} s")


def test_serve_process_without_torch(model_dir: Path) -> None:
    argv = [sys.executable, "-c", NO_TORCH_MAIN, "serve", "--model", str(model_dir), "--port", "0"]
    argv += ["--metrics-port", "0", "--log-format", "json", "--threads", "1", "--no-warmup"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        config = read_log(process, "configuration")
        assert config["config"]["port"] == 0 and config["set_by"]["model"] == "flag"
        address = read_log(process, "listening")["grpc"]
        with TranslatorClient(address, timeout=30) as client:
            client.wait_until_serving(timeout=60)
            assert client.health() == "SERVING"
            assert len(client.translate_texts(["the cat sat on the mat", ""])) == 2
        process.send_signal(signal.SIGTERM)
        read_log(process, "draining")
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        process.stderr.close()


def test_server_modules_import_no_torch() -> None:
    modules = ["server.app", "server.service", "server.scheduler", "server.background", "loadtest.client"]
    modules += ["loadtest.run", "loadtest.bench"]
    code = "import sys\n" + "".join(f"import nmtserve.{m}\n" for m in modules)
    code += "import nmtserve.cli.main as m; m.build_parser()\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
