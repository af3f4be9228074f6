"""The training settings: one dataclass holds every default, and ``nmtserve train`` derives its flags from it.

Torch-free on purpose, so that ``nmtserve --help`` and ``nmtserve train --help`` work in an install without the
``train`` extra. The defaults are those the shipped demo model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_NAMES = ("tiny", "small", "base", "big")  # the keys of model.transformer.PRESETS (a test keeps them equal)


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    corpus: Path = _setting(Path("data/corpus"), "corpus directory (nmtserve data build)")
    out: Path = _setting(Path("runs/demo"), "run directory: state/ to resume from, final/ checkpoint, curves.png")
    preset: str = _setting("small", "model size", choices=PRESET_NAMES)
    vocab_size: int = _setting(8000, "SentencePiece pieces (shared by both languages)")
    max_tokens: int = _setting(6000, "tokens per batch, padding included")
    accumulate: int = _setting(1, "batches per optimizer step")
    max_length: int = _setting(128, "pairs longer than this (in pieces) are skipped")
    warmup_steps: int = _setting(1200, "learning-rate warm-up steps")
    lr_factor: float = _setting(0.8, "factor of the paper's learning-rate schedule")
    label_smoothing: float = _setting(0.1, "label smoothing of the loss")
    max_steps: int = _setting(100_000, "optimizer steps in all")
    max_minutes: float = _setting(float("inf"), "stop (resumably) after this many minutes of this invocation")
    eval_every: int = _setting(400, "steps between dev evaluations (each keeps a weight snapshot)")
    eval_sentences: int = _setting(300, "dev BLEU on the first N dev sentences, greedy, for speed")
    average_last: int = _setting(5, "the final checkpoint averages the last N snapshots")
    seed: int = _setting(1, "random seed")
    threads: int = _setting(0, "torch threads (0: torch's default)")
    init_from: Path | None = _setting(None, "start from this checkpoint's weights and tokenizer")
    bf16: bool = _setting(True, "autocast matmuls to bfloat16 (weights and Adam stay fp32): ~2x on AVX512-BF16")
