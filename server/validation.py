"""Turning a ``TranslateRequest`` into engine input, or a clear INVALID_ARGUMENT before any work is queued.

Every message names the offending field (``texts[3]``, ``options.beam_size``) and the limit with its setting
name, and never quotes the text itself (request texts stay out of logs and error messages). Checks, in order:
- ``texts``: at least one, at most ``max_texts_per_request``;
- each text: at most ``max_input_bytes`` UTF-8 bytes (checked first, so an oversized text is never tokenised),
  no control characters (Unicode category Cc other than tab, line feed and carriage return: NUL, escape
  sequences, C1 controls), not blank when ``reject_blank_texts``, and at most ``max_input_tokens`` tokens. Blank
  (``is_blank``) is whitespace and invisible format characters only: a lone zero-width space is answered with an
  empty translation, not given to the model. Other unusual Unicode (format characters among other text, combining
  marks, emoji, private-use and unassigned code points) is translated like any text: the tokenizer maps what it
  does not know to its unknown piece. Invalid UTF-8 never reaches this module: the request fails to parse and
  ``service.py`` answers INVALID_ARGUMENT.
- options: see ``resolve_options``.

Texts are refused, not silently truncated, when they exceed ``max_input_tokens``: a translation of half a text
that looks complete is worse than an error the client can act on.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from nmtserve.engine import DecodingOptions
from nmtserve.engine.tokenizer import Tokenizer
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.config import ServerConfig


class RequestError(Exception):
    """A request-scoped failure with the gRPC status code to answer it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class Overloaded(RequestError):
    """RESOURCE_EXHAUSTED (or ``code``: UNAVAILABLE while a model loads) with a retry hint (trailing metadata
    ``grpc-retry-pushback-ms``)."""

    def __init__(
        self, message: str, retry_after_s: float, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED
    ) -> None:
        super().__init__(code, message)
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((RETRY_PUSHBACK_KEY, str(max(1, round(self.retry_after_s * 1000)))),)


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def default_options(config: ServerConfig) -> DecodingOptions:
    return DecodingOptions(
        beam_size=config.beam_size,
        length_penalty=config.length_penalty,
        max_length=config.max_length,
        num_hypotheses=config.num_hypotheses,
        return_scores=config.return_scores,
    )


def resolve_options(options: pb.DecodingOptions, config: ServerConfig, vocab_size: int) -> DecodingOptions:
    """The request's options with unset fields (or 0) taken from the server's defaults, checked against its limits.

    In proto3 an integer field set to 0 is indistinguishable from an unset one, so ``beam_size``, ``max_length``
    and ``num_hypotheses`` of 0 mean "the server's default" (the v1 contract), never an error.
    """
    beam_size = options.beam_size or config.beam_size
    if beam_size > config.max_beam_size:
        raise invalid(
            f"options.beam_size {beam_size} exceeds this server's limit of {config.max_beam_size} (max_beam_size)"
        )
    num_hypotheses = options.num_hypotheses or min(config.num_hypotheses, beam_size)
    if num_hypotheses > beam_size:
        raise invalid(f"options.num_hypotheses {num_hypotheses} exceeds options.beam_size {beam_size}")
    max_length = options.max_length or config.max_length
    if max_length > config.max_output_length:
        raise invalid(
            f"options.max_length {max_length} exceeds this server's limit of {config.max_output_length} "
            "(max_output_length)"
        )
    length_penalty = options.length_penalty if options.HasField("length_penalty") else config.length_penalty
    if not math.isfinite(length_penalty) or length_penalty < 0:
        raise invalid(f"options.length_penalty must be a finite number >= 0, not {length_penalty}")
    if length_penalty > config.max_length_penalty:
        raise invalid(
            f"options.length_penalty {length_penalty:g} exceeds this server's limit of {config.max_length_penalty:g} "
            "(max_length_penalty)"
        )
    return_scores = options.return_scores if options.HasField("return_scores") else config.return_scores
    resolved = DecodingOptions(
        beam_size=beam_size,
        length_penalty=length_penalty,
        max_length=max_length,
        num_hypotheses=num_hypotheses,
        return_scores=return_scores,
    )
    try:
        resolved.validate(vocab_size)
    except ValueError as error:
        raise invalid(f"options: {error}") from None
    return resolved


@dataclass(frozen=True)
class EncodedText:
    index: int
    source_ids: list[int]  # ending with EOS


ALLOWED_CONTROLS = frozenset("\t\n\r")
MAX_REQUEST_ID_CHARS = 256  # echoed in every answer on the stream: a large one would be an amplifier
# Unicode category Cc is exactly U+0000..U+001F and U+007F..U+009F; one compiled scan runs in C, where a loop over
# unicodedata.category took ~0.5 s of event loop per 2 MB request.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
ENCODE_CHUNK = 16  # texts tokenised at a time: a text over the token limit stops the work within one chunk


def control_character(text: str) -> tuple[int, str] | None:
    """(offset, character) of the first control character that a text may not contain, or None."""
    found = _CONTROL.search(text)
    return None if found is None else (found.start(), found.group())


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise invalid(f"request_id has {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}")


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def check_sizes(texts: Sequence[str], config: ServerConfig) -> int:
    """The checks that cost nothing (count, then each text's UTF-8 size); the request's text bytes."""
    if not texts:
        raise invalid("texts is empty: send at least one text")
    if len(texts) > config.max_texts_per_request:
        raise invalid(
            f"texts has {len(texts)} entries; the limit is {config.max_texts_per_request} (max_texts_per_request)"
        )
    total = 0
    for i, text in enumerate(texts):
        size = utf8_size(text)  # in C: ~1 ms for the largest message
        if size > config.max_input_bytes:
            raise invalid(
                f"texts[{i}] is {size} bytes (UTF-8); the limit is {config.max_input_bytes} (max_input_bytes)"
            )
        total += size
    return total


def check_characters(texts: Sequence[str]) -> None:
    """INVALID_ARGUMENT naming the first control character (other than tab, line feed, carriage return) and where."""
    for i, text in enumerate(texts):
        found = control_character(text)
        if found is not None:
            offset, char = found
            raise invalid(
                f"texts[{i}] contains the control character U+{ord(char):04X} at offset {offset}; control "
                "characters other than tab, line feed and carriage return are not allowed"
            )


def is_blank(text: str) -> bool:
    """Nothing to translate: only whitespace and invisible format characters (Unicode category Cf: zero-width
    spaces and joiners, the BOM, bidi marks, soft hyphens). Given to the model as a text (a lone U+200B
    from a web page), it came back as an invented word; documents keep every piece without a letter anyway."""
    return all(char.isspace() or unicodedata.category(char) == "Cf" for char in text)


def check_texts(texts: Sequence[str], config: ServerConfig) -> list[int]:
    """Indices of the texts to translate (non-blank), after the checks that need no tokenizer: sizes of all the
    texts first, then their characters."""
    check_sizes(texts, config)
    check_characters(texts)
    indices = []
    for i, text in enumerate(texts):
        if not is_blank(text):
            indices.append(i)
        elif config.reject_blank_texts:
            raise invalid(f"texts[{i}] is blank; this server refuses blank texts (reject_blank_texts)")
    return indices


@dataclass(frozen=True)
class LanguagePrefixes:
    """What a request's languages add to each of its sentences: ids before the source tokens (Marian's ``>>xx<<``,
    M2M-100/NLLB's source code) and target tokens the decoder is forced to start with (M2M-100/NLLB's target code).
    The target prefix travels with each sentence, so sentences for different target languages share a batch."""

    source: tuple[int, ...] = ()
    target: tuple[int, ...] = ()
    source_suffix: tuple[int, ...] = ()  # after the source's EOS (mBART-cc25's source language code)


def _language_code(field: str, value: str, default: str, languages: Sequence[str]) -> str:
    code = value or default
    if not code:
        raise invalid(f"{field} is required by this multilingual model; one of: {', '.join(languages)}")
    if code not in languages:
        raise invalid(f"{field} {code!r} is not one of the model's: {', '.join(languages)}")
    return code


def language_prefixes(
    source_language: str, target_language: str, tokenizer: Tokenizer, pair: dict[str, str]
) -> LanguagePrefixes:
    """The prefixes a request's ``source_language`` / ``target_language`` call for, or INVALID_ARGUMENT.

    - A tokenizer that forces the target language (``forces_target_language``: M2M-100, NLLB) needs both codes,
      each either in the request or as the manifest's default (``pair``); the source code opens the source and the
      target code is the forced first target token.
    - Otherwise a tokenizer that lists languages (a multilingual OPUS-MT model's ``>>xx<<`` codes) takes any of them
      as ``target_language``, put before the source; it needs no source code, so ``source_language`` is accepted
      unchecked.
    - A single-pair model accepts only its own pair (``pair``, from the manifest), so that a request for another
      language fails instead of silently getting the model's one.
    """
    own_rules = getattr(tokenizer, "request_languages", None)
    if own_rules is not None:  # the tokenizer knows its family's rules (BART, mBART: engine/bart_tokenizer.py)
        try:
            before, after, forced = own_rules(source_language, target_language)
        except ValueError as error:
            raise invalid(str(error)) from None
        return LanguagePrefixes(source=tuple(before), target=tuple(forced), source_suffix=tuple(after))
    languages: list[str] = getattr(tokenizer, "languages", [])
    language_id = getattr(tokenizer, "language_id", None)
    if languages and language_id is not None and getattr(tokenizer, "forces_target_language", False):
        source = _language_code("source_language", source_language, pair.get("source", ""), languages)
        target = _language_code("target_language", target_language, pair.get("target", ""), languages)
        return LanguagePrefixes(source=(language_id(source),), target=(language_id(target),))
    if languages and language_id is not None:
        if not target_language:
            return LanguagePrefixes()
        if target_language not in languages:
            raise invalid(f"target_language {target_language!r} is not one of the model's: {', '.join(languages)}")
        return LanguagePrefixes(source=(language_id(target_language),))
    for field, value in (("source_language", source_language), ("target_language", target_language)):
        own = pair.get(field.split("_")[0], "")
        if value and value != own:
            raise invalid(
                f"{field} {value!r}: this model translates {pair.get('source', '?')}->{pair.get('target', '?')} only "
                f"(valid: {own!r} or empty)"
            )
    return LanguagePrefixes()


def encode_texts(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    config: ServerConfig,
    prefix: Sequence[int] = (),
    suffix: Sequence[int] = (),
) -> list[EncodedText]:
    """Token ids of the non-blank texts (blank ones are answered without the engine) after ``prefix``, tokenised a
    chunk at a time so that a text over ``max_input_tokens`` spares the tokenising of the texts after it."""
    indices = check_texts(texts, config)
    out = []
    for start in range(0, len(indices), ENCODE_CHUNK):
        chunk = indices[start : start + ENCODE_CHUNK]
        for i, ids in zip(chunk, tokenizer.encode_batch([texts[i] for i in chunk]), strict=True):
            if len(ids) > config.max_input_tokens:
                raise invalid(
                    f"texts[{i}] has {len(ids)} tokens; the limit is {config.max_input_tokens} (max_input_tokens; "
                    "split long texts into sentences)"
                )
            out.append(EncodedText(i, [*prefix, *ids, tokenizer.eos_id, *suffix]))
    return out
