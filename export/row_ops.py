"""Tiny hand-built graphs that move rows of the per-row tensors on the device, never through the host.

- gather_rows: select rows of cross K/V and source mask (sentences leaving the batch, beams expanding) and cut
  the source axis to the longest remaining source (sources are right-padded, so a prefix keeps every row valid);
- append_rows: join newly encoded sentences to a running batch, right-padding the shorter source axis;
- trim_cache: drop leading self-attention cache slots that no row uses any more (rows are left-padded).
They are written with onnx.helper rather than traced from torch: each is a handful of standard ops.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from nmtserve.export.torch_export import OPSET
from nmtserve.server.engine.model_dir import APPEND_ROWS, GATHER_ROWS, IO_NAMES, TRIM_CACHE

IR_VERSION = 10


def _kv(name: str, dtype: int, rows: str = "rows", length: str = "len") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, ["layers", rows, "heads", length, "d_head"])


def _mask(name: str, rows: str = "rows", length: str = "len") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.BOOL, [rows, length])


def _int64(name: str, value: list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(value)], value)
    )


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nmtserve")
    model.ir_version = IR_VERSION  # onnx's newest IR can be ahead of what onnxruntime reads
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def build_gather_rows(path: Path, dtype: int) -> Path:
    keys, values, mask, rows, source_len = IO_NAMES[GATHER_ROWS]["inputs"]
    out_keys, out_values, out_mask = IO_NAMES[GATHER_ROWS]["outputs"]
    nodes = [
        _int64("zero", [0]),
        _int64("kv_axis", [3]),
        _int64("mask_axis", [1]),
        helper.make_node("Gather", [keys, rows], ["g_keys"], axis=1),
        helper.make_node("Gather", [values, rows], ["g_values"], axis=1),
        helper.make_node("Gather", [mask, rows], ["g_mask"], axis=0),
        helper.make_node("Slice", ["g_keys", "zero", source_len, "kv_axis"], [out_keys]),
        helper.make_node("Slice", ["g_values", "zero", source_len, "kv_axis"], [out_values]),
        helper.make_node("Slice", ["g_mask", "zero", source_len, "mask_axis"], [out_mask]),
    ]
    graph = helper.make_graph(
        nodes,
        "gather_rows",
        [
            _kv(keys, dtype),
            _kv(values, dtype),
            _mask(mask),
            helper.make_tensor_value_info(rows, TensorProto.INT64, ["out_rows"]),
            helper.make_tensor_value_info(source_len, TensorProto.INT64, [1]),
        ],
        [
            _kv(out_keys, dtype, "out_rows", "out_len"),
            _kv(out_values, dtype, "out_rows", "out_len"),
            _mask(out_mask, "out_rows", "out_len"),
        ],
    )
    return _save(graph, path)


def build_append_rows(path: Path, dtype: int) -> Path:
    keys, values, mask, new_keys, new_values, new_mask = IO_NAMES[APPEND_ROWS]["inputs"]
    out_keys, out_values, out_mask = IO_NAMES[APPEND_ROWS]["outputs"]
    nodes = [
        _int64("zero", [0]),
        _int64("one", [1]),
        _int64("two", [2]),
        _int64("kv_axis", [3]),
        _int64("mask_axis", [1]),
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
        helper.make_node("Pad", [keys, "old_pads", "no_kv", "kv_axis"], ["p_keys"]),
        helper.make_node("Pad", [values, "old_pads", "no_kv", "kv_axis"], ["p_values"]),
        helper.make_node("Pad", [mask, "old_pads", "no_mask", "mask_axis"], ["p_mask"]),
        helper.make_node("Pad", [new_keys, "new_pads", "no_kv", "kv_axis"], ["p_new_keys"]),
        helper.make_node("Pad", [new_values, "new_pads", "no_kv", "kv_axis"], ["p_new_values"]),
        helper.make_node("Pad", [new_mask, "new_pads", "no_mask", "mask_axis"], ["p_new_mask"]),
        helper.make_node("Concat", ["p_keys", "p_new_keys"], [out_keys], axis=1),
        helper.make_node("Concat", ["p_values", "p_new_values"], [out_values], axis=1),
        helper.make_node("Concat", ["p_mask", "p_new_mask"], [out_mask], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "append_rows",
        [
            _kv(keys, dtype, "rows", "len"),
            _kv(values, dtype, "rows", "len"),
            _mask(mask, "rows", "len"),
            _kv(new_keys, dtype, "new_rows", "new_len"),
            _kv(new_values, dtype, "new_rows", "new_len"),
            _mask(new_mask, "new_rows", "new_len"),
        ],
        [
            _kv(out_keys, dtype, "out_rows", "out_len"),
            _kv(out_values, dtype, "out_rows", "out_len"),
            _mask(out_mask, "out_rows", "out_len"),
        ],
    )
    return _save(graph, path)


def build_trim_cache(path: Path, dtype: int) -> Path:
    keys, values, mask, keep = IO_NAMES[TRIM_CACHE]["inputs"]
    out_keys, out_values, out_mask = IO_NAMES[TRIM_CACHE]["outputs"]
    nodes = [
        _int64("one", [1]),
        _int64("two", [2]),
        _int64("end", [(1 << 62)]),
        _int64("kv_axis", [3]),
        _int64("mask_axis", [1]),
        helper.make_node("Shape", [mask], ["shape"]),
        helper.make_node("Slice", ["shape", "one", "two"], ["len"]),
        helper.make_node("Sub", ["len", keep], ["start"]),
        helper.make_node("Slice", [keys, "start", "end", "kv_axis"], [out_keys]),
        helper.make_node("Slice", [values, "start", "end", "kv_axis"], [out_values]),
        helper.make_node("Slice", [mask, "start", "end", "mask_axis"], [out_mask]),
    ]
    graph = helper.make_graph(
        nodes,
        "trim_cache",
        [
            _kv(keys, dtype),
            _kv(values, dtype),
            _mask(mask),
            helper.make_tensor_value_info(keep, TensorProto.INT64, [1]),
        ],
        [
            _kv(out_keys, dtype, "rows", "out_len"),
            _kv(out_values, dtype, "rows", "out_len"),
            _mask(out_mask, "rows", "out_len"),
        ],
    )
    return _save(graph, path)


def build_row_ops(directory: Path, dtype: int) -> list[Path]:
    """All three helper graphs for K/V tensors of ONNX element type ``dtype`` (FLOAT or FLOAT16)."""
    directory = Path(directory)
    return [
        build_gather_rows(directory / GATHER_ROWS, dtype),
        build_append_rows(directory / APPEND_ROWS, dtype),
        build_trim_cache(directory / TRIM_CACHE, dtype),
    ]
