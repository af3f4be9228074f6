"""The decoder-step graph written directly in ONNX from the model's weights, around onnxruntime's fused attention.

Why not the traced graph: traced, one decoder step is ~150 small nodes, and attention alone is a batched MatMul
per head, a mask ``Where``, a Softmax, another batched MatMul, transposes and the two ``Concat`` that grow the
cache. onnxruntime's ``com.microsoft.MultiHeadAttention`` does all of that in one kernel: it takes the past K/V
of each layer, appends the new position itself and returns the grown cache (``present``), on CPU and CUDA alike.
Self-attention's Q, K and V come from one [d, 3d] GEMM. Writing the graph by hand, the way CTranslate2's
converters fill a model spec, keeps it short and lets every weight land where the fused kernels want it; the
exporter verifies it against the PyTorch model exactly as it verifies the traced graphs.

Inputs and outputs are those of ``io_names(...)[DECODER_STEP]``; the maths is ``model/transformer.py``'s:
embedding x sqrt(d_model) + sinusoidal position, then per layer self-attention, encoder-decoder attention and the
FFN, each with its residual and LayerNorm (post-norm, or pre-norm with a final norm), then the output projection
through the shared embedding, log-softmax and TopK.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from nmtserve.engine.model_dir import CROSS_KV, DECODER_STEP, SELF_KV, io_names, per_layer
from nmtserve.export.torch_export import OPSET
from nmtserve.model.transformer import Transformer

MS_DOMAIN = "com.microsoft"
IR_VERSION = 10
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which the model uses
SEPARATE_EMBEDDING_MAX = 2**23  # vocabulary x d_model (32 MiB fp32) up to which the input embedding has a [V, d] copy


class _Graph:
    """Accumulates nodes and initializers; ``op`` (one output) and ``ops`` return the output names of a node."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def weight(self, name: str, value: np.ndarray | torch.Tensor) -> str:
        array = value.detach().float().numpy() if isinstance(value, torch.Tensor) else value
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ops(self, op_type: str, inputs: list[str], outputs: int | list[str], **attributes) -> list[str]:
        """Add a node; the names of all its outputs (``outputs``: their names, or how many to name here)."""
        self._count += 1
        names = (
            outputs if isinstance(outputs, list) else [f"{op_type.lower()}_{self._count}_{i}" for i in range(outputs)]
        )
        domain = MS_DOMAIN if op_type == "MultiHeadAttention" else None
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=f"{op_type}_{self._count}", domain=domain, **attributes)
        )
        return names

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attributes) -> str:
        """Add a node of one output; its name."""
        (name,) = self.ops(op_type, inputs, outputs, **attributes)
        return name


def _linear(graph: _Graph, x: str, linear: torch.nn.Linear, name: str) -> str:
    """x @ W^T + b, as onnxruntime fuses it (MatMul then Add of the bias)."""
    weight = graph.weight(f"{name}.weight", linear.weight.t())
    bias = graph.weight(f"{name}.bias", linear.bias)
    return graph.op("Add", [graph.op("MatMul", [x, weight]), bias])


def _layer_norm(graph: _Graph, x: str, norm: torch.nn.LayerNorm, name: str) -> str:
    scale, bias = graph.weight(f"{name}.weight", norm.weight), graph.weight(f"{name}.bias", norm.bias)
    return graph.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=norm.eps)


def _sublayer(graph: _Graph, x: str, residual, name: str, body: Callable[[str], str]) -> str:
    """Section 5.4: LayerNorm(x + body(x)) post-norm, or x + body(LayerNorm(x)) pre-norm (``Residual``'s rule)."""
    if residual.pre_norm:
        return graph.op("Add", [x, body(_layer_norm(graph, x, residual.norm, f"{name}.norm"))])
    return _layer_norm(graph, graph.op("Add", [x, body(x)]), residual.norm, f"{name}.norm")


@dataclass(frozen=True)
class _Shared:
    """Tensors every decoder layer reads: the graph, the masks and two constants."""

    graph: _Graph
    heads: int
    self_mask: str  # int32 [R, T + 1]
    source_mask: str  # int32 [N, S]
    axis_1: str
    flat: str  # the shape [-1, d_model]


def _self_attention(shared: _Shared, attention, scope: str, kv: list[str], h: str) -> str:
    """One QKV GEMM, then fused attention over the past (its grown cache is the ``new_`` output)."""
    g, (keys, values) = shared.graph, kv
    weight = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]).t()
    bias = torch.cat([attention.query.bias, attention.key.bias, attention.value.bias])
    q, k, v = g.ops("Split", [g.op("MatMul", [h, g.weight(f"{scope}.qkv.weight", weight)])], 3, axis=2, num_outputs=3)
    attended = g.ops(
        "MultiHeadAttention",
        [q, k, v, g.weight(f"{scope}.qkv.bias", bias), shared.self_mask, "", keys, values],
        [f"{scope}.out", f"new_{keys}", f"new_{values}"],
        num_heads=shared.heads,
    )[0]
    return _linear(g, attended, attention.output, f"{scope}.output")


def _cross_attention(shared: _Shared, attention, scope: str, kv: list[str], h: str) -> str:
    """Each sentence's K/V serve all its hypotheses: their queries are gathered into [N, W, d] slots."""
    g, (keys, values) = shared.graph, kv
    queries = _linear(g, g.op("Squeeze", [h, shared.axis_1]), attention.query, f"{scope}.query")
    slots = g.op(
        "MultiHeadAttention",
        [g.op("Gather", [queries, "query_rows"]), keys, values, "", shared.source_mask],
        num_heads=shared.heads,
    )
    attended = g.op("Gather", [g.op("Reshape", [slots, shared.flat]), "row_slots"])
    return g.op("Unsqueeze", [_linear(g, attended, attention.output, f"{scope}.output"), shared.axis_1])


def _activation(g: _Graph, x: str, name: str) -> str:
    """The FFN non-linearity in opset-18 ops: Relu, SiLU as x * Sigmoid(x), exact GELU through Erf."""
    if name == "relu":
        return g.op("Relu", [x])
    if name == "swish":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "gelu":
        erf = g.op("Erf", [g.op("Mul", [x, g.weight(f"{x}.rsqrt2", np.array(1 / math.sqrt(2), np.float32))])])
        one, half = g.weight(f"{x}.one", np.array(1, np.float32)), g.weight(f"{x}.half", np.array(0.5, np.float32))
        return g.op("Mul", [g.op("Mul", [x, half]), g.op("Add", [erf, one])])
    raise ValueError(f"no ONNX form for activation {name!r}")


def _feed_forward(shared: _Shared, ffn, scope: str, h: str, activation: str = "relu") -> str:
    inner = _activation(shared.graph, _linear(shared.graph, h, ffn.inner, f"{scope}.inner"), activation)
    return _linear(shared.graph, inner, ffn.outer, f"{scope}.outer")


def build_decoder_step(model: Transformer, path: Path) -> Path:
    """Write the decoder-step graph of ``model`` (eval mode, fp32) to ``path``."""
    config = model.config
    layers, heads = config.n_decoder_layers, config.n_heads
    names = io_names(layers)[DECODER_STEP]
    self_kv, cross_kv = per_layer(SELF_KV, layers), per_layer(CROSS_KV, layers)
    g = _Graph()
    axis_1 = g.weight("axis_1", np.array([1], np.int64))

    # The cache arrives row-aligned (the beam reorder is reorder_cache's job); the new slot is valid for every row.
    new_slot = g.op(
        "Unsqueeze", [g.op("GreaterOrEqual", ["positions", g.weight("zero", np.array(0, np.int64))]), axis_1]
    )
    g.op("Concat", ["self_mask", new_slot], ["new_self_mask"], axis=1)
    self_mask = g.op("Cast", ["new_self_mask"], to=TensorProto.INT32)
    source_mask = g.op("Cast", ["source_mask"], to=TensorProto.INT32)
    flat = g.weight("flat", np.array([-1, config.d_model], np.int64))
    shared = _Shared(g, heads, self_mask, source_mask, axis_1, flat)

    # Section 3.4: embedding x sqrt(d_model) + positional encoding, as [R, 1, d] for the attention kernels.
    # The shared embedding is stored in the output projection's [d, V] layout (a plain weight MatMul, which int8
    # quantization recognises). The input embedding reads a [V, d] copy of it where that copy is small
    # (``SEPARATE_EMBEDDING_MAX`` elements, the demo's 8000 x 256: 8 MB more): onnxruntime's CPU Gather of [d, V]
    # columns took 1.7 ms of a 20 ms step at 128 rows, a row Gather next to nothing (end to end, GPL-3 text:
    # greedy fp32 1.06x, the rest within noise; docs/benchmarks.md). Above it (OPUS-MT's 58k x 512: 119 MB,
    # NLLB-200's 256k x 1024: 1 GB) memory comes first and the columns are gathered.
    projection = g.weight("output_projection", model.embedding.weight.t())
    if model.embedding.weight.numel() <= SEPARATE_EMBEDDING_MAX:
        embedded = g.op("Gather", [g.weight("embedding", model.embedding.weight), "token_ids"])
    else:
        embedded = g.op("Transpose", [g.op("Gather", [projection, "token_ids"], axis=1)], perm=[1, 0])
    scaled = g.op("Mul", [embedded, g.weight("sqrt_d", np.array(model.embedding_scale, np.float32))])
    position = g.op("Gather", [g.weight("positions_table", model.position_table(decoder=True)), "positions"])
    embedded = g.op("Add", [scaled, position])
    if config.layernorm_embedding:  # BART / mBART
        norm = cast(torch.nn.LayerNorm, model.decoder_embedding_norm)
        embedded = _layer_norm(g, embedded, norm, "decoder.embedding_norm")
    x = g.op("Unsqueeze", [embedded, axis_1])

    for i, layer in enumerate(model.decoder_layers):
        scope, layer_kv = f"decoder.{i}", slice(2 * i, 2 * i + 2)
        attend_self = partial(_self_attention, shared, layer.self_attention, f"{scope}.self", self_kv[layer_kv])
        x = _sublayer(g, x, layer.self_residual, f"{scope}.self", attend_self)
        attend_source = partial(_cross_attention, shared, layer.cross_attention, f"{scope}.cross", cross_kv[layer_kv])
        x = _sublayer(g, x, layer.cross_residual, f"{scope}.cross", attend_source)
        feed_forward = partial(_feed_forward, shared, layer.feed_forward, f"{scope}.ffn", activation=config.activation)
        x = _sublayer(g, x, layer.feed_forward_residual, f"{scope}.ffn", feed_forward)

    if config.pre_norm:
        x = _layer_norm(g, x, cast(torch.nn.LayerNorm, model.decoder_norm), "decoder.norm")  # pre-norm: a LayerNorm
    # The output projection shares the embedding (Section 3.4): the one [d, V] copy above.
    logits = g.op("MatMul", [g.op("Squeeze", [x, axis_1]), projection])
    if config.final_logits_bias:
        logits = g.op("Add", [logits, g.weight("final_logits_bias", cast(torch.Tensor, model.final_logits_bias))])
    log_probs = g.op("LogSoftmax", [logits], axis=-1)
    g.ops("TopK", [log_probs, "k"], names["outputs"][:2], axis=-1, largest=1, sorted=1)

    cache_dims: list[str | int] = ["rows", "heads", "cache_len", "d_head"]
    shapes: dict[str, tuple[int, list[str | int]]] = {
        "token_ids": (TensorProto.INT64, ["rows"]),
        "positions": (TensorProto.INT64, ["rows"]),
        "self_mask": (TensorProto.BOOL, ["rows", "cache_len"]),
        "source_mask": (TensorProto.BOOL, ["sentences", "source_len"]),
        "query_rows": (TensorProto.INT64, ["sentences", "slots"]),
        "row_slots": (TensorProto.INT64, ["rows"]),
        "k": (TensorProto.INT64, [1]),
        **{name: (TensorProto.FLOAT, cache_dims) for name in self_kv},
        **{name: (TensorProto.FLOAT, ["sentences", "heads", "source_len", "d_head"]) for name in cross_kv},
        "topk_log_probs": (TensorProto.FLOAT, ["rows", "k"]),
        "topk_ids": (TensorProto.INT64, ["rows", "k"]),
        "new_self_mask": (TensorProto.BOOL, ["rows", "new_cache_len"]),
        **{f"new_{name}": (TensorProto.FLOAT, ["rows", "heads", "new_cache_len", "d_head"]) for name in self_kv},
    }
    graph = helper.make_graph(
        g.nodes,
        "decoder_step",
        [helper.make_tensor_value_info(n, *shapes[n]) for n in names["inputs"]],
        [helper.make_tensor_value_info(n, *shapes[n]) for n in names["outputs"]],
        g.initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="nmtserve",
    )
    onnx_model.ir_version = IR_VERSION
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))
    return path
