"""The tokenizer of Marian (OPUS-MT) models, torch-free: two SentencePiece models and one ``vocab.json`` id map.

A Marian model's ids are not SentencePiece ids: the source model cuts text into pieces, ``vocab.json`` maps each
piece to the model's id (unknown pieces to ``<unk>``), and the target model turns output pieces back into text.
A leading ``>>xx<<`` target-language code (multilingual OPUS-MT models) is one token of its own. This mirrors
transformers' ``MarianTokenizer`` without its optional Moses punctuation normalisation (it needs ``sacremoses``
and is off when that is not installed); tests check the ids against transformers on thousands of strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from nmtserve.engine.text_cleanup import clean_up, clean_up_setting

SOURCE_SPM, TARGET_SPM, VOCAB = "source.spm", "target.spm", "vocab.json"
FILES = (SOURCE_SPM, TARGET_SPM, VOCAB)
UNK, EOS, PAD = "<unk>", "</s>", "<pad>"


class TokenizerFileError(ValueError):
    """A tokenizer file is missing or does not hold what a Marian tokenizer needs."""


def read_vocab(path: Path) -> dict[str, int]:
    """``vocab.json``: piece -> id, with the three special pieces present."""
    try:
        vocab = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TokenizerFileError(f"{path}: Marian vocabulary is missing") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenizerFileError(f"{path}: not a JSON vocabulary: {error}") from error
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise TokenizerFileError(f"{path}: vocabulary must map pieces to integer ids")
    missing = [piece for piece in (UNK, EOS, PAD) if piece not in vocab]
    if missing:
        raise TokenizerFileError(f"{path}: vocabulary lacks the special pieces {missing}")
    return vocab


class MarianTokenizer:
    """Text <-> Marian ids; same interface as ``Tokenizer`` (``bos_id`` is the decoder start, Marian's pad)."""

    kind = "marian"

    def __init__(self, directory: Path | str, spec: dict | None = None) -> None:
        """``spec``: the checkpoint's tokenizer entry, whose ``clean_up_tokenization_spaces`` is the source model's
        ``tokenizer_config.json`` setting recorded at conversion (the file is not copied); without it, the file in
        ``directory`` (a Hugging Face model directory) says."""
        self.directory = Path(directory)
        wanted = (spec or {}).get("clean_up_tokenization_spaces", clean_up_setting(self.directory))
        self.clean_up = bool(wanted)
        for name in (SOURCE_SPM, TARGET_SPM):
            if not (self.directory / name).is_file():
                raise TokenizerFileError(f"{self.directory / name}: Marian SentencePiece model is missing")
        self._source = spm.SentencePieceProcessor(model_file=str(self.directory / SOURCE_SPM))
        self._target = spm.SentencePieceProcessor(model_file=str(self.directory / TARGET_SPM))
        self._ids = read_vocab(self.directory / VOCAB)
        self._pieces = {i: piece for piece, i in self._ids.items()}
        self.unk_id, self.eos_id, self.pad_id = self._ids[UNK], self._ids[EOS], self._ids[PAD]
        self.bos_id = self.pad_id  # Marian decodes from its pad token
        self.languages = sorted(p[2:-2] for p in self._ids if p.startswith(">>") and p.endswith("<<"))
        # Written in a text, the special pieces are single tokens, as transformers' added-token splitting makes them.
        self._specials = {piece: self._ids[piece] for piece in (EOS, UNK, PAD)}
        self._split = re.compile(
            "(" + "|".join(re.escape(piece) for piece in sorted(self._specials, key=len)[::-1]) + ")"
        )

    def language_id(self, code: str) -> int:
        """The id of the ``>>code<<`` token that asks a multilingual model for target language ``code``."""
        return self._ids[f">>{code}<<"]

    @property
    def vocab_size(self) -> int:
        return max(self._ids.values()) + 1

    def pieces(self, text: str) -> list[str]:
        """Written special pieces are split off first; then each stretch of text between them may open with a
        ``>>xx<<`` code (the text up to the first ``<<``), as transformers' added-token splitting and
        ``remove_language_code`` cut it."""
        pieces: list[str] = []
        for part in self._split.split(text):
            if part in self._specials:
                pieces.append(part)
                continue
            if part.startswith(">>") and (end := part.find("<<")) != -1:
                pieces.append(part[: end + 2])
                part = part[end + 2 :]
            if part:
                pieces += self._source.encode(part, out_type=str)
        return pieces

    def encode(self, text: str) -> list[int]:
        """Ids without the final EOS (the engine appends it, as for every model)."""
        return [self._ids.get(piece, self.unk_id) for piece in self.pieces(text)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Target-side text as the decoder's ids (the target SentencePiece model; no EOS): what the vocabulary
        shortlist's table counts on the target side (``export/shortlist.py``)."""
        return [[self._ids.get(p, self.unk_id) for p in self._target.encode(text, out_type=str)] for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """The target text of ``ids`` without the special pieces, as ``decode(skip_special_tokens=True)``: an
        ``<unk>`` the model emits is dropped, not shown as SentencePiece's "⁇"."""
        specials = (self.pad_id, self.eos_id, self.unk_id)
        pieces = [self._pieces.get(i, UNK) for i in ids if i not in specials]
        text = self._target.decode_pieces(pieces).replace("\u2581", " ").strip()
        return clean_up(text) if self.clean_up else text
