"""The tokenizer of M2M-100 models, torch-free: one SentencePiece model, fairseq's ``vocab.json`` and ``__xx__`` codes.

M2M-100's ids are fairseq dictionary ids, not SentencePiece ids: SentencePiece cuts the text into pieces and
``vocab.json`` maps each piece to its id (unknown pieces to ``<unk>``). The language codes are not in
``vocab.json``: transformers appends them after it (``__af__`` gets ``len(vocab)``, then the rest of fairseq's
fixed list in order), followed by 8 made-up words that only pad the embedding. A source is
``[__src__] pieces [</s>]``; the target language is the decoder's forced first token. The special tokens written in
a text (``</s>``, ``<unk>``) are single tokens, as transformers' added-token splitting makes them; language codes
written in a text are cut into pieces, as transformers does. Tests check
the ids against transformers' ``M2M100Tokenizer`` on thousands of strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from nmtserve.engine.text_cleanup import clean_up, clean_up_setting

SPM, VOCAB, CONFIG = "sentencepiece.bpe.model", "vocab.json", "tokenizer_config.json"
FILES = (SPM, VOCAB, CONFIG)
BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
MADE_UP_WORDS = 8  # transformers' default ``num_madeup_words``: embedding rows after the language codes

# fairseq's language lists (transformers' ``FAIRSEQ_LANGUAGE_CODES``): their order fixes the codes' ids.
# fmt: off
LANGUAGE_CODES = {
    "m2m100": [
        "af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy", "da", "de", "el",
        "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha", "he", "hi", "hr", "ht", "hu",
        "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk", "km", "kn", "ko", "lb", "lg", "ln", "lo", "lt",
        "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my", "ne", "nl", "no", "ns", "oc", "or", "pa", "pl", "ps", "pt",
        "ro", "ru", "sd", "si", "sk", "sl", "so", "sq", "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr",
        "uk", "ur", "uz", "vi", "wo", "xh", "yi", "yo", "zh", "zu",
    ],
    "wmt21": ["en", "ha", "is", "ja", "cs", "ru", "zh", "de"],
}
# fmt: on


class TokenizerFileError(ValueError):
    """A tokenizer file is missing or does not hold what the tokenizer needs."""


def read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TokenizerFileError(f"{path}: {what} is missing") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenizerFileError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise TokenizerFileError(f"{path}: {what} must be a JSON object")
    return value


def read_vocab(path: Path) -> dict[str, int]:
    """fairseq's dictionary as ``vocab.json`` holds it, with its four special pieces."""
    vocab = read_json(path, "M2M-100 vocabulary")
    if not all(isinstance(i, int) for i in vocab.values()):
        raise TokenizerFileError(f"{path}: vocabulary must map pieces to integer ids")
    missing = [piece for piece in (BOS, PAD, EOS, UNK) if piece not in vocab]
    if missing:
        raise TokenizerFileError(f"{path}: vocabulary lacks the special pieces {missing}")
    return vocab


def language_list(directory: Path) -> list[str]:
    """The codes the tokenizer config names (``language_codes``: ``m2m100``, the default, or ``wmt21``)."""
    name = read_json(Path(directory) / CONFIG, "tokenizer config").get("language_codes", "m2m100")
    if name not in LANGUAGE_CODES:
        raise TokenizerFileError(
            f"{Path(directory) / CONFIG}: language_codes {name!r} is not one of {sorted(LANGUAGE_CODES)}"
        )
    return list(LANGUAGE_CODES[name])


def tokenizer_ids(directory: Path) -> int:
    """Ids the tokenizer uses, made-up words included: the model's vocabulary must have at least these."""
    config = read_json(Path(directory) / CONFIG, "tokenizer config")
    vocab = read_vocab(Path(directory) / VOCAB)
    return len(vocab) + len(language_list(directory)) + int(config.get("num_madeup_words", MADE_UP_WORDS))


class M2M100Tokenizer:
    """Text <-> M2M-100 ids; the interface of ``Tokenizer`` plus the language codes (``language_id``)."""

    kind = "m2m100"
    forces_target_language = True  # the target code is the decoder's forced first token, not part of the source

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        if not (self.directory / SPM).is_file():
            raise TokenizerFileError(f"{self.directory / SPM}: M2M-100 SentencePiece model is missing")
        self._sp = spm.SentencePieceProcessor(model_file=str(self.directory / SPM))
        self._ids = read_vocab(self.directory / VOCAB)
        self.languages = language_list(self.directory)
        self._language_ids = {code: len(self._ids) + i for i, code in enumerate(self.languages)}
        self._vocab_size = tokenizer_ids(self.directory)
        self._pieces = {i: piece for piece, i in self._ids.items()}
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = (self._ids[p] for p in (BOS, PAD, EOS, UNK))
        # Written in a text, the four specials are single tokens; language codes are not (transformers cuts
        # ``__de__`` into pieces like any text).
        self._specials = {piece: self._ids[piece] for piece in (BOS, PAD, EOS, UNK)}
        self._special_ids = frozenset([*self._specials.values(), *self._language_ids.values()])
        # Longest first, so that a code is never cut by a shorter one that is its prefix.
        alternatives = sorted(self._specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(token) for token in alternatives) + ")")
        self.clean_up = clean_up_setting(self.directory)

    def language_id(self, code: str) -> int:
        """The id of ``__code__``: the first source token, or the forced first target token."""
        return self._language_ids[code]

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Ids without the language code and the final EOS (the caller adds them, as for every model)."""
        ids: list[int] = []
        for part in self._split.split(text):
            if part in self._specials:
                ids.append(self._specials[part])
            elif part:
                ids += [self._ids.get(piece, self.unk_id) for piece in self._sp.encode(part, out_type=str)]
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens and language codes (as ``skip_special_tokens=True``)."""
        pieces = [self._pieces[i] for i in ids if i not in self._special_ids and i in self._pieces]
        text = self._sp.decode_pieces(pieces).strip()
        return clean_up(text) if self.clean_up else text
