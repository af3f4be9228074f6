"""int8 weights shifted to u8u8 or narrowed to 7 bits (engine/int8_kernels.py), run by real onnxruntime sessions
against integer arithmetic in numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.int8_kernels import (
    SEVEN_BIT_PEAK,
    FedWeights,
    convert_columns,
    narrow_to_7bit,
    resolve_int8_kernels,
    session_source,
    shift_to_unsigned,
    u8s8_saturates,
)

M, K, N, V = 4, 64, 8, 6


def _worst_case() -> tuple[np.ndarray, np.ndarray]:
    """Activations and weights at the ends of their ranges: every pair of products sums to 255 x 127 x 2 = 64770,
    past the 16 bits a ``VPMADDUBSW`` sum saturates at."""
    rng = np.random.default_rng(0)
    activations = rng.choice(np.array([250, 255], np.uint8), size=(M, K))
    weights = rng.choice(np.array([-128, 127, 126], np.int8), size=(K, N))
    weights[:, 0] = 127  # one column all +127: the worst case exactly
    return activations, weights


def _graph(
    weights: np.ndarray,
    *,
    weight_as_input: bool = False,
    extra_reader: bool = False,
    name: str = "W",
    scales: np.ndarray | None = None,
    fed_scale: bool = False,
) -> onnx.ModelProto:
    """y = MatMulInteger(a, W, 0, zero point 0 per column), and the embedding's read of the same weight: columns of
    W gathered and dequantized (as the int8 step graph's input embedding does). ``name``: the weight's name
    (``quantize_dynamic`` calls it ``<x>_quantized`` beside ``<x>_scale``); ``fed_scale``: the scale is a graph
    input too, as the shortlist feeds it."""
    W = name
    zero = numpy_helper.from_array(np.zeros(N, np.int8), "W_zero_point")
    scale_values = np.full(N, 0.5, np.float32) if scales is None else scales
    nodes = [
        helper.make_node("MatMulInteger", ["a", W, "a_zero", "W_zero_point"], ["y"]),
        helper.make_node("Gather", [W, "ids"], ["W_columns"], axis=1),
        helper.make_node("Gather", ["W_scale", "ids"], ["columns_scale"], axis=0),
        helper.make_node("Gather", ["W_zero_point", "ids"], ["columns_zero"], axis=0),
        helper.make_node("DequantizeLinear", ["W_columns", "columns_scale", "columns_zero"], ["embedded"], axis=1),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.INT32, [M, N]),
        helper.make_tensor_value_info("embedded", TensorProto.FLOAT, [K, None]),
    ]
    if extra_reader:  # something that reads the raw int8 values: the shift would change its result
        nodes.append(helper.make_node("Cast", [W], ["W_raw"], to=TensorProto.INT32))
        outputs.append(helper.make_tensor_value_info("W_raw", TensorProto.INT32, [K, N]))
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.UINT8, [M, K]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
    ]
    initializers = [zero, numpy_helper.from_array(np.array(0, np.uint8), "a_zero")]
    if fed_scale:
        inputs.append(helper.make_tensor_value_info("W_scale", TensorProto.FLOAT, [N]))
    else:
        initializers.append(numpy_helper.from_array(scale_values, "W_scale"))
    if weight_as_input:  # the shortlist feeds the projection's columns as graph inputs
        inputs.append(helper.make_tensor_value_info(W, TensorProto.INT8, [K, N]))
    else:
        initializers.append(numpy_helper.from_array(weights, W))
    graph = helper.make_graph(nodes, "int8", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_shifted_weights_give_the_exact_integer_products() -> None:
    activations, weights = _worst_case()
    ids = np.array([0, 3, 5], np.int64)
    exact = activations.astype(np.int32) @ weights.astype(np.int32)
    model = _graph(weights)
    signed_y, signed_embedded = _run(model, {"a": activations, "ids": ids})
    assert shift_to_unsigned(model) == set()  # initializers only: nothing for the caller to feed differently
    kinds = {t.name: t.data_type for t in model.graph.initializer}
    assert kinds["W"] == kinds["W_zero_point"] == TensorProto.UINT8
    unsigned_y, unsigned_embedded = _run(model, {"a": activations, "ids": ids})
    np.testing.assert_array_equal(unsigned_y, exact)
    np.testing.assert_array_equal(unsigned_embedded, weights[:, ids].astype(np.float32) * 0.5)
    np.testing.assert_array_equal(signed_embedded, unsigned_embedded)
    if u8s8_saturates():  # the premise, where this CPU shows it: u8s8 loses what u8u8 keeps
        assert not np.array_equal(signed_y, exact)


def test_a_weight_fed_as_an_input_is_shifted_by_the_caller() -> None:
    activations, weights = _worst_case()
    model = _graph(weights, weight_as_input=True)
    fed = shift_to_unsigned(model)
    assert fed == {"W"}
    columns = convert_columns({"W": (weights, 1), "W_bias": (np.ones(N, np.float32), 0)}, FedWeights(frozenset(fed)))
    assert columns["W"][0].dtype == np.uint8 and columns["W_bias"][0].dtype == np.float32
    (y, _) = _run(model, {"a": activations, "ids": np.array([1], np.int64), "W": columns["W"][0]})
    np.testing.assert_array_equal(y, activations.astype(np.int32) @ weights.astype(np.int32))


def test_a_weight_with_another_reader_stays_signed() -> None:
    activations, weights = _worst_case()
    model = _graph(weights, extra_reader=True)
    shift_to_unsigned(model)
    assert {t.name: t.data_type for t in model.graph.initializer}["W"] == TensorProto.INT8
    *_, raw = _run(model, {"a": activations, "ids": np.array([0], np.int64)})
    np.testing.assert_array_equal(raw, weights.astype(np.int32))


@pytest.mark.parametrize(
    ("machine", "flags", "saturates"),
    [
        ("x86_64", {"avx2", "fma"}, True),  # AVX2 only: VPMADDUBSW
        ("x86_64", {"avx2", "avx512f", "avx512bw"}, True),  # AVX-512 without VNNI saturates too
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),
        ("x86_64", {"avx2", "avx_vnni"}, False),
        ("AMD64", set(), True),  # flags unknown: the exact format
        ("aarch64", {"asimd"}, False),
    ],
)
def test_which_cpus_need_the_shift(machine: str, flags: set[str], saturates: bool) -> None:
    assert u8s8_saturates(machine, flags) is saturates


def test_an_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="int8_kernels must be one of auto, u8s8, u8u8, u8s7, not 's8s8'"):
        resolve_int8_kernels("s8s8")
    for kernels in ("u8s8", "u8u8", "u8s7"):
        assert resolve_int8_kernels(kernels) == kernels
    assert resolve_int8_kernels("auto") == ("u8u8" if u8s8_saturates() else "u8s8")


def test_graphs_without_integer_matmuls_open_from_their_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    node = helper.make_node("Identity", ["x"], ["y"])
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    onnx.save(helper.make_model(helper.make_graph([node], "g", value[:1], value[1:])), str(path))
    for kernels in ("u8u8", "u8s8", "u8s7"):
        assert session_source(path, kernels) == (str(path), FedWeights())


def test_the_demo_int8_export_under_each_format_translates_as_fp32_does_mostly() -> None:
    """The shipped int8 export in every format, against fp32: u8u8 and u8s7 are exact integer arithmetic on any
    CPU, so they must stay close to fp32 everywhere (u8s8 only where its sums do not saturate)."""
    from nmtserve.engine.model_dir import demo_export

    texts = ["The file could not be opened.", "Click here to install the package, then restart the computer."]
    options = DecodingOptions(beam_size=4)
    reference = Engine.load(demo_export("fp32"), threads=1).translate(texts, options)
    for kernels in ("u8u8", "u8s7", "u8s8"):
        engine = Engine.load(demo_export("int8"), threads=1, int8_kernels=kernels)
        assert engine.runtime.int8_kernels == kernels
        if kernels == "u8s8" and u8s8_saturates():
            continue
        got = engine.translate(texts, options)
        for ours, theirs in zip(got, reference, strict=True):
            assert abs(float(ours[0].score) - float(theirs[0].score)) < 0.1, (ours[0].text, theirs[0].text)


def test_a_zero_point_shared_with_a_signed_weight_keeps_both_matmuls_signed() -> None:
    """W1 alone could be shifted, but its zero point is also W2's, and W2 has a reader that needs raw int8 values:
    shifting the shared zero point would shift W2's result, so neither moves."""
    activations, weights = _worst_case()
    nodes = [
        helper.make_node("MatMulInteger", ["a", "W1", "a_zero", "Z"], ["y1"]),
        helper.make_node("MatMulInteger", ["a", "W2", "a_zero", "Z"], ["y2"]),
        helper.make_node("Cast", ["W2"], ["W2_raw"], to=TensorProto.INT32),
    ]
    initializers = [
        numpy_helper.from_array(weights, "W1"),
        numpy_helper.from_array(weights[::-1].copy(), "W2"),
        numpy_helper.from_array(np.zeros(N, np.int8), "Z"),
        numpy_helper.from_array(np.array(0, np.uint8), "a_zero"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, None) for n in ("y1", "y2", "W2_raw")]
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [M, K])]
    graph = helper.make_graph(nodes, "shared", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    before = _run(model, {"a": activations})
    shift_to_unsigned(model)
    assert {t.name: t.data_type for t in model.graph.initializer} == {
        "W1": TensorProto.INT8,
        "W2": TensorProto.INT8,
        "Z": TensorProto.INT8,
        "a_zero": TensorProto.UINT8,
    }
    for was, now in zip(before, _run(model, {"a": activations}), strict=True):
        np.testing.assert_array_equal(was, now)


def test_a_weight_without_a_zero_point_read_twice_gets_one_zero_point() -> None:
    activations, weights = _worst_case()
    nodes = [helper.make_node("MatMulInteger", ["a", "W"], [name]) for name in ("y1", "y2")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, None) for n in ("y1", "y2")]
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [M, K])]
    graph = helper.make_graph(nodes, "twice", inputs, outputs, [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    shift_to_unsigned(model)
    names = [t.name for t in model.graph.initializer]
    assert sorted(names) == ["W", "W_u8_zero_point"]
    exact = activations.astype(np.int32) @ weights.astype(np.int32)
    for y in _run(model, {"a": activations}):
        np.testing.assert_array_equal(y, exact)


def test_weights_narrowed_to_7_bits_give_exact_products_on_the_u8s8_kernels() -> None:
    """The worst case that saturates u8s8 with 8-bit weights: narrowed to 7 bits, the same kernels compute the
    integer products exactly, and the embedding's dequantized columns read the narrowed weight consistently."""
    activations, weights = _worst_case()
    scales = np.linspace(0.01, 0.08, N).astype(np.float32)
    ids = np.array([0, 3, 5], np.int64)
    model = _graph(weights, name="W_quantized", scales=scales)
    assert narrow_to_7bit(model) == ({"W_quantized"}, {})
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    narrowed, rescaled = tensors["W_quantized"], tensors["W_scale"]
    assert narrowed.dtype == np.int8 and int(np.abs(narrowed.astype(np.int32)).max()) == SEVEN_BIT_PEAK
    y, embedded = _run(model, {"a": activations, "ids": ids})
    np.testing.assert_array_equal(y, activations.astype(np.int32) @ narrowed.astype(np.int32))  # no saturation
    np.testing.assert_allclose(embedded, narrowed[:, ids].astype(np.float32) * rescaled[ids], rtol=1e-6)
    # Within half a 7-bit step of the 8-bit weight it came from (127 / 64: the step is about twice as coarse).
    error = np.abs(narrowed.astype(np.float64) * rescaled - weights.astype(np.float64) * scales)
    assert (error <= rescaled / 2 * (1 + 1e-5)).all()


def test_a_fed_weight_is_narrowed_by_the_caller_with_its_scale() -> None:
    """The shortlist feeds the projection's int8 columns and scales: the graph keeps int8 inputs, the caller
    narrows both, and the products are exact on the narrowed values."""
    activations, weights = _worst_case()
    scales = np.full(N, 0.25, np.float32)
    model = _graph(weights, name="W_quantized", weight_as_input=True, fed_scale=True)
    narrowed_names, fed = narrow_to_7bit(model)
    assert narrowed_names == {"W_quantized"} and fed == {"W_quantized": "W_scale"}
    assert shift_to_unsigned(model, skip=narrowed_names) == set()  # nothing left to shift
    columns = convert_columns(
        {"W_quantized": (weights, 1), "W_scale": (scales, 0), "W_zero_point": (np.zeros(N, np.int8), 0)},
        FedWeights(narrowed=fed),
    )
    narrowed, rescaled = columns["W_quantized"][0], columns["W_scale"][0]
    assert int(np.abs(narrowed.astype(np.int32)).max()) <= SEVEN_BIT_PEAK
    peaks = np.abs(weights.astype(np.int32)).max(axis=0)  # 127 or 128 per column
    np.testing.assert_allclose(rescaled, 0.25 * peaks / SEVEN_BIT_PEAK, rtol=1e-6)
    feeds = {"a": activations, "ids": np.array([2], np.int64), "W_quantized": narrowed, "W_scale": rescaled}
    (y, _) = _run(model, feeds)
    np.testing.assert_array_equal(y, activations.astype(np.int32) @ narrowed.astype(np.int32))
    with pytest.raises(ValueError, match="W_quantized is not symmetric"):
        convert_columns(
            {"W_quantized": (weights, 1), "W_scale": (scales, 0), "W_zero_point": (np.ones(N, np.int8), 0)},
            FedWeights(narrowed=fed),
        )


def test_under_u8s7_a_weight_without_a_known_scale_is_shifted_to_u8u8(tmp_path: Path) -> None:
    """A weight not named as quantize_dynamic names it has no scale to rescale: u8s7 makes it exact the u8u8 way."""
    activations, weights = _worst_case()
    path = tmp_path / "unnamed.onnx"
    onnx.save(_graph(weights), str(path))
    source, fed = session_source(path, "u8s7")
    assert isinstance(source, bytes) and not fed
    model = onnx.load_from_string(source)
    assert {t.name: t.data_type for t in model.graph.initializer}["W"] == TensorProto.UINT8
    (y, _) = _run(model, {"a": activations, "ids": np.array([0], np.int64)})
    np.testing.assert_array_equal(y, activations.astype(np.int32) @ weights.astype(np.int32))


def test_a_weight_whose_gathered_columns_are_read_raw_is_not_narrowed() -> None:
    """The embedding's Gather agrees with a narrowing only when a DequantizeLinear reads what it gathers (with the
    rescaled scale); columns read as raw integers would change under it, so the weight keeps its values."""
    _, weights = _worst_case()
    model = _graph(weights, name="W_quantized")
    model.graph.node.append(helper.make_node("Cast", ["W_columns"], ["raw_columns"], to=TensorProto.INT32))
    model.graph.output.append(helper.make_tensor_value_info("raw_columns", TensorProto.INT32, [K, None]))
    assert narrow_to_7bit(model) == (set(), {})
    kept = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["W_quantized"]
    np.testing.assert_array_equal(kept, weights)
