"""The learning-rate schedule of Section 5.3."""

from __future__ import annotations


def transformer_lr(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5): linear warm-up, then 1/sqrt decay."""
    step = max(step, 1)
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)
