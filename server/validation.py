"""Turning a ``TranslateRequest`` into engine input, or a clear INVALID_ARGUMENT before any work is queued.

Texts are refused, not silently truncated, when they exceed ``max_input_tokens``: a translation of half a text
that looks complete is worse than an error the client can act on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from nmtserve.model.tokenizer import Tokenizer
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.server.config import ServerConfig
from nmtserve.server.engine import DecodingOptions


class RequestError(Exception):
    """A request-scoped failure with the gRPC status code to answer it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


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
    """The request's options with unset fields (or 0) taken from the server's defaults, checked against its limits."""
    beam_size = options.beam_size or config.beam_size
    if beam_size > config.max_beam_size:
        raise invalid(f"options.beam_size {beam_size} exceeds this server's limit of {config.max_beam_size}")
    num_hypotheses = options.num_hypotheses or min(config.num_hypotheses, beam_size)
    if num_hypotheses > beam_size:
        raise invalid(f"options.num_hypotheses {num_hypotheses} exceeds options.beam_size {beam_size}")
    max_length = options.max_length or config.max_length
    if max_length > config.max_output_length:
        raise invalid(f"options.max_length {max_length} exceeds this server's limit of {config.max_output_length}")
    length_penalty = options.length_penalty if options.HasField("length_penalty") else config.length_penalty
    if not math.isfinite(length_penalty) or length_penalty < 0:
        raise invalid(f"options.length_penalty must be a finite number >= 0, not {length_penalty}")
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


def encode_texts(texts: Sequence[str], tokenizer: Tokenizer, config: ServerConfig) -> list[EncodedText]:
    """Token ids of the non-blank texts (blank ones are answered without the engine)."""
    if not texts:
        raise invalid("texts is empty: send at least one text")
    if len(texts) > config.max_texts_per_request:
        raise invalid(f"{len(texts)} texts in one request; the limit is {config.max_texts_per_request}")
    indices = [i for i, text in enumerate(texts) if text.strip()]
    encoded = tokenizer.encode_batch([texts[i] for i in indices]) if indices else []
    out = []
    for i, ids in zip(indices, encoded, strict=True):
        if len(ids) > config.max_input_tokens:
            raise invalid(
                f"text {i} has {len(ids)} tokens; the limit is {config.max_input_tokens} (split long texts into "
                "sentences)"
            )
        out.append(EncodedText(i, [*ids, tokenizer.eos_id]))
    return out
