"""int8 weights in the form whose kernels compute exactly on this CPU.

An int8 export stores its ``MatMulInteger`` weights as signed int8 with zero point 0 (symmetric, per output
column) and its activations are quantized to uint8 per call: onnxruntime's u8s8 format. On x86-64 CPUs without
VNNI, onnxruntime computes u8s8 with ``VPMADDUBSW``, which adds pairs of u8 x s8 products into 16 bits and
saturates: 255 x 127 x 2 = 64770 does not fit. onnxruntime's quantization guide names the remedies (7-bit weights, or
the u8u8 format). The tiny test model's int8 log-probabilities were 3.6 off fp32 on such a CPU, against 0.5 allowed
and well under that on CPUs with VNNI, whose ``VPDPBUSD`` sums into 32 bits.

The same products in u8u8 are exact everywhere: a weight w in -128..127 is stored as w + 128 with zero point 128, so
``(a - za) x (b - zb)`` is unchanged term for term, and the u8u8 kernels widen to 16-bit operands with 32-bit sums.
So the export keeps one format and the engine shifts the weights when it loads the model on a CPU that needs it
(``auto``); the u8u8 kernels are slower than u8s8 with VNNI, which is why the shift is not made everywhere.

u8u8 costs speed on the CPUs that need it: it widens both operands to 16 bits, and a decode row cost 1.20-1.45x
what it costs in u8s8 on the demo model (docs/benchmarks.md, issue 17 session 13). ``u8s7`` (asked for, never
``auto``) keeps the fast u8s8 kernels and makes them exact instead, onnxruntime's other remedy: each weight column
is requantized to 7 bits (-64..64, its scale times peak / 64), so a pair of products is at most 255 x 64 x 2 =
32640 and fits the 16 bits. The arithmetic is exact but the weights are coarser (a second rounding, at twice the
step), which moved more outputs away from fp32's than u8u8 does (session 14's figures), so ``auto`` keeps all 8
bits. A weight whose scale cannot be found (not ``quantize_dynamic``'s symmetric ``<name>_quantized`` /
``<name>_scale`` pair) is shifted to u8u8 instead.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

INT8_KERNELS = ("auto", "u8s8", "u8u8", "u8s7")
SEVEN_BIT_PEAK = 64  # |w| <= 64: 255 x 64 x 2 = 32640 fits VPMADDUBSW's 16-bit sums
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686"})
PROTOBUF_LIMIT = 2**31 - 2**24  # a graph shifted in memory is handed to onnxruntime as one serialized protobuf


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags (Linux); empty where the file cannot be read."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def u8s8_saturates(machine: str | None = None, flags: Iterable[str] | None = None) -> bool:
    """True on x86 CPUs without a VNNI dot product (and on x86 whose flags cannot be read: u8u8 is exact on any).
    Arm's kernels sum into 32 bits, with or without its dot-product instructions."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86:
        return False
    return not (VNNI_FLAGS & frozenset(cpu_flags() if flags is None else flags))


def resolve_int8_kernels(setting: str) -> str:
    """``auto`` becomes the exact 8-bit format for this CPU; the others are taken as given."""
    if setting not in INT8_KERNELS:
        raise ValueError(f"int8_kernels must be one of {', '.join(INT8_KERNELS)}, not {setting!r}")
    if setting != "auto":
        return setting
    return "u8u8" if u8s8_saturates() else "u8s8"


def _shift(array: np.ndarray) -> np.ndarray:
    """int8 values as uint8 values 128 higher (the difference to the zero point is unchanged)."""
    return (array.astype(np.int16) + 128).astype(np.uint8)


Consumers = dict[str, list[tuple["onnx.NodeProto", int]]]  # tensor name -> (node, input position) reading it


def _consumers(graph: onnx.GraphProto) -> Consumers:
    consumers: Consumers = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, position))
    return consumers


def _read_only_by(name: str, consumers: Consumers, allowed: frozenset[tuple[str, int]]) -> bool:
    """Every reader of ``name`` is an (op, input position) in ``allowed``, or a Gather of it (the embedding reads
    the projection's columns) whose output is read only so in turn: a rewrite of ``name`` then agrees everywhere."""
    for node, position in consumers.get(name, []):
        if (node.op_type, position) in allowed:
            continue
        if node.op_type == "Gather" and position == 0 and _read_only_by(node.output[0], consumers, allowed):
            continue
        return False
    return True


# Who may read a shifted weight or zero point: a DequantizeLinear subtracts its zero point, as MatMulInteger does.
SHIFT_READERS = frozenset(
    {("MatMulInteger", 1), ("MatMulInteger", 3), ("DequantizeLinear", 0), ("DequantizeLinear", 2)}
)
# Who may read a narrowed weight and its rescaled scale: the product (and the Mul that rescales it) and dequantization.
NARROW_WEIGHT_READERS = frozenset({("MatMulInteger", 1), ("DequantizeLinear", 0)})
NARROW_SCALE_READERS = frozenset({("Mul", 0), ("Mul", 1), ("DequantizeLinear", 1)})


def shift_to_unsigned(model: onnx.ModelProto, skip: Iterable[str] = ()) -> set[str]:
    """Rewrite ``model`` in place so that every ``MatMulInteger`` reads uint8 weights and zero points; returns the
    graph inputs that now take uint8 (the shortlist feeds the projection's columns: the caller shifts those).
    Weights in ``skip`` (made exact otherwise: ``narrow_to_7bit``) stay as they are.

    A shifted tensor may also be read by a Gather that a DequantizeLinear dequantizes (the input embedding reads
    the projection's int8 columns): a DequantizeLinear subtracts its zero point, so it agrees with the shift. A
    weight read by anything else stays signed, with its MatMulIntegers."""
    from onnx import TensorProto, numpy_helper  # imported here: 1.3 s, paid only where a graph is shifted

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    consumers = _consumers(graph)

    def int8(name: str) -> bool:
        if name in initializers:
            return initializers[name].data_type == TensorProto.INT8
        return name in inputs and inputs[name].type.tensor_type.elem_type == TensorProto.INT8

    def readers_agree(name: str) -> bool:
        return _read_only_by(name, consumers, SHIFT_READERS)

    candidates = []
    for node in graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) < 2:
            continue
        weight = node.input[1]
        zero = node.input[3] if len(node.input) > 3 and node.input[3] else ""
        if weight in skip:
            continue
        if int8(weight) and (not zero or int8(zero)) and readers_agree(weight) and (not zero or readers_agree(zero)):
            candidates.append((node, weight, zero))
    pairs = _consistent(candidates, [n for n in graph.node if n.op_type == "MatMulInteger"])
    shifted: set[str] = set()
    for node, weight, zero in pairs:
        if not zero:  # no zero point is zero: shifted, it is 128
            zero = f"{weight}_u8_zero_point"
            if zero not in shifted:  # one per weight, however many MatMulIntegers read it
                graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), zero))
            while len(node.input) < 4:
                node.input.append("")
            node.input[3] = zero
            shifted.add(zero)
        shifted |= {weight, zero}
    fed: set[str] = set()
    for name in shifted:
        tensor = initializers.get(name)
        if tensor is not None and tensor.data_type == TensorProto.INT8:
            tensor.CopyFrom(numpy_helper.from_array(_shift(numpy_helper.to_array(tensor)), name))
        elif name in inputs:
            inputs[name].type.tensor_type.elem_type = TensorProto.UINT8
            fed.add(name)
    # Intermediate types recorded for Gathers of shifted tensors are stale: let onnxruntime infer them again.
    stale = [v for v in graph.value_info if v.type.tensor_type.elem_type == TensorProto.INT8]
    for value in stale:
        graph.value_info.remove(value)
    return fed


def _consistent(candidates: list, matmuls: list) -> list:
    """The candidates whose weight and zero point no unshifted ``MatMulInteger`` also reads (a weight or zero point
    shared with one that stays signed must stay signed too), to a fixed point."""
    pairs = list(candidates)
    while True:
        kept = {id(node) for node, _, _ in pairs}
        signed = {name for node in matmuls if id(node) not in kept for name in node.input[1:4:2] if name}
        narrowed = [(node, weight, zero) for node, weight, zero in pairs if not {weight, zero} & signed]
        if len(narrowed) == len(pairs):
            return pairs
        pairs = narrowed


@dataclass(frozen=True)
class FedWeights:
    """Graph inputs whose values the caller converts to the format the graph now runs: the shortlist feeds the
    output projection's columns, so its tensors are converted where they are gathered from, not in the graph."""

    shifted: frozenset[str] = frozenset()  # int8 -> uint8, 128 higher (u8u8)
    narrowed: Mapping[str, str] = field(default_factory=dict)  # 7-bit weight -> the scale input it is rescaled with

    def __bool__(self) -> bool:
        return bool(self.shifted or self.narrowed)


def _narrow(weight: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A symmetric int8 weight [.., K, N] and its scale (per column [N], or one) as 7 bits: a column whose peak is
    above 64 is scaled to it (scale x peak / 64), others are unchanged."""
    values = weight.astype(np.float32)
    per_column = scale.size > 1
    peak = np.abs(values).max(axis=tuple(range(values.ndim - 1))) if per_column else np.abs(values).max()
    factor = np.minimum(1.0, SEVEN_BIT_PEAK / np.maximum(peak, 1.0)).astype(np.float32)
    narrowed = np.clip(np.rint(values * factor), -SEVEN_BIT_PEAK, SEVEN_BIT_PEAK).astype(np.int8)
    return narrowed, (scale / factor.reshape(scale.shape) if per_column else scale / factor).astype(scale.dtype)


def narrow_to_7bit(model: onnx.ModelProto) -> tuple[set[str], dict[str, str]]:
    """Rewrite ``model`` in place so that each ``MatMulInteger`` weight that can be has 7-bit values (see the module
    doc); returns the weights made exact that way, and those of them that are graph inputs with their scale inputs
    (``FedWeights.narrowed``: the caller narrows what it feeds).

    A weight qualifies when it is ``quantize_dynamic``'s ``<name>_quantized`` with its ``<name>_scale`` beside it,
    both initializers or both graph inputs, symmetric (no zero point, or an all-zero initializer), and read only
    where a rescale agrees (``NARROW_WEIGHT_READERS``, ``NARROW_SCALE_READERS``, and the embedding's Gathers)."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    consumers = _consumers(graph)

    def symmetric(node: onnx.NodeProto) -> bool:
        zero = node.input[3] if len(node.input) > 3 else ""
        if not zero or zero in inputs:  # fed: ``convert_columns`` checks the values it narrows with
            return True
        tensor = initializers.get(zero)
        return tensor is not None and tensor.data_type == TensorProto.INT8 and not numpy_helper.to_array(tensor).any()

    narrowed: set[str] = set()
    fed: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) < 2 or node.input[1] in narrowed:
            continue
        weight = node.input[1]
        scale = weight.removesuffix("_quantized") + "_scale"
        if not weight.endswith("_quantized") or not _read_only_by(weight, consumers, NARROW_WEIGHT_READERS):
            continue
        if not _read_only_by(scale, consumers, NARROW_SCALE_READERS):
            continue
        if not all(symmetric(user) for user, _ in consumers[weight] if user.op_type == "MatMulInteger"):
            continue
        if weight in initializers and scale in initializers:
            tensor, scale_tensor = initializers[weight], initializers[scale]
            if tensor.data_type != TensorProto.INT8:
                continue
            values, scales = _narrow(numpy_helper.to_array(tensor), numpy_helper.to_array(scale_tensor))
            tensor.CopyFrom(numpy_helper.from_array(values, weight))
            scale_tensor.CopyFrom(numpy_helper.from_array(scales, scale))
        elif weight in inputs and scale in inputs:
            fed[weight] = scale
        else:
            continue
        narrowed.add(weight)
    return narrowed, fed


def session_source(path: Path, kernels: str) -> tuple[str | bytes, FedWeights]:
    """What to open an int8 graph's session from under ``kernels`` (resolved): its path, or the rewritten graph as
    bytes, with the graph inputs the caller converts. A graph too large for one protobuf keeps u8s8, with a
    warning."""
    if kernels not in ("u8u8", "u8s7"):
        return str(path), FedWeights()
    import onnx

    model = onnx.load(str(path))
    if not any(node.op_type == "MatMulInteger" for node in model.graph.node):
        return str(path), FedWeights()
    if model.ByteSize() > PROTOBUF_LIMIT:  # the rewrite keeps every tensor's size
        log.warning("%s is too large to rewrite for %s in memory; it runs u8s8, which may saturate here", path, kernels)
        return str(path), FedWeights()
    narrowed, fed_narrowed = narrow_to_7bit(model) if kernels == "u8s7" else (set(), {})
    shifted = shift_to_unsigned(model, skip=narrowed)  # u8s7: what could not be narrowed is made exact this way
    return model.SerializeToString(), FedWeights(frozenset(shifted), fed_narrowed)


def convert_columns(columns: dict[str, tuple[np.ndarray, int]], fed: FedWeights) -> dict[str, tuple[np.ndarray, int]]:
    """The shortlist's full tensors converted as the step graph's fed inputs now expect (``session_source``)."""
    converted = {name: (_shift(a) if name in fed.shifted else a, axis) for name, (a, axis) in columns.items()}
    for weight, scale in fed.narrowed.items():
        (values, axis), (scales, scale_axis) = columns[weight], columns[scale]
        zero = columns.get(weight.removesuffix("_quantized") + "_zero_point")
        if zero is not None and zero[0].any():
            raise ValueError(f"{weight} is not symmetric (its zero point is not 0): it cannot be narrowed to 7 bits")
        narrowed, rescaled = _narrow(values, scales)
        converted[weight], converted[scale] = (narrowed, axis), (rescaled, scale_axis)
    return converted
