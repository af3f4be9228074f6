"""A checkpoint is one directory: ``model.safetensors`` + ``config.json`` + ``sentencepiece.model``.

Safetensors and JSON only: loading a checkpoint never unpickles anything. The directory is everything the
exporter needs, so a checkpoint can be copied around and exported on another machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nmtserve.engine.tokenizer import Tokenizer, load_tokenizer
from nmtserve.model.transformer import Transformer, TransformerConfig

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "sentencepiece.model"
DEMO_CHECKPOINT = Path(__file__).parent / "demo"


def save_checkpoint(
    directory: Path,
    model: Transformer,
    tokenizer_path: Path,
    metadata: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the model (or ``state_dict``, e.g. an average of several) with its config and tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = state_dict if state_dict is not None else model.state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, directory / WEIGHTS)
    config = {"model": model.config.to_dict(), "metadata": metadata or {}}
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if Path(tokenizer_path).resolve() != (directory / TOKENIZER).resolve():
        shutil.copyfile(tokenizer_path, directory / TOKENIZER)
    return directory


def read_config(directory: Path) -> tuple[TransformerConfig, dict]:
    raw = json.loads((Path(directory) / CONFIG).read_text())
    return TransformerConfig.from_dict(raw["model"]), raw.get("metadata", {})


def read_tokenizer_spec(directory: Path) -> dict:
    """The checkpoint's ``tokenizer`` entry: ``{"kind": "sentencepiece"}`` unless a converter wrote another kind."""
    raw = json.loads((Path(directory) / CONFIG).read_text())
    return raw.get("tokenizer", {"kind": "sentencepiece"})


def load_checkpoint(directory: Path | None = None) -> tuple[Transformer, Tokenizer, dict]:
    """Load a checkpoint directory (the shipped demo model by default) in eval mode."""
    directory = Path(directory) if directory is not None else DEMO_CHECKPOINT
    if not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"no checkpoint at {directory}: {WEIGHTS} is missing")
    config, metadata = read_config(directory)
    model = Transformer(config)
    model.load_state_dict(load_file(directory / WEIGHTS))
    tokenizer = load_tokenizer(directory, read_tokenizer_spec(directory))
    # A model may have embedding rows no text maps to (NLLB-200 has 2), never the other way round.
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{directory}: tokenizer has {tokenizer.vocab_size} pieces, model {config.vocab_size}")
    return model.eval(), tokenizer, metadata
