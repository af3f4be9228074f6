"""Joint EN/DE SentencePiece tokenizer.

Torch-free on purpose: the serving engine imports this module too. The special ids are fixed at training
time (pad 0, unk 1, bos 2, eos 3) and recorded in every checkpoint's config, so the model and the tokenizer
cannot silently disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_tokenizer(texts: Iterable[str], model_path: Path, vocab_size: int) -> Path:
    """Train one unigram model on both languages so that source, target and output share a vocabulary."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(model_path.with_suffix("")),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=2,
        minloglevel=2,
    )
    model_path.with_suffix("").with_suffix(".vocab").unlink(missing_ok=True)
    produced = model_path.with_suffix("").with_suffix(".model")
    if produced != model_path:
        produced.rename(model_path)
    return model_path


class Tokenizer:
    """Text <-> ids. Encoded sources end with EOS, as the model was trained."""

    def __init__(self, model_path: Path | str) -> None:
        self.model_path = Path(model_path)
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        self.pad_id, self.unk_id = self._sp.pad_id(), self._sp.unk_id()
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        specials = (self.pad_id, self.bos_id, self.eos_id)
        return self._sp.decode([i for i in ids if i not in specials])

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)
