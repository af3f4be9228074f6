"""Edits of exported ONNX graphs that torch cannot express: a TopK whose ``k`` is a graph input.

Keeping log-softmax and TopK inside the step graph means only [rows x k] values cross to the host each step,
and a runtime ``k`` lets one graph serve greedy (k = 1) and beam search (k = 2 x beam) alike.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def append_topk(path: Path, scores: str, values: str, indices: str, k_input: str = "k") -> Path:
    """Replace graph output ``scores`` [rows, V] by its sorted TopK along the last axis, with k from an input."""
    model = onnx.load(str(path))
    graph = model.graph
    position = next(i for i, out in enumerate(graph.output) if out.name == scores)
    rows = graph.output[position].type.tensor_type.shape.dim[0].dim_param or "rows"
    graph.input.append(helper.make_tensor_value_info(k_input, TensorProto.INT64, [1]))
    graph.node.append(
        helper.make_node("TopK", [scores, k_input], [values, indices], name="step_topk", axis=-1, largest=1, sorted=1)
    )
    new_outputs = [
        helper.make_tensor_value_info(values, TensorProto.FLOAT, [rows, "k"]),
        helper.make_tensor_value_info(indices, TensorProto.INT64, [rows, "k"]),
    ]
    outputs = list(graph.output)
    outputs[position : position + 1] = new_outputs
    del graph.output[:]
    graph.output.extend(outputs)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
