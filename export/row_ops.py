"""Tiny hand-built graphs that move rows of the per-row tensors on the device, never through the host.

- gather_rows: select rows of the cross K/V and source mask (one row per sentence: sentences leaving) and
  cut the source axis to the longest remaining source (sources are right-padded, so a prefix keeps every row valid);
- append_rows: join newly encoded sentences to a running batch, right-padding the shorter source axis;
- trim_cache: drop leading self-attention cache slots that no row uses any more (rows are left-padded);
- reorder_cache: give each new row the cache of the row it extends (the beam reorder; -1 starts an empty
  history). The engine skips it when rows did not move (greedy decoding, most steps), which spares a full copy
  of the cache per step.
Every graph treats its tensors alike: K/V tensors [rows, heads, length, d_head] (one per layer) and a bool mask
[rows, length]; rows are axis 0, length is axis 2 of a K/V tensor and axis 1 of the mask. They are written with
onnx.helper rather than traced from torch: each is a handful of standard ops per tensor.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from nmtserve.engine.model_dir import APPEND_ROWS, GATHER_ROWS, REORDER_CACHE, TRIM_CACHE, io_names
from nmtserve.export.torch_export import OPSET

IR_VERSION = 10
KV_LENGTH_AXIS, MASK_LENGTH_AXIS = 2, 1


def _tensor(name: str, dtype: int, rows: str, length: str) -> onnx.ValueInfoProto:
    """A K/V tensor (``dtype``) or, for names ending in ``mask``, the bool mask that goes with them."""
    if name.endswith("mask"):
        return helper.make_tensor_value_info(name, TensorProto.BOOL, [rows, length])
    return helper.make_tensor_value_info(name, dtype, [rows, "heads", length, "d_head"])


def _length_axis(name: str) -> str:
    return "mask_axis" if name.endswith("mask") else "kv_axis"


def _int64(name: str, value: list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(value)], value)
    )


def _axes() -> list[onnx.NodeProto]:
    return [_int64("kv_axis", [KV_LENGTH_AXIS]), _int64("mask_axis", [MASK_LENGTH_AXIS])]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nmtserve")
    model.ir_version = IR_VERSION  # onnx's newest IR can be ahead of what onnxruntime reads
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def build_gather_rows(path: Path, dtype: int, layers: int) -> Path:
    names = io_names(layers)[GATHER_ROWS]
    *tensors, rows, source_len = names["inputs"]
    nodes = [_int64("zero", [0]), *_axes()]
    for name, out in zip(tensors, names["outputs"], strict=True):
        nodes.append(helper.make_node("Gather", [name, rows], [f"g_{name}"], axis=0))
        nodes.append(helper.make_node("Slice", [f"g_{name}", "zero", source_len, _length_axis(name)], [out]))
    graph = helper.make_graph(
        nodes,
        "gather_rows",
        [
            *(_tensor(name, dtype, "rows", "len") for name in tensors),
            helper.make_tensor_value_info(rows, TensorProto.INT64, ["out_rows"]),
            helper.make_tensor_value_info(source_len, TensorProto.INT64, [1]),
        ],
        [_tensor(name, dtype, "out_rows", "out_len") for name in names["outputs"]],
    )
    return _save(graph, path)


def build_append_rows(path: Path, dtype: int, layers: int) -> Path:
    names = io_names(layers)[APPEND_ROWS]
    half = len(names["inputs"]) // 2
    old, new = names["inputs"][:half], names["inputs"][half:]
    mask, new_mask = old[-1], new[-1]
    nodes = [
        _int64("zero", [0]),
        _int64("one", [1]),
        _int64("two", [2]),
        *_axes(),
        helper.make_node("Constant", [], ["no_kv"], value=helper.make_tensor("no_kv", dtype, [], [0])),
        helper.make_node("Constant", [], ["no_mask"], value=helper.make_tensor("no_mask", TensorProto.BOOL, [], [0])),
        helper.make_node("Shape", [mask], ["old_shape"]),
        helper.make_node("Shape", [new_mask], ["new_shape"]),
        helper.make_node("Slice", ["old_shape", "one", "two"], ["old_len"]),
        helper.make_node("Slice", ["new_shape", "one", "two"], ["new_len"]),
        helper.make_node("Max", ["old_len", "new_len"], ["len"]),
        helper.make_node("Sub", ["len", "old_len"], ["old_pad"]),
        helper.make_node("Sub", ["len", "new_len"], ["new_pad"]),
        helper.make_node("Concat", ["zero", "old_pad"], ["old_pads"], axis=0),
        helper.make_node("Concat", ["zero", "new_pad"], ["new_pads"], axis=0),
    ]
    for a, b, out in zip(old, new, names["outputs"], strict=True):
        fill, axis = ("no_mask" if a.endswith("mask") else "no_kv"), _length_axis(a)
        nodes.append(helper.make_node("Pad", [a, "old_pads", fill, axis], [f"p_{a}"]))
        nodes.append(helper.make_node("Pad", [b, "new_pads", fill, axis], [f"p_{b}"]))
        nodes.append(helper.make_node("Concat", [f"p_{a}", f"p_{b}"], [out], axis=0))
    graph = helper.make_graph(
        nodes,
        "append_rows",
        [
            *(_tensor(name, dtype, "rows", "len") for name in old),
            *(_tensor(name, dtype, "new_rows", "new_len") for name in new),
        ],
        [_tensor(name, dtype, "out_rows", "out_len") for name in names["outputs"]],
    )
    return _save(graph, path)


def build_trim_cache(path: Path, dtype: int, layers: int) -> Path:
    names = io_names(layers)[TRIM_CACHE]
    *tensors, keep = names["inputs"]
    mask = tensors[-1]
    nodes = [
        _int64("one", [1]),
        _int64("two", [2]),
        _int64("end", [(1 << 62)]),
        *_axes(),
        helper.make_node("Shape", [mask], ["shape"]),
        helper.make_node("Slice", ["shape", "one", "two"], ["len"]),
        helper.make_node("Sub", ["len", keep], ["start"]),
    ]
    for name, out in zip(tensors, names["outputs"], strict=True):
        nodes.append(helper.make_node("Slice", [name, "start", "end", _length_axis(name)], [out]))
    graph = helper.make_graph(
        nodes,
        "trim_cache",
        [
            *(_tensor(name, dtype, "rows", "len") for name in tensors),
            helper.make_tensor_value_info(keep, TensorProto.INT64, [1]),
        ],
        [_tensor(name, dtype, "rows", "out_len") for name in names["outputs"]],
    )
    return _save(graph, path)


def build_reorder_cache(path: Path, dtype: int, layers: int) -> Path:
    names = io_names(layers)[REORDER_CACHE]
    *tensors, reorder = names["inputs"]
    mask = tensors[-1]
    nodes = [
        _int64("zero", [0]),
        _int64("one", [1]),
        helper.make_node("Max", [reorder, "zero"], ["index"]),
        helper.make_node("GreaterOrEqual", [reorder, "zero"], ["has_history"]),
        helper.make_node("Unsqueeze", ["has_history", "one"], ["has_history_column"]),
    ]
    for name, out in zip(tensors, names["outputs"], strict=True):
        if name == mask:  # a row with no history has no valid slot
            nodes.append(helper.make_node("Gather", [name, "index"], [f"g_{name}"], axis=0))
            nodes.append(helper.make_node("And", [f"g_{name}", "has_history_column"], [out]))
        else:
            nodes.append(helper.make_node("Gather", [name, "index"], [out], axis=0))
    graph = helper.make_graph(
        nodes,
        "reorder_cache",
        [
            *(_tensor(name, dtype, "rows", "len") for name in tensors),
            helper.make_tensor_value_info(reorder, TensorProto.INT64, ["out_rows"]),
        ],
        [_tensor(name, dtype, "out_rows", "len") for name in names["outputs"]],
    )
    return _save(graph, path)


def build_row_ops(directory: Path, dtype: int, layers: int) -> list[Path]:
    """All four helper graphs for K/V tensors of ONNX element type ``dtype`` (FLOAT or FLOAT16)."""
    directory = Path(directory)
    return [
        build_gather_rows(directory / GATHER_ROWS, dtype, layers),
        build_append_rows(directory / APPEND_ROWS, dtype, layers),
        build_trim_cache(directory / TRIM_CACHE, dtype, layers),
        build_reorder_cache(directory / REORDER_CACHE, dtype, layers),
    ]
