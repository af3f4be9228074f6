"""Engine results as protobuf messages (detokenisation happens here, on the event loop, not the engine thread)."""

from __future__ import annotations

from collections.abc import Sequence

from nmtserve.engine import Hypothesis
from nmtserve.engine.tokenizer import Tokenizer
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb


def translation(hypotheses: Sequence[Hypothesis], tokenizer: Tokenizer) -> pb.Translation:
    out = pb.Translation()
    for hypothesis in hypotheses:
        message = out.hypotheses.add(text=tokenizer.decode(hypothesis.token_ids))
        if hypothesis.score is not None:
            message.score = hypothesis.score
    return out


def blank_translation(return_scores: bool) -> pb.Translation:
    """The answer to a blank text: one empty hypothesis (score 0), as ``nmtserve translate`` keeps blank lines."""
    hypothesis = pb.Hypothesis(text="")
    if return_scores:
        hypothesis.score = 0.0
    return pb.Translation(hypotheses=[hypothesis])
