"""The tokenizers of BART and mBART models, torch-free: ``tokenizer.json`` read by the ``tokenizers`` library.

``save_pretrained`` of ``BartTokenizerFast`` (byte-level BPE), ``MBartTokenizerFast`` and ``MBart50TokenizerFast``
(SentencePiece-derived Unigram with language codes such as ``de_DE``) writes the whole pipeline (normaliser,
pre-tokeniser, model, decoder) into ``tokenizer.json``; the ``tokenizers`` library runs it exactly as transformers
does, so no BPE or Unigram is re-implemented here. What ``tokenizer.json`` fixes at save time and a server must
choose per request is the special tokens around a source, so those are added here, by the family's rule:

- ``bart``: ``<s> X </s>``;
- ``mbart`` (mBART-cc25 and its fine-tunes, ``MBartTokenizer``): ``X </s> src_lang``;
- ``mbart50`` (``MBart50Tokenizer``): ``src_lang X </s>``.

Decoding skips special tokens (language codes included) and applies transformers' clean-up of spaces before
punctuation where the tokenizer's config asks for it. Tests check the ids against transformers on thousands of
strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from nmtserve.engine.text_cleanup import clean_up, clean_up_setting

TOKENIZER_JSON, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
FILES = (TOKENIZER_JSON,)
TEMPLATES = ("bart", "mbart", "mbart50")
# mBART's language codes (``en_XX``, ``de_DE``, ``zh_CN``): a special added token of this shape
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}_[A-Z]{2}$")
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


class TokenizerFileError(ValueError):
    """``tokenizer.json`` is missing or does not hold what a BART / mBART tokenizer needs."""


def read_backend(path: Path) -> BackendTokenizer:
    if not Path(path).is_file():
        raise TokenizerFileError(f"{path}: tokenizer file {TOKENIZER_JSON} is missing")
    try:
        return BackendTokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a plain Exception for malformed files
        raise TokenizerFileError(f"{path}: not a tokenizers file: {str(error).splitlines()[0]}") from error


def language_codes(backend: BackendTokenizer) -> list[str]:
    """The special added tokens shaped like mBART's language codes, in id order."""
    added = backend.get_added_tokens_decoder()
    return [token.content for _, token in sorted(added.items()) if token.special and LANGUAGE_CODE.match(token.content)]


def template_of(directory: Path) -> str:
    """The family rule for the special tokens, from ``tokenizer_config.json``'s ``tokenizer_class``."""
    path = Path(directory) / TOKENIZER_CONFIG
    name = ""
    if path.is_file():
        try:
            name = str(json.loads(path.read_text(encoding="utf-8")).get("tokenizer_class") or "")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TokenizerFileError(f"{path}: not valid JSON: {error}") from error
    if name.startswith("MBart50"):
        return "mbart50"
    if name.startswith("MBart"):
        return "mbart"
    if name:
        return "bart"
    return _template_of_post_processor(Path(directory) / TOKENIZER_JSON)


def _template_of_post_processor(path: Path) -> str:
    """Without a ``tokenizer_class`` (older uploads): where the saved template puts a language code."""
    try:
        processor = json.loads(path.read_text(encoding="utf-8")).get("post_processor") or {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "bart"
    single = processor.get("single") or []
    codes = [bool(LANGUAGE_CODE.match(item.get("SpecialToken", {}).get("id", ""))) for item in single]
    if codes and codes[0]:
        return "mbart50"
    if codes and codes[-1]:
        return "mbart"
    return "bart"


class BartTokenizer:
    """Text <-> ids of a BART or mBART model; the interface of ``Tokenizer`` plus language codes.

    ``encode`` returns the source without its final EOS (the engine appends that, as for every model) and without
    language codes; ``request_languages`` says what a request's languages add before the text, after its EOS
    (mBART-cc25's source code) and as the forced first target tokens.
    """

    kind = "bart"

    def __init__(self, directory: Path | str, spec: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        spec = spec or {}
        self.template = spec.get("template") or template_of(self.directory)
        if self.template not in TEMPLATES:
            raise TokenizerFileError(f"tokenizer template must be one of {TEMPLATES}, not {self.template!r}")
        self._backend = read_backend(self.directory / TOKENIZER_JSON)
        self._backend.no_padding()
        self._backend.no_truncation()
        ids = {token: self._backend.token_to_id(token) for token in (BOS, EOS, PAD, UNK)}
        missing = [token for token, i in ids.items() if i is None]
        if missing:
            raise TokenizerFileError(f"{self.directory / TOKENIZER_JSON}: lacks the special tokens {missing}")
        found = {token: int(i) for token, i in ids.items() if i is not None}
        self.bos_token_id, self.eos_id, self.pad_id, self.unk_id = (found[t] for t in (BOS, EOS, PAD, UNK))
        self.bos_id = self.bos_token_id
        self.languages = language_codes(self._backend) if self.template != "bart" else []
        self.default_source_language = spec.get("source_language") or ("en_XX" if "en_XX" in self.languages else "")
        if self.languages and self.default_source_language not in self.languages:
            self.default_source_language = self.languages[0]
        self.default_target_language = spec.get("target_language") or ""
        self.forced_bos_id: int | None = spec.get("forced_bos_id")
        wanted = spec.get("clean_up_tokenization_spaces", clean_up_setting(self.directory))
        self.clean_up = bool(wanted) and type(self._backend.model).__name__ != "BPE"  # as transformers 5 (text_cleanup)
        self._specials = {i for i, token in self._backend.get_added_tokens_decoder().items() if token.special}

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def language_id(self, code: str) -> int:
        """The id of language code ``code`` (``de_DE``); KeyError for a code the model lacks."""
        found = self._backend.token_to_id(code) if code in self.languages else None
        if found is None:
            raise KeyError(code)
        return int(found)

    def _code(self, field: str, value: str | None, default: str) -> str:
        code = value or default
        if not code:
            raise ValueError(f"{field} is required by this multilingual model; one of: {', '.join(self.languages)}")
        if code not in self.languages:
            raise ValueError(f"{field} {code!r} is not one of the model's: {', '.join(self.languages)}")
        return code

    def request_languages(
        self, source_language: str | None = None, target_language: str | None = None
    ) -> tuple[list[int], list[int], list[int]]:
        """What a request's languages add: ids before the text, ids after the final EOS, and the target tokens
        forced first (as ``generate()`` forces them); ValueError naming the field for a code the model lacks.

        - BART: no languages (any code is refused); ``forced_bos_token_id`` (``<s>`` in facebook/bart-large) forced.
        - mBART-50: ``src_lang X </s>``, the target language forced first; the defaults are the tokenizer's saved
          ``src_lang`` / ``tgt_lang``.
        - mBART-cc25 fine-tunes: ``X </s> src_lang``; the target is the model's own (its decoder starts from that
          code, ``decoder_start_token_id``), so ``target_language`` may only name it.
        """
        if self.template == "bart":
            for field, value in (("source_language", source_language), ("target_language", target_language)):
                if value:
                    raise ValueError(f"{field} {value!r}: this BART model has no languages (leave it empty)")
        own = self.default_target_language
        if self.template == "mbart" and target_language and target_language != own:
            raise ValueError(
                f"target_language {target_language!r}: this mBART model translates into {own or 'its one language'} "
                f"only (valid: {own!r} or empty)"
            )
        before, after = self.source_affixes(source_language)
        return before, after, self.target_prefix(target_language)

    def source_affixes(self, source_language: str | None = None) -> tuple[list[int], list[int]]:
        """Ids before the text and after its final EOS for ``source_language`` (the default one when empty)."""
        if self.template == "bart":
            return [], []
        source = self.language_id(self._code("source_language", source_language, self.default_source_language))
        return ([source], []) if self.template == "mbart50" else ([], [source])

    def source_ids(self, text: str, source_language: str | None = None) -> list[int]:
        """The whole encoder input, exactly as transformers' tokenizer (``src_lang`` set) produces it."""
        before, after = self.source_affixes(source_language)
        return [*before, *self.encode(text), self.eos_id, *after]

    def target_prefix(self, target_language: str | None = None) -> list[int]:
        """The target tokens forced first for ``target_language`` (see ``request_languages``)."""
        if self.template == "mbart50":
            return [self.language_id(self._code("target_language", target_language, self.default_target_language))]
        return [] if self.forced_bos_id is None else [self.forced_bos_id]

    def id_to_token(self, token_id: int) -> str:
        return self._backend.id_to_token(token_id) or UNK

    def token_to_id(self, token: str) -> int:
        found = self._backend.token_to_id(token)
        return self.unk_id if found is None else int(found)

    def text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The text's own ids, with no special tokens around them. One text at a time: ``encode_batch`` fans out
        to a Rust thread pool that takes every core from the engine threads for a few microseconds of work."""
        return [self._backend.encode(text, add_special_tokens=False).ids for text in texts]

    def pieces(self, text: str) -> list[str]:
        return self._backend.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        """Source ids without the final EOS and without language codes (``request_languages`` adds those): BART's
        ``<s>``, then the text."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        start = [self.bos_token_id] if self.template == "bart" else []
        return [[*start, *ids] for ids in self.text_ids(texts)]

    def decode(self, ids: Sequence[int]) -> str:
        text = self._backend.decode([i for i in ids if i not in self._specials], skip_special_tokens=True)
        return clean_up(text) if self.clean_up else text
