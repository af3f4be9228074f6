"""The ``nmtserve`` console script: ``translate --backend torch`` keeps lines aligned and matches the library."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import write_corpus

from nmtserve.model.beam_search import DecodingOptions
from nmtserve.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from nmtserve.model.evaluate import translate_texts

NMTSERVE = Path(sys.executable).parent / "nmtserve"
LINES = ["The package is installed.", "", "The server is running now."]


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the installed console script on one CPU thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [str(NMTSERVE), *args], input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def in_process(checkpoint: Path | None, texts: list[str]) -> list[str]:
    """translate_texts with the CLI's default decoding options (beam 4, length penalty 1, max 256)."""
    model, tokenizer, _ = load_checkpoint(checkpoint)
    return translate_texts(model, tokenizer, texts, DecodingOptions(beam_size=4, length_penalty=1.0, max_length=256))


def test_translate_keeps_lines_aligned(trained_checkpoint: Path) -> None:
    """3 input lines (one blank) give exactly 3 output lines; the blank stays blank; the others equal the library's."""
    result = run_cli("translate", "--backend", "torch", "--checkpoint", str(trained_checkpoint), stdin="\n".join(LINES))
    assert result.returncode == 0, result.stderr
    output = result.stdout.split("\n")
    assert output[-1] == "" and len(output[:-1]) == 3  # three lines, each newline-terminated
    assert output[1] == ""
    assert [output[0], output[2]] == in_process(trained_checkpoint, [LINES[0], LINES[2]])
    assert output[0].strip() and output[2].strip()


def test_help_does_not_import_torch() -> None:
    """Building the parser (what ``nmtserve --help`` does) never imports torch."""
    code = "import sys; from nmtserve.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
    help_text = run_cli("--help")
    assert help_text.returncode == 0 and "translate" in help_text.stdout


def test_translate_with_the_demo_model() -> None:
    """With no --checkpoint the shipped demo model translates into non-empty German-looking text, as in-process."""
    assert (DEMO_CHECKPOINT / "model.safetensors").is_file(), f"demo model missing at {DEMO_CHECKPOINT}"
    result = run_cli("translate", "--backend", "torch", stdin="\n".join(LINES) + "\n")
    assert result.returncode == 0, result.stderr
    output = result.stdout.splitlines()
    assert len(output) == 3 and output[1] == ""
    assert [output[0], output[2]] == in_process(None, [LINES[0], LINES[2]])
    for source, translation in ((LINES[0], output[0]), (LINES[2], output[2])):
        assert translation.strip() and translation != source
    german = {"das", "der", "die", "ist", "wird", "wurde", "paket", "installiert", "server", "läuft", "jetzt"}
    assert german & set(re.findall(r"\w+", output[0].lower())), output[0]


@pytest.mark.parametrize("batching", [(), ("--batch-size", "1"), ("--batch-tokens", "8")], ids=["default", "1", "8tok"])
def test_default_onnx_backend_matches_torch_on_the_demo_model(batching: tuple[str, ...]) -> None:
    """``nmtserve translate`` (ONNX engine, shipped fp32 export) prints what the PyTorch reference translates,
    however its batches are bounded."""
    result = run_cli("translate", *batching, stdin="\n".join(LINES) + "\n")
    assert result.returncode == 0, result.stderr
    output = result.stdout.splitlines()
    assert len(output) == 3 and output[1] == ""
    assert [output[0], output[2]] == in_process(None, [LINES[0], LINES[2]])


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--batch-size", "0", "must be at least 1"),
        ("--batch-tokens", "0", "must be at least 1"),
        ("--batch-tokens", "many", "expected an integer"),
    ],
)
def test_bad_batch_bounds_are_a_one_line_usage_error(flag: str, value: str, says: str) -> None:
    result = run_cli("translate", flag, value, stdin="Hello.\n")
    assert result.returncode == 2 and result.stdout == ""
    assert f"argument {flag}: {says}" in result.stderr and "Traceback" not in result.stderr


def test_shipped_export_was_made_from_the_shipped_checkpoint() -> None:
    """The demo export's manifest pins the sha256 of the demo checkpoint's weights: the two cannot drift apart."""
    from nmtserve.engine.model_dir import demo_export, read_manifest, sha256_file

    for precision in ("fp32", "int8"):
        manifest = read_manifest(demo_export(precision))
        assert manifest["precision"] == precision
        assert manifest["model"]["checkpoint"]["weights_sha256"] == sha256_file(DEMO_CHECKPOINT / "model.safetensors")


# -- one way in: --version, and an install without an extra ---------------------------------------------------------

# Runs the real CLI with some top-level modules made unimportable, as in an install without their extra: a finder
# first on sys.meta_path refuses them as Python does for a missing package (ModuleNotFoundError with its name).
WITHOUT = """
import sys
BLOCKED = set(sys.argv[1].split(","))

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
from nmtserve.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with ``modules`` (comma-separated top-level names) missing."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", WITHOUT, modules, *args]
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"nmtserve {metadata.version('nmtserve')}"


def test_help_without_onnxruntime_or_torch() -> None:
    """A bare install (neither extra) still explains itself, and says what serving needs."""
    result = run_without("torch,onnxruntime", "--help")
    assert result.returncode == 0, result.stderr
    assert "nmtserve[cpu]" in result.stdout and "serve" in result.stdout and result.stderr == ""


def test_a_command_needing_torch_names_the_extra_in_one_line() -> None:
    result = run_without("torch", "translate", "--backend", "torch")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nmtserve[train]" in lines[0] and "torch" in lines[0]


def test_serve_without_onnxruntime_names_the_serving_extra() -> None:
    result = run_without("onnxruntime", "serve", "--port", "0", "--metrics-port", "0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nmtserve[cpu]" in lines[0] and "onnxruntime" in lines[0]


def test_evaluate_with_the_onnx_backend_needs_no_torch(tmp_path: Path) -> None:
    """The serving install's evaluate: the demo export on a few synthetic sentences, torch unimportable."""
    corpus = write_corpus(tmp_path / "corpus", train=1, dev=3)
    args = ("evaluate", "--corpus", str(corpus), "--split", "dev", "--limit", "3", "--beam-size", "1", "--threads", "1")
    result = run_without("torch", *args)
    assert result.returncode == 0, result.stderr
    assert "BLEU" in result.stdout


def test_every_command_has_working_help(capsys) -> None:
    """``--help`` of every command and subcommand renders (argparse %-formats help strings: a stray % breaks it)."""
    import argparse

    from nmtserve.cli.main import build_parser, main

    def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += [(*prefix, name), *commands(sub, (*prefix, name))]
        return found

    every = commands(build_parser())
    assert {("soak",), ("bench", "engine"), ("bench", "server"), ("export", "compare"), ("export", "bleu")} <= set(
        every
    )
    for command in every:
        try:
            main([*command, "--help"])
        except SystemExit as exit_:
            assert exit_.code == 0, command
        assert "usage: nmtserve " + " ".join(command) in capsys.readouterr().out


def test_a_missing_corpus_is_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-corpus"
    result = run_cli("evaluate", "--corpus", str(missing), "--split", "dev")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing / "dev.en") in lines[0] and "Traceback" not in result.stderr
