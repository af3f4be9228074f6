"""The tokenizer of NLLB-200 models, torch-free, read from the ``tokenizer.json`` that transformers saves.

NLLB's ids are SentencePiece's shifted by fairseq's offset (``<s> <pad> </s> <unk>`` first), with the language
codes (``deu_Latn``) and ``<mask>`` as added tokens. transformers' ``NllbTokenizer`` is a ``tokenizers`` model,
and its ``tokenizer.json`` holds all of that, so this module reads it with the same well-kept library instead of
re-deriving the offset by hand: the pieces and ids are transformers' by construction. A source is
``[src_code] pieces [</s>]`` (transformers' default, ``legacy_behaviour=False``; the legacy
``pieces [</s>] [src_code]`` is refused); the target code is the decoder's forced first token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from nmtserve.engine.m2m100_tokenizer import TokenizerFileError, read_json

TOKENIZER_JSON, CONFIG = "tokenizer.json", "tokenizer_config.json"
FILES = (TOKENIZER_JSON, CONFIG)
BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")  # FLORES-200 codes: language_Script


def language_codes(config: dict, added: Sequence[str]) -> list[str]:
    """The codes the tokenizer config lists (``extra_special_tokens``, before transformers 5
    ``additional_special_tokens``), else the added tokens that look like FLORES-200 codes."""
    listed = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(listed, dict):  # some versions save a name -> token mapping
        listed = list(listed.values())
    listed = [t if isinstance(t, str) else t.get("content", "") for t in listed]
    return [t for t in listed if CODE.match(t)] or [t for t in added if CODE.match(t)]


def load_tokenizer_json(path: Path) -> HFTokenizer:
    if not path.is_file():
        raise TokenizerFileError(f"{path}: NLLB tokenizer file is missing")
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on malformed files
        raise TokenizerFileError(f"{path}: not a tokenizers file: {str(error).splitlines()[0]}") from error


class NllbTokenizer:
    """Text <-> NLLB ids; the interface of ``Tokenizer`` plus the language codes (``language_id``)."""

    kind = "nllb"
    forces_target_language = True  # the target code is the decoder's forced first token, not part of the source

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._tokenizer = load_tokenizer_json(self.directory / TOKENIZER_JSON)
        config = read_json(self.directory / CONFIG, "tokenizer config")
        if config.get("legacy_behaviour"):
            raise TokenizerFileError(
                f"{self.directory / CONFIG}: legacy_behaviour (source code after EOS) is not supported"
            )
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        missing = [piece for piece in (BOS, PAD, EOS, UNK) if piece not in vocab]
        if missing:
            raise TokenizerFileError(
                f"{self.directory / TOKENIZER_JSON}: vocabulary lacks the special pieces {missing}"
            )
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = (vocab[p] for p in (BOS, PAD, EOS, UNK))
        added = [token.content for token in self._tokenizer.get_added_tokens_decoder().values()]
        self.languages = [code for code in language_codes(config, added) if code in vocab]
        if not self.languages:
            raise TokenizerFileError(f"{self.directory / CONFIG}: lists no language codes")
        self._language_ids = {code: vocab[code] for code in self.languages}
        self._vocab_size = max(vocab.values()) + 1

    def language_id(self, code: str) -> int:
        """The id of the code's token: the first source token, or the forced first target token."""
        return self._language_ids[code]

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer uses (NLLB-200's embedding has 2 rows more, which no text maps to)."""
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Ids without the language code and the final EOS (the caller adds them, as for every model)."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """One text at a time (as ``BartTokenizer.text_ids``): no Rust thread pool on the event loop."""
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens and language codes (as ``skip_special_tokens=True``)."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)


def tokenizer_ids(directory: Path) -> int:
    """Ids the tokenizer uses: the model's vocabulary must have at least these."""
    return NllbTokenizer(directory).vocab_size
