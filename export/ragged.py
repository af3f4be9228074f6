"""Ragged rows: rewrite a decoder-step graph so that every row attends over its own history only.

The standard step graph keeps the self-attention cache left-padded: all rows share one cache length (the
longest history in the batch) and a mask hides the padding. A sentence that joins a running batch therefore
pays, in every layer and every step, for the whole batch's history: ``MultiHeadAttention`` computes over all
T slots of every row and copies all of them into its grown ``present``. That is why continuous batching lost
to request-level batching on p99 (docs/benchmarks.md).

The ragged graph replaces each self-attention ``MultiHeadAttention`` with onnxruntime's
``com.microsoft.GroupQueryAttention`` (kv heads = heads), which takes a per-row past length (``seqlens_k``):
row r's history sits in slots 0..positions[r]-1 of a right-padded buffer of fixed capacity, the kernel appends
the new key/value at slot positions[r] *in place* (past and present are bound to the same memory) and attends
over positions[r] + 1 slots. A row's cost is its own history; nothing is copied to grow the cache. The per-row
past length is the row's position (tokens generated before this one), which the graph already takes, so the
only interface change is that ``self_mask``/``new_self_mask`` disappear.

This is a rewrite of the finished graph (fp32, int8 or fp16 alike: only the attention nodes change), not a
second graph builder, so the ragged graph is the verified standard graph with its attention swapped; the
exporter then checks the two against each other step by step with rows joining mid-way (``check_ragged``).
CPU only for now: onnxruntime's CUDA ``GroupQueryAttention`` takes fp16/bf16 only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from nmtserve.engine.model_dir import CROSS_KV, SELF_KV, per_layer

MS_DOMAIN = "com.microsoft"
SEQLENS, TOTAL = "ragged_seqlens_k", "ragged_total_length"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs reaches a graph output (what the removed mask fed)."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = {i for node in graph.node for i in node.input}
    keep_init = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)


def to_ragged(model: onnx.ModelProto, layers: int) -> onnx.ModelProto:
    """The ragged form of a standard decoder-step ``model`` (see the module doc); the input is not modified."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    producers = _producers(graph)
    self_names = set(per_layer(SELF_KV, layers))
    length_nodes = [
        helper.make_node("Cast", ["positions"], [SEQLENS], name="ragged_seqlens", to=TensorProto.INT32),
        helper.make_node("ReduceMax", ["positions"], ["ragged_max_position"], name="ragged_max", keepdims=1),
        helper.make_node("Add", ["ragged_max_position", "ragged_one"], ["ragged_total64"], name="ragged_total_add"),
        helper.make_node("Cast", ["ragged_total64"], [TOTAL], name="ragged_total", to=TensorProto.INT32),
    ]
    graph.initializer.append(helper.make_tensor("ragged_one", TensorProto.INT64, [1], [1]))
    new_nodes: list[onnx.NodeProto] = list(length_nodes)
    replaced = 0
    for node in graph.node:
        is_self = node.op_type == "MultiHeadAttention" and len(node.input) >= 8 and node.input[6] in self_names
        if not is_self:
            new_nodes.append(node)
            continue
        split = producers[node.input[0]]
        if split.op_type != "Split" or list(split.output) != list(node.input[:3]):
            raise ValueError(f"{node.name}: self-attention Q/K/V do not come from one packed projection")
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        packed = f"{node.name}.ragged_qkv"
        new_nodes.append(helper.make_node("Add", [split.input[0], node.input[3]], [packed], name=f"{packed}_bias"))
        new_nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [packed, "", "", node.input[6], node.input[7], SEQLENS, TOTAL],
                list(node.output),
                name=f"{node.name}.ragged",
                domain=MS_DOMAIN,
                num_heads=heads,
                kv_num_heads=heads,
            )
        )
        replaced += 1
    if replaced != layers:
        raise ValueError(f"found {replaced} self-attention nodes, expected {layers} (one per decoder layer)")
    del graph.node[:]
    graph.node.extend(new_nodes)
    outputs = [o for o in graph.output if o.name != "new_self_mask"]
    del graph.output[:]
    graph.output.extend(outputs)
    _prune(graph)
    inputs = [i for i in graph.input if i.name != "self_mask"]
    del graph.input[:]
    graph.input.extend(inputs)
    for value in [*graph.input, *graph.output]:  # the buffer's length axis is its capacity, in and out alike
        if value.name in self_names or value.name.removeprefix("new_") in self_names:
            value.type.tensor_type.shape.dim[2].dim_param = "capacity"
    onnx.checker.check_model(model)
    return model


def make_ragged(path: Path, layers: int) -> Path:
    """Rewrite the decoder-step graph at ``path`` in place into its ragged form."""
    onnx.save(to_ragged(onnx.load(str(path)), layers), str(path))
    return path


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_ragged(
    standard: Path,
    ragged: Path,
    *,
    layers: int,
    heads: int,
    d_head: int,
    vocab: int,
    dtype: np.dtype,
    steps: int = 7,
    seed: int = 0,
) -> float:
    """Largest |log-prob| difference between the two graphs decoding the same rows, with a sentence joining
    mid-way (left-padded, masked history in the standard graph; its own slots from 0 in the ragged one).

    Three sentences of two rows each; rows keep their own history (the beam reorder is the engine's, checked end
    to end by the tests); cross K/V are random, which both graphs read alike.
    """
    rng = np.random.default_rng(seed)
    old, new = _session(standard), _session(ragged)
    self_names, cross_names = per_layer(SELF_KV, layers), per_layer(CROSS_KV, layers)
    sources = np.array([11, 5, 17])
    cross = {n: rng.standard_normal((3, heads, 17, d_head)).astype(dtype) for n in cross_names}
    source_mask = np.arange(17)[None, :] < sources[:, None]
    capacity = steps + 2
    padded = [np.zeros((0, heads, 0, d_head), dtype) for _ in self_names]
    buffers = [np.zeros((6, heads, capacity, d_head), dtype) for _ in self_names]
    mask = np.zeros((0, 0), bool)
    positions = np.zeros(0, np.int64)
    worst = 0.0
    for t in range(steps):
        joining = {0: 4, 3: 2}.get(t, 0)  # sentences 0 and 1 start together, sentence 2 joins at step 3
        if joining:
            padded = [np.concatenate([c, np.zeros((joining, heads, c.shape[2], d_head), dtype)]) for c in padded]
            mask = np.concatenate([mask, np.zeros((joining, mask.shape[1]), bool)])
            positions = np.concatenate([positions, np.zeros(joining, np.int64)])
        rows = len(positions)
        sentences = rows // 2
        shared = {
            "token_ids": rng.integers(4, vocab, rows).astype(np.int64),
            "positions": positions,
            "query_rows": np.arange(rows, dtype=np.int64).reshape(sentences, 2),
            "row_slots": np.arange(rows, dtype=np.int64),
            "source_mask": source_mask[:sentences],
            "k": np.array([vocab], np.int64),
            **{n: v[:sentences] for n, v in cross.items()},
        }
        top_values, top_ids, *padded_out = old.run(
            None, {**shared, "self_mask": mask, **dict(zip(self_names, padded, strict=True))}
        )
        *padded, mask = padded_out
        binding = new.io_binding()
        for name, value in shared.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        views = [ort.OrtValue.ortvalue_from_numpy(b[:rows]) for b in buffers]
        for name, view in zip(self_names, views, strict=True):
            binding.bind_ortvalue_input(name, view)
            binding.bind_ortvalue_output(f"new_{name}", view)
        binding.bind_output("topk_log_probs", "cpu")
        binding.bind_output("topk_ids", "cpu")
        new.run_with_iobinding(binding)
        ragged_values, ragged_ids = (v.numpy() for v in binding.get_outputs()[-2:])
        expected = np.full((rows, vocab), np.nan, np.float32)
        actual = np.full((rows, vocab), np.nan, np.float32)
        np.put_along_axis(expected, top_ids, top_values.astype(np.float32), axis=1)
        np.put_along_axis(actual, ragged_ids, ragged_values.astype(np.float32), axis=1)
        worst = max(worst, float(np.nanmax(np.abs(expected - actual))))
        positions = positions + 1
    return worst
