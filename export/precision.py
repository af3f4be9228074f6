"""Reduced-precision variants of the fp32 graphs: dynamic int8 for CPU, fp16 for GPU.

int8: ``quantize_dynamic`` turns MatMuls with a weight initializer into int8 (per output channel: one scale per
column keeps the small-norm columns of the embedding/output projection precise); attention's activation-by-
activation MatMuls stay fp32, where quantizing both sides costs accuracy and saves nothing.
fp16: everything converts except the tail from LogSoftmax on, so log-probabilities (and hence beam scores) stay
fp32 while the K/V cache that dominates memory traffic is fp16.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

PRECISIONS = ("fp32", "fp16", "int8")


def cache_element_type(precision: str) -> int:
    """ONNX element type of the K/V tensors that cross between graphs."""
    return TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT


def _weight_matmuls(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Names of MatMul nodes with / without a constant (initializer) operand."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    with_weight: list[str] = []
    without: list[str] = []
    for node in model.graph.node:
        if node.op_type == "MatMul":
            (with_weight if any(i in constants for i in node.input) else without).append(node.name)
    return with_weight, without


def quantize_int8(path: Path, per_channel: bool = True) -> Path:
    """Rewrite ``path`` in place with dynamically quantized int8 weight MatMuls."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path))
    _, activation_matmuls = _weight_matmuls(model)
    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(
        str(path),
        str(tmp),
        op_types_to_quantize=["MatMul"],
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=activation_matmuls,
        # Shape inference cannot type the outputs of contrib ops (MultiHeadAttention); they are float.
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    tmp.replace(path)
    _embed_from_quantized(path)
    return path


def _embed_from_quantized(path: Path) -> None:
    """Let a Gather that reads a quantized weight read its int8 copy (dequantizing the gathered columns) and drop
    the fp32 weight, where nothing else reads it.

    The decoder step's input embedding gathers columns of the output projection's [d, V] weight; after
    quantization the fp32 original stayed for that Gather alone, beside its int8 copy: vocabulary x d_model
    floats (1 GB at NLLB-200's 256k x 1024) to read d values per row and step. Per-channel scales are per column
    (per token), so a gathered column dequantizes with its own scale and zero point.
    """
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    changed = False
    for node in list(graph.node):
        weight = node.input[0] if node.op_type == "Gather" and node.input else ""
        quantized, scale, zero = (f"{weight}_quantized", f"{weight}_scale", f"{weight}_zero_point")
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if weight not in initializers or not {quantized, scale, zero} <= set(initializers) or axis != 1:
            continue
        if len(initializers[scale].dims) != 1:  # per-tensor quantization: nothing per column to gather
            continue
        index, out = node.input[1], node.output[0]
        gathered = [f"{out}_int8", f"{out}_scale", f"{out}_zero_point"]
        position = list(graph.node).index(node)
        graph.node.remove(node)
        new_nodes = [
            onnx.helper.make_node("Gather", [quantized, index], [gathered[0]], axis=1, name=f"{node.name}_int8"),
            onnx.helper.make_node("Gather", [scale, index], [gathered[1]], axis=0, name=f"{node.name}_scale"),
            onnx.helper.make_node("Gather", [zero, index], [gathered[2]], axis=0, name=f"{node.name}_zero_point"),
            onnx.helper.make_node("DequantizeLinear", gathered, [out], axis=1, name=f"{node.name}_dequantize"),
        ]
        for offset, new_node in enumerate(new_nodes):
            graph.node.insert(position + offset, new_node)
        if not any(weight in n.input for n in graph.node):
            graph.initializer.remove(initializers[weight])
        changed = True
    if changed:
        onnx.save(model, str(path))


def _fp32_tail(model: onnx.ModelProto) -> list[str]:
    """LogSoftmax and every node downstream of it (EOS mask, TopK): log-probs are computed and ranked in fp32.

    (Keeping the output projection MatMul in fp32 as well was measured: no gain, the error comes from the fp16
    hidden state, not from rounding the logits.)"""
    nodes = list(model.graph.node)
    start = next((n for n in nodes if n.op_type == "LogSoftmax"), None)
    if start is None:
        return []
    tainted, names = set(start.output), [start.name]
    for node in nodes:  # nodes are topologically sorted in a valid graph
        if node is not start and tainted & set(node.input):
            tainted |= set(node.output)
            names.append(node.name)
    return names


def convert_fp16(path: Path, keep_fp32_outputs: list[str]) -> Path:
    """Rewrite ``path`` in place as fp16, keeping ``keep_fp32_outputs`` and the log-softmax tail in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(path))
    converted = convert_float_to_float16(
        model,
        keep_io_types=keep_fp32_outputs,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST],
        node_block_list=_fp32_tail(model),
    )
    onnx.save(converted, str(path))
    return path
