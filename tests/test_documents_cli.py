"""``nmtserve translate --file IN --out OUT``: a document translated locally and through a live server gives the
same file, with its markup kept; unreadable input gets a one-line reason and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmtserve.engine import DecodingOptions
from nmtserve.server.background import BackgroundServer
from nmtserve.server.config import ServerConfig
from nmtserve.server.documents import plan_document

NMTSERVE = Path(sys.executable).with_name("nmtserve")
PAGE = '<p title="A tip.">Open the file menu. Then <b>save</b> it.</p>\n<pre>make install</pre>\n'


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(NMTSERVE), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def expected(engine, text: str, format: str) -> str:
    plan = plan_document(text, format)
    translated = [n[0].text for n in engine.translate(plan.sentences, DecodingOptions(beam_size=4, max_length=256))]
    return plan_document(text, format).rebuild(translated)


def test_a_file_is_translated_locally_and_through_a_server(tmp_path: Path, demo_engine, demo_model_dir: Path):
    source = tmp_path / "page.html"
    source.write_text(PAGE, encoding="utf-8")
    local, remote = tmp_path / "local.html", tmp_path / "remote.html"
    result = run_cli("translate", "--file", str(source), "--out", str(local))
    assert result.returncode == 0, result.stderr
    assert local.read_text("utf-8") == expected(demo_engine, PAGE, "html")
    assert "<pre>make install</pre>" in local.read_text("utf-8")
    config = ServerConfig(model=demo_model_dir, port=0, metrics_port=0, threads=1, warmup=False)
    with BackgroundServer(config) as server:
        result = run_cli("translate", "--file", str(source), "--out", str(remote), "--server", server.address)
    assert result.returncode == 0, result.stderr
    assert remote.read_text("utf-8") == local.read_text("utf-8")


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("latin1.txt", "Größe".encode("latin-1"), "is not UTF-8"),
        ("notes.docx", b"PK\x03\x04", "cannot tell the format"),
        ("broken.srt", b"1\nnot a timing\n", "not a valid SubRip file"),
    ],
)
def test_unreadable_files_get_a_reason(tmp_path: Path, name: str, data: bytes, fragment: str):
    source = tmp_path / name
    source.write_bytes(data)
    result = run_cli("translate", "--file", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
