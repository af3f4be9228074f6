"""A tiny checkpoint and its exports, for tests and quick experiments (seconds, not minutes).

The model is trained for a few seconds to reverse random token strings: enough for it to emit EOS at varied,
source-dependent lengths (a purely random model almost never stops before max length, which would leave the EOS
rules of beam search untested), while its outputs stay far from perfect so beams still disagree.
Exports are memoised per process, so test modules share one export per precision.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from nmtserve.model.checkpoint import save_checkpoint
from nmtserve.model.tokenizer_training import train_tokenizer
from nmtserve.model.transformer import PRESETS, Transformer

TEXT = [
    "the cat sat on the mat",
    "die katze sass auf der matte",
    "a package manager installs software",
    "ein paketmanager installiert software",
    "open the file and save it",
    "offne die datei und speichere sie",
    "this program prints the version number",
    "dieses programm gibt die versionsnummer aus",
    "select a printer from the list",
    "wahlen sie einen drucker aus der liste",
]

_EXPORTS: dict[tuple[str, str], Path] = {}


def _reversal_batch(vocab: int, generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources ``t1..tn EOS``, targets ``BOS tn..t1 EOS``, n in 1..11, padded with 0."""
    lengths = torch.randint(1, 12, (size,), generator=generator)
    longest = int(lengths.max())
    source = torch.zeros(size, longest + 1, dtype=torch.long)
    target = torch.zeros(size, longest + 2, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens = torch.randint(4, vocab, (n,), generator=generator)
        source[i, :n], source[i, n] = tokens, 3
        target[i, 0], target[i, 1 : n + 1], target[i, n + 1] = 2, tokens.flip(0), 3
    return source, target


def train_tiny_model(seed: int = 0, steps: int = 150) -> Transformer:
    """The "tiny" preset trained briefly on string reversal (about 3 s on one core)."""
    config = PRESETS["tiny"]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            source, target = _reversal_batch(config.vocab_size, generator)
            logits = model(source, target[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), target[:, 1:].reshape(-1), ignore_index=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def make_tiny_checkpoint(directory: Path, seed: int = 0, steps: int = 150) -> Path:
    """``directory/checkpoint``: the tiny model with a 64-piece SentencePiece model (``directory/tokenizer``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(TEXT * 20, directory / "tokenizer" / "sp.model", PRESETS["tiny"].vocab_size)
    model = train_tiny_model(seed, steps)
    return save_checkpoint(directory / "checkpoint", model, tokenizer, metadata={"steps": steps, "task": "reverse"})


def tiny_export(root: Path, precision: str = "fp32") -> Path:
    """Checkpoint + export under ``root`` once per process and precision; later calls return the same directory."""
    from nmtserve.export.exporter import export_model

    key = (str(root), precision)
    if key not in _EXPORTS:
        checkpoint = Path(root) / "checkpoint"
        if not (checkpoint / "config.json").is_file():
            make_tiny_checkpoint(root)
        _EXPORTS[key] = export_model(checkpoint, Path(root) / f"onnx-{precision}", precision, progress=False)
    return _EXPORTS[key]
