"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), written to be read beside the paper.

Section numbers in comments refer to the paper. Every attention call takes its keys and values as explicit
tensors instead of hiding them inside a monolithic ``nn.Transformer``: the ONNX export splits this model into
an encoder (which also projects the cross-attention K/V of every decoder layer once per source) and a
one-step decoder that carries a self-attention K/V cache. Training uses the same modules on whole sequences.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = list[tuple[Tensor, Tensor]]  # one (keys, values) pair per decoder layer, each [batch, heads, time, d_head]


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters and special token ids; saved as JSON next to the weights."""

    vocab_size: int = 8000
    d_model: int = 512
    n_heads: int = 8
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    max_positions: int = 1024
    pre_norm: bool = False  # the paper is post-norm; pre-norm trains more stably when deep
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    # The decoder's first input; None: bos_id (Marian converts with bos_id = its pad id, M2M-100/NLLB start from EOS).
    decoder_start_id: int | None = None
    # What the Hugging Face families differ in; every default is the 2017 model above.
    activation: str = "relu"  # relu | gelu (exact, erf) | swish (SiLU)
    # sinusoidal: the paper's interleaved sin/cos; sinusoidal-halves: sin | cos (Marian); sinusoidal-fairseq: sin | cos
    # with fairseq's frequencies (M2M-100, NLLB: see ``sinusoidal_positions``)
    positions: str = "sinusoidal"
    position_offset: int = 0  # position p reads row p + offset of the layout's table (M2M-100/NLLB: pad_id + 1)
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model) (Section 3.4)
    final_logits_bias: bool = False  # a per-token bias added to the output logits (Marian, BART)
    # BART / mBART: a LayerNorm right after embedding + position, in the encoder and in the decoder.
    layernorm_embedding: bool = False

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def start_id(self) -> int:
        """The token the decoder starts from: ``decoder_start_id``, or ``bos_id`` when that is unset."""
        return self.bos_id if self.decoder_start_id is None else self.decoder_start_id

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Refuse option values the model cannot build, naming the field."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {self.activation!r}")
        if self.positions not in POSITION_LAYOUTS:
            raise ValueError(f"positions must be one of {POSITION_LAYOUTS}, not {self.positions!r}")
        if self.position_offset < 0:
            raise ValueError(f"position_offset must be >= 0, not {self.position_offset}")
        if not 0 <= self.start_id < self.vocab_size:
            raise ValueError(f"decoder_start_id {self.start_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")

    @classmethod
    def from_dict(cls, values: dict) -> TransformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**values)


PRESETS: dict[str, TransformerConfig] = {
    # Table 3 of the paper, "base" and "big".
    "base": TransformerConfig(),
    "big": TransformerConfig(d_model=1024, n_heads=16, d_ff=4096, dropout=0.3),
    # The demo model: sized to train to a useful BLEU in about two hours on two CPU cores.
    "small": TransformerConfig(d_model=256, n_heads=4, n_encoder_layers=4, n_decoder_layers=3, d_ff=1024),
    # For tests: trains in seconds.
    "tiny": TransformerConfig(
        vocab_size=64, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64, dropout=0.0
    ),
}


ACTIVATIONS: dict[str, Callable[..., Tensor]] = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu}
POSITION_LAYOUTS = ("sinusoidal", "sinusoidal-halves", "sinusoidal-fairseq", "learned")
# BART's learned position tables have two rows before position 0 (a fairseq legacy: ids of padding and start), so
# row p + 2 holds position p (``position_offset`` 2); the tables keep those rows, as the converted checkpoints do.
LEARNED_POSITION_OFFSET = 2


def fairseq_positions(rows: int, d_model: int) -> Tensor:
    """fairseq's (and so M2M-100's and NLLB's) table: sines then cosines of pos * exp(-i ln(10000) / (d/2 - 1)).

    Its frequencies differ from the paper's (the exponent divides by half the width minus one) and an odd width
    ends with a zero column. Computed in float32 exactly as transformers' ``M2M100SinusoidalPositionalEmbedding``
    computes it, so that the table is bit-identical to the one the model was trained and is checked with (float64
    would differ by up to 1e-4 at position 1000). Its zero row at the padding index is never read: positions start
    after it (``position_offset``).
    """
    half = d_model // 2
    frequency = torch.exp(torch.arange(half, dtype=torch.int64).float() * -(math.log(10000) / (half - 1)))
    angle = torch.arange(rows, dtype=torch.int64).float()[:, None] * frequency[None, :]
    table = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)
    if d_model % 2:
        table = torch.cat([table, torch.zeros(rows, 1)], dim=1)
    return table


def sinusoidal_positions(max_positions: int, d_model: int, layout: str = "sinusoidal", offset: int = 0) -> Tensor:
    """Section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    ``sinusoidal-halves`` holds the same values with all sines first and all cosines after them, the layout
    Marian (and so OPUS-MT) was trained with; ``sinusoidal-fairseq`` is ``fairseq_positions``. Row p is the
    layout's position p + ``offset``.
    """
    if layout == "sinusoidal-fairseq":
        return fairseq_positions(max_positions + offset, d_model)[offset:].contiguous()
    position = torch.arange(offset, offset + max_positions, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)[None, :]
    angle = position / torch.pow(10000.0, two_i / d_model)
    table = torch.zeros(max_positions, d_model, dtype=torch.float64)
    if layout == "sinusoidal-halves":
        half = (d_model + 1) // 2
        table[:, :half] = torch.sin(angle)
        table[:, half:] = torch.cos(angle[:, : d_model // 2])
    else:
        table[:, 0::2] = torch.sin(angle)
        table[:, 1::2] = torch.cos(angle)
    return table.float()


def scaled_dot_product_attention(query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
    """Section 3.2.1: softmax(Q K^T / sqrt(d_k)) V. ``mask`` is boolean, True where attending is allowed."""
    scores = query @ keys.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ values


class MultiHeadAttention(nn.Module):
    """Section 3.2.2. Keys and values are projected by ``project_kv`` so that callers can cache them."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.query = nn.Linear(config.d_model, config.d_model)
        self.key = nn.Linear(config.d_model, config.d_model)
        self.value = nn.Linear(config.d_model, config.d_model)
        self.output = nn.Linear(config.d_model, config.d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.n_heads, self.d_head).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split_heads(self.key(x)), self.split_heads(self.value(x))

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        heads = scaled_dot_product_attention(self.split_heads(self.query(x)), keys, values, mask)
        batch, _, time, _ = heads.shape
        return self.output(heads.transpose(1, 2).reshape(batch, time, self.n_heads * self.d_head))


class FeedForward(nn.Module):
    """Section 3.3: FFN(x) = max(0, x W1 + b1) W2 + b2, applied at each position."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.inner = nn.Linear(config.d_model, config.d_ff)
        self.outer = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.dropout(self.activation(self.inner(x))))


class Residual(nn.Module):
    """Section 5.4 / 3.1: LayerNorm(x + Dropout(Sublayer(x))); pre-norm computes x + Dropout(Sublayer(LayerNorm(x)))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm = config.pre_norm

    def forward(self, x: Tensor, sublayer_out: Tensor) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer_out)
        return self.norm(x + self.dropout(sublayer_out))

    def sublayer_input(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x


class EncoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(config)
        self.feed_forward = FeedForward(config)
        self.attention_residual = Residual(config)
        self.feed_forward_residual = Residual(config)

    def forward(self, x: Tensor, source_mask: Tensor) -> Tensor:
        h = self.attention_residual.sublayer_input(x)
        x = self.attention_residual(x, self.self_attention(h, *self.self_attention.project_kv(h), source_mask))
        h = self.feed_forward_residual.sublayer_input(x)
        return self.feed_forward_residual(x, self.feed_forward(h))


class DecoderLayer(nn.Module):
    """Masked self-attention, then encoder-decoder attention over the source, then the FFN (Section 3.1)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(config)
        self.cross_attention = MultiHeadAttention(config)
        self.feed_forward = FeedForward(config)
        self.self_residual = Residual(config)
        self.cross_residual = Residual(config)
        self.feed_forward_residual = Residual(config)

    def forward(
        self,
        x: Tensor,
        self_kv: tuple[Tensor, Tensor] | None,
        cross_kv: tuple[Tensor, Tensor],
        self_mask: Tensor | None,
        source_mask: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``self_kv`` holds the keys/values of earlier positions (None on a full sequence or first step).

        Returns the output and the self-attention keys/values including the new positions: the grown cache.
        """
        h = self.self_residual.sublayer_input(x)
        keys, values = self.self_attention.project_kv(h)
        if self_kv is not None:
            keys, values = torch.cat([self_kv[0], keys], dim=2), torch.cat([self_kv[1], values], dim=2)
        x = self.self_residual(x, self.self_attention(h, keys, values, self_mask))
        h = self.cross_residual.sublayer_input(x)
        x = self.cross_residual(x, self.cross_attention(h, *cross_kv, source_mask))
        h = self.feed_forward_residual.sublayer_input(x)
        return self.feed_forward_residual(x, self.feed_forward(h)), (keys, values)


class Transformer(nn.Module):
    """Encoder-decoder with one embedding matrix shared by source, target and the output projection (3.4)."""

    positions: Tensor  # a buffer (register_buffer below): declared so that type checkers know it is a tensor

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=config.d_model**-0.5)
        if config.positions == "learned":  # trained tables, one per stack (BART, mBART)
            rows = config.max_positions + config.position_offset
            self.encoder_positions = nn.Embedding(rows, config.d_model)
            self.decoder_positions = nn.Embedding(rows, config.d_model)
        else:
            self.register_buffer(
                "positions",
                sinusoidal_positions(config.max_positions, config.d_model, config.positions, config.position_offset),
                persistent=False,
            )
        # BART / mBART normalise the embedded input of each stack; the 2017 model does not.
        self.encoder_embedding_norm = nn.LayerNorm(config.d_model) if config.layernorm_embedding else nn.Identity()
        self.decoder_embedding_norm = nn.LayerNorm(config.d_model) if config.layernorm_embedding else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_decoder_layers))
        # Pre-norm leaves the residual stream un-normalised, so each stack ends with a LayerNorm.
        self.encoder_norm = nn.LayerNorm(config.d_model) if config.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(config.d_model) if config.pre_norm else nn.Identity()
        for module in self.modules():  # Glorot initialisation, as in the reference implementation (tensor2tensor)
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if config.final_logits_bias:  # a trained weight of the converted model, saved with it
            self.register_buffer("final_logits_bias", torch.zeros(config.vocab_size))

    def embed(self, ids: Tensor, first_position: Tensor | int = 0, decoder: bool = False) -> Tensor:
        """Section 3.4: embeddings multiplied by sqrt(d_model), plus the encoding of each position (then BART's
        ``layernorm_embedding``, where the model has one)."""
        positions = torch.arange(ids.size(1), device=ids.device) + first_position
        x = self.embedding(ids) * self.embedding_scale + self.position_table(decoder)[positions]
        norm = self.decoder_embedding_norm if decoder else self.encoder_embedding_norm
        return self.dropout(norm(x))

    def position_table(self, decoder: bool = False) -> Tensor:
        """[max_positions, d_model]: row p encodes position p (a learned table's offset rows skipped)."""
        if self.config.positions == "learned":
            table = self.decoder_positions if decoder else self.encoder_positions
            return table.weight[self.config.position_offset :]
        return self.positions

    @property
    def embedding_scale(self) -> float:
        return math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0

    def output_logits(self, hidden: Tensor) -> Tensor:
        """The output projection through the shared embedding (Section 3.4), plus the converted logits bias."""
        logits = hidden @ self.embedding.weight.t()
        return logits + cast(Tensor, self.final_logits_bias) if self.config.final_logits_bias else logits

    def source_mask(self, source_ids: Tensor) -> Tensor:
        """[batch, 1, 1, source_len], True on real tokens: queries never attend to source padding."""
        return (source_ids != self.config.pad_id)[:, None, None, :]

    def encode(self, source_ids: Tensor) -> Tensor:
        mask = self.source_mask(source_ids)
        x = self.embed(source_ids)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def cross_kv(self, memory: Tensor) -> KVCache:
        """Keys and values of encoder-decoder attention, computed once per source for all decoding steps."""
        layers = cast(list[DecoderLayer], list(self.decoder_layers))  # a ModuleList iterates as plain Modules
        return [layer.cross_attention.project_kv(memory) for layer in layers]

    def decode(
        self,
        target_ids: Tensor,
        cross_kv: KVCache,
        source_mask: Tensor,
        self_cache: KVCache | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Logits for every position of ``target_ids`` that follows ``self_cache`` (if any), and the grown cache.

        With no cache this is teacher-forced decoding of a whole prefix under a causal mask (Section 3.2.3);
        with a cache of length n and one new token it is step n of incremental decoding.
        """
        past = 0 if self_cache is None else self_cache[0][0].size(2)
        steps = target_ids.size(1)
        # Position i may attend to positions <= past + i: masking the future keeps decoding auto-regressive.
        causal = torch.ones(steps, past + steps, dtype=torch.bool, device=target_ids.device).tril(diagonal=past)
        x = self.embed(target_ids, first_position=past, decoder=True)
        new_cache: KVCache = []
        for i, layer in enumerate(self.decoder_layers):
            x, kv = layer(x, None if self_cache is None else self_cache[i], cross_kv[i], causal, source_mask)
            new_cache.append(kv)
        return self.output_logits(self.decoder_norm(x)), new_cache

    def forward(self, source_ids: Tensor, target_in: Tensor) -> Tensor:
        """Teacher-forced logits [batch, target_len, vocab] for training."""
        memory = self.encode(source_ids)
        logits, _ = self.decode(target_in, self.cross_kv(memory), self.source_mask(source_ids))
        return logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
