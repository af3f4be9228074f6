"""The thin torch module that gives the encoder the exact signature of its exported graph.

It only re-wires the existing modules (``model/`` stays the single source of the maths): the encoder graph
returns the cross-attention K/V of every decoder layer, computed once per source. (The decoder step is not
traced: ``step_graph`` writes it around onnxruntime's fused attention.)
"""

from __future__ import annotations

from torch import Tensor, nn

from nmtserve.model.transformer import Transformer


class EncoderGraph(nn.Module):
    """source_ids [B, S] -> cross keys and values of every decoder layer, each [B, H, S, Dh], layer-major."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, source_ids: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for pair in self.model.cross_kv(self.model.encode(source_ids)) for t in pair)
