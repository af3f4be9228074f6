"""What several command groups share: decoding and backend flags, flags derived from a settings dataclass, bounded
integer flags, and the one-line message for a command whose optional dependencies are not installed."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

DEFAULT_CORPUS = Path("data/corpus")

# Optional dependencies, by top-level module, and the extra that installs each (pyproject.toml).
EXTRA_OF_MODULE = {
    "torch": "train",
    "safetensors": "train",
    "onnx": "train",
    "onnxscript": "train",
    "sacrebleu": "eval",
    "onnxruntime": "cpu",
    "ctranslate2": "bench",
    "matplotlib": "bench",
}
SERVING_EXTRAS = "pip install 'nmtserve[cpu]' (or 'nmtserve[gpu]' on NVIDIA GPUs)"


def int_at_least(low: int) -> Any:
    """An argparse ``type`` for integers of at least ``low``: a bad value is argparse's one-line usage error
    (exit 2) naming the flag, not a traceback from deep inside the command."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


class MissingExtra(Exception):
    """A command needs an optional dependency that this install lacks; the message says how to install it."""


def missing_extra(error: ModuleNotFoundError, command: str) -> MissingExtra | None:
    """The one-line explanation of ``error`` when it is an optional dependency, else None (a real bug)."""
    module = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    install = SERVING_EXTRAS if extra == "cpu" else f"pip install 'nmtserve[{extra}]'"
    return MissingExtra(f"nmtserve {command}: needs {module}, which this install lacks: {install}")


def missing_file(error: FileNotFoundError, command: str) -> str:
    """The one-line explanation of a file the command needs and cannot find; the corpus default gets a hint."""
    path = str(error.filename or error)
    hint = ""
    if Path(path).is_relative_to(DEFAULT_CORPUS) and not Path(path).is_absolute():
        hint = " (the default corpus, relative to the current directory: build it with `nmtserve data build`)"
    return f"nmtserve {command}: {path}: no such file or directory{hint}"


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256, help="absolute cap on output tokens")


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch"], help="onnx: the serving engine")
    parser.add_argument("--checkpoint", type=Path, default=None, help="torch backend: default the demo model")
    parser.add_argument("--model", type=Path, default=None, help="onnx backend: exported model dir")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="onnx: which demo export")
    parser.add_argument("--threads", type=int, default=None, help="onnx: intra-op threads")


def decoding_options(args: argparse.Namespace) -> Any:
    from nmtserve.engine.decoding import DecodingOptions

    return DecodingOptions(beam_size=args.beam_size, length_penalty=args.length_penalty, max_length=args.max_length)


def model_dir_of(args: argparse.Namespace) -> Path:
    """``--model``, or the shipped demo export of ``--precision``."""
    from nmtserve.engine.model_dir import demo_export

    return args.model or demo_export(args.precision)


def add_dataclass_flags(parser: argparse.ArgumentParser, settings: type) -> None:
    """One flag per field of the dataclass ``settings`` (``--max-tokens`` for ``max_tokens``), with its default and
    the ``help`` and ``choices`` of the field's metadata: the dataclass stays the one place of the defaults."""
    for spec in dataclasses.fields(settings):
        flag = "--" + spec.name.replace("_", "-")
        help_text = f"{spec.metadata.get('help', '')} (default {spec.default})"
        kind = str(spec.type)
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=spec.default, help=help_text)
            continue
        convert = int if kind == "int" else float if kind == "float" else Path if "Path" in kind else str
        parser.add_argument(
            flag, type=convert, default=spec.default, choices=spec.metadata.get("choices"), help=help_text
        )


def dataclass_from_flags(settings: type, args: argparse.Namespace) -> Any:
    return settings(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(settings)})
