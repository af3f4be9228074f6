"""Thin torch modules that give the Transformer the exact signatures of the exported graphs.

They only re-wire the existing modules (``model/`` stays the single source of the maths): the encoder graph
returns the cross-attention K/V of every decoder layer, stacked; the decoder-step graph takes per-row positions,
a per-row self-attention mask and a ``reorder`` index, so that rows with different histories can share a batch
and the beam reorder happens by a Gather inside the graph instead of on the host.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nmtserve.model.transformer import Transformer


class EncoderGraph(nn.Module):
    """source_ids [B, S] -> cross_keys, cross_values [L, B, H, S, Dh]; the padding mask comes from pad ids."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, source_ids: Tensor) -> tuple[Tensor, Tensor]:
        pairs = self.model.cross_kv(self.model.encode(source_ids))
        return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])


class DecoderStepGraph(nn.Module):
    """One decoding step for R rows; returns full log-probs (TopK is appended to the ONNX graph afterwards).

    ``reorder[r]`` names the cache row that output row r extends (-1: a row with no history yet, for sentences
    joining a running batch); the gathered cache grows by one slot that is valid for every row.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        eos = torch.zeros(model.config.vocab_size, dtype=torch.bool)
        eos[model.config.eos_id] = True
        self.register_buffer("eos_column", eos, persistent=False)

    def forward(
        self,
        token_ids: Tensor,
        positions: Tensor,
        reorder: Tensor,
        self_keys: Tensor,
        self_values: Tensor,
        self_mask: Tensor,
        cross_keys: Tensor,
        cross_values: Tensor,
        source_mask: Tensor,
        forbid_eos: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        has_history = reorder >= 0
        index = reorder.clamp(min=0)
        # self_keys[layer, index] per layer becomes one GatherND: a single copy of each layer's rows, where
        # index_select on the stacked cache followed by a per-layer select would copy the whole cache twice.
        layer_of_row = torch.zeros_like(index)
        past_mask = self_mask.index_select(0, index) & has_history[:, None]
        mask = torch.cat([past_mask, torch.ones_like(has_history)[:, None]], dim=1)  # [R, T + 1]

        x = self.model.embed(token_ids[:, None], positions[:, None])
        self_attention_mask, cross_attention_mask = mask[:, None, None, :], source_mask[:, None, None, :]
        new_keys, new_values = [], []
        for i, layer in enumerate(self.model.decoder_layers):
            x, (keys, values) = layer(
                x,
                (self_keys[layer_of_row + i, index], self_values[layer_of_row + i, index]),
                (cross_keys[i], cross_values[i]),
                self_attention_mask,
                cross_attention_mask,
            )
            new_keys.append(keys)
            new_values.append(values)
        logits = (self.model.decoder_norm(x) @ self.model.embedding.weight.t())[:, 0]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        log_probs = log_probs.masked_fill(forbid_eos[:, None] & self.eos_column[None, :], float("-inf"))
        return log_probs, torch.stack(new_keys), torch.stack(new_values), mask
