"""Joint EN/DE SentencePiece tokenizer, as the engine reads it (training one lives in ``nmtserve.model``).

Torch-free on purpose: the serving engine imports this module. The special ids are fixed at training
time (pad 0, unk 1, bos 2, eos 3) and recorded in every checkpoint's config, so the model and the tokenizer
cannot silently disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """Text <-> ids. Encoded sources end with EOS, as the model was trained."""

    def __init__(self, model_path: Path | str) -> None:
        self.model_path = Path(model_path)
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        self.pad_id, self.unk_id = self._sp.pad_id(), self._sp.unk_id()
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        self.languages: list[str] = []  # a single-pair model: its pair is in the manifest

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """One text at a time: SentencePiece's list form starts a thread pool on every call, which costs 100-300 us
        of CPU (6 us a sentence this way) on the server's event loop, where requests are tokenised."""
        return [self._sp.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        specials = (self.pad_id, self.bos_id, self.eos_id)
        return self._sp.decode([i for i in ids if i not in specials])

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)


TOKENIZER_KINDS = ("sentencepiece", "marian", "m2m100", "nllb", "bart")


def tokenizer_files(spec: dict | None) -> tuple[str, ...]:
    """File names a tokenizer of ``spec`` (a checkpoint's or manifest's ``tokenizer`` entry) reads."""
    kind = (spec or {}).get("kind", "sentencepiece")
    if kind == "sentencepiece":
        return ("sentencepiece.model",)
    if kind == "marian":
        from nmtserve.engine.marian_tokenizer import FILES

        return FILES
    if kind == "m2m100":
        from nmtserve.engine.m2m100_tokenizer import FILES as M2M100_FILES

        return M2M100_FILES
    if kind == "nllb":
        from nmtserve.engine.nllb_tokenizer import FILES as NLLB_FILES

        return NLLB_FILES
    if kind == "bart":
        from nmtserve.engine import bart_tokenizer

        return bart_tokenizer.FILES
    raise ValueError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, not {kind!r}")


def load_tokenizer(directory: Path | str, spec: dict | None = None) -> Any:
    """The tokenizer a checkpoint or model directory names in its ``tokenizer`` entry (SentencePiece by default)."""
    kind = (spec or {}).get("kind", "sentencepiece")
    tokenizer_files(spec)  # refuses an unknown kind
    if kind == "marian":
        from nmtserve.engine.marian_tokenizer import MarianTokenizer

        return MarianTokenizer(directory, spec)
    if kind == "m2m100":
        from nmtserve.engine.m2m100_tokenizer import M2M100Tokenizer

        return M2M100Tokenizer(directory)
    if kind == "nllb":
        from nmtserve.engine.nllb_tokenizer import NllbTokenizer

        return NllbTokenizer(directory)
    if kind == "bart":
        from nmtserve.engine.bart_tokenizer import BartTokenizer

        return BartTokenizer(directory, spec)
    return Tokenizer(Path(directory) / "sentencepiece.model")
