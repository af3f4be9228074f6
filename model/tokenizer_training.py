"""Training the joint SentencePiece model: a training-time job, kept out of the engine, which only reads one."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from nmtserve.engine.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID


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
