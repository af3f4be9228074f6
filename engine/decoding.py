"""Decoding options and results, shared by the PyTorch reference beam search and the ONNX engine.

One definition for both, so that a request decoded by the engine and by the reference means the same thing.
Torch-free on purpose: the serving engine imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 4
    length_penalty: float = 1.0
    max_length: int = 256  # absolute cap on generated tokens, EOS included
    max_length_ratio: float = 2.0  # and a cap relative to the source: ratio * source_len + offset
    max_length_offset: int = 10
    min_length: int = 1  # EOS is not allowed before this many tokens
    num_hypotheses: int = 1
    return_scores: bool = True  # False: hypotheses carry score/log_prob None (cheaper to serialise, nothing else)

    def max_length_for(self, source_len: int) -> int:
        return max(1, min(self.max_length, int(self.max_length_ratio * source_len) + self.max_length_offset))

    def validate(self, vocab_size: int) -> None:
        """Reject options the search cannot honour, before any work is queued."""
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, not {self.beam_size}")
        if not 1 <= self.num_hypotheses <= self.beam_size:
            raise ValueError(f"num_hypotheses must be in 1..beam_size ({self.beam_size}), not {self.num_hypotheses}")
        if 2 * self.beam_size > vocab_size:
            raise ValueError(f"beam_size {self.beam_size} needs 2 x beam <= vocabulary size {vocab_size}")
        if self.max_length < 1 or self.min_length < 0:
            raise ValueError("max_length must be >= 1 and min_length >= 0")

    @property
    def candidates_per_row(self) -> int:
        """TopK size the step graph must return for this sentence: 2K, or 1 for greedy (beam 1 needs no refill)."""
        return 1 if self.beam_size == 1 else 2 * self.beam_size


@dataclass(frozen=True)
class Hypothesis:
    token_ids: list[int]  # without BOS and EOS
    score: float | None  # log-probability divided by length ** length_penalty (length counts EOS)
    log_prob: float | None
    text: str | None = None  # filled by Engine.translate
