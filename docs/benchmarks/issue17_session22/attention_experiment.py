"""Session 22's attention experiment: onnxruntime's CPU attention kernels against a hand-written one.

Two measurements, both CPU time on one thread, the two sides taking turns:
- ``kernels``: one GroupQueryAttention (the ragged self-attention) or MultiHeadAttention (the cross-attention) node
  alone in a session, against ``ragged_attention.cc``'s plain C entry points, at the step graph's shapes;
- ``engine``: whole ``Engine.translate_ids`` runs of a ragged export, the shipped graph against the same graph with
  every GroupQueryAttention replaced by the custom op ``nmtserve.RaggedSelfAttention`` (the same library).

    curl -sO http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb
    dpkg-deb -x libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb /tmp/ort-dev     # the C/C++ API headers only
    python attention_experiment.py --include /tmp/ort-dev/usr/include/onnxruntime kernels --out kernels.json
    python attention_experiment.py --include ... engine --model /tmp/ragged-int8 --source /tmp/legal.en --out e.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
HEADS, D_HEAD = 4, 64


def build(include: Path, out: Path) -> Path:
    subprocess.run(
        ["g++", "-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", f"-I{include}", "-o", str(out),
         str(HERE / "ragged_attention.cc")],
        check=True,
    )  # fmt: skip
    return out


def _session(node: onnx.NodeProto, inputs: list, outputs: list) -> ort.InferenceSession:
    graph = helper.make_graph([node], "one_node", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, ir_version=9, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _turns(sides: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median over rounds of the CPU microseconds per call, the sides taking turns in a rotating order."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.process_time()
            for _ in range(calls):
                sides[name]()
            times[name].append((time.process_time() - start) / calls * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def self_attention_case(lib: ctypes.CDLL, rows: int, low: int, high: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    positions = rng.integers(low, high, rows).astype(np.int64)
    capacity = int(positions.max() * 1.5) + 32  # the ragged cache's growth rule (engine/cache.py)
    f = TensorProto.FLOAT
    cache = helper.make_tensor_value_info
    node = helper.make_node(
        "GroupQueryAttention", ["qkv", "", "", "pk", "pv", "lengths", "total"], ["out", "nk", "nv"],
        domain="com.microsoft", num_heads=HEADS, kv_num_heads=HEADS,
    )  # fmt: skip
    session = _session(
        node,
        [cache("qkv", f, ["R", 1, 3 * HEADS * D_HEAD]), cache("pk", f, ["R", HEADS, "C", D_HEAD]),
         cache("pv", f, ["R", HEADS, "C", D_HEAD]), cache("lengths", TensorProto.INT32, ["R"]),
         cache("total", TensorProto.INT32, [1])],
        [cache("out", f, ["R", 1, HEADS * D_HEAD]), cache("nk", f, ["R", HEADS, "C", D_HEAD]),
         cache("nv", f, ["R", HEADS, "C", D_HEAD])],
    )  # fmt: skip
    qkv = rng.standard_normal((rows, 1, 3 * HEADS * D_HEAD)).astype(np.float32)
    keys, values = (rng.standard_normal((rows, HEADS, capacity, D_HEAD)).astype(np.float32) for _ in range(2))
    own_keys, own_values = keys.copy(), values.copy()
    binding = session.io_binding()
    binding.bind_cpu_input("qkv", qkv)
    binding.bind_cpu_input("lengths", positions.astype(np.int32))
    binding.bind_cpu_input("total", np.array([positions.max() + 1], np.int32))
    for name, array in (("k", keys), ("v", values)):
        value = ort.OrtValue.ortvalue_from_numpy(array)
        binding.bind_ortvalue_input(f"p{name}", value)
        binding.bind_ortvalue_output(f"n{name}", value)
    binding.bind_output("out", "cpu")
    out = np.zeros((rows, HEADS * D_HEAD), np.float32)
    pointer = ctypes.c_void_p

    def hand() -> None:
        lib.ragged_self_attention(
            pointer(qkv.ctypes.data), pointer(own_keys.ctypes.data), pointer(own_values.ctypes.data),
            pointer(positions.ctypes.data), pointer(out.ctypes.data), rows, HEADS, capacity, D_HEAD,
        )  # fmt: skip

    session.run_with_iobinding(binding)
    hand()
    ort_out = next(v.numpy() for v in binding.get_outputs() if v.shape()[-1] == HEADS * D_HEAD)
    timing = _turns({"onnxruntime": lambda: session.run_with_iobinding(binding), "hand": hand}, 200, 5)
    return {
        "node": "GroupQueryAttention",
        "rows": rows,
        "history": [low, high],
        "capacity": capacity,
        "us_onnxruntime": timing["onnxruntime"],
        "us_hand": timing["hand"],
        "onnxruntime_over_hand": timing["onnxruntime"] / timing["hand"],
        "max_abs_difference": float(np.abs(ort_out.reshape(rows, -1) - out).max()),
    }


def cross_attention_case(lib: ctypes.CDLL, sentences: int, queries: int, source: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    f = TensorProto.FLOAT
    info = helper.make_tensor_value_info
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "mask"], ["out"], domain="com.microsoft",
                            num_heads=HEADS)  # fmt: skip
    session = _session(
        node,
        [info("q", f, ["N", "Q", HEADS * D_HEAD]), info("k", f, ["N", HEADS, "S", D_HEAD]),
         info("v", f, ["N", HEADS, "S", D_HEAD]), info("mask", TensorProto.INT32, ["N", "S"])],
        [info("out", f, ["N", "Q", HEADS * D_HEAD])],
    )  # fmt: skip
    q = rng.standard_normal((sentences, queries, HEADS * D_HEAD)).astype(np.float32)
    keys, values = (rng.standard_normal((sentences, HEADS, source, D_HEAD)).astype(np.float32) for _ in range(2))
    lengths = rng.integers(source // 2, source + 1, sentences)
    lengths[0] = source
    mask = (np.arange(source)[None, :] < lengths[:, None]).astype(np.int32)
    binding = session.io_binding()
    for name, array in (("q", q), ("k", keys), ("v", values), ("mask", mask)):
        binding.bind_cpu_input(name, array)
    binding.bind_output("out", "cpu")
    out = np.zeros_like(q)
    pointer = ctypes.c_void_p

    def hand() -> None:
        lib.cross_attention(
            pointer(q.ctypes.data), pointer(keys.ctypes.data), pointer(values.ctypes.data), pointer(mask.ctypes.data),
            pointer(out.ctypes.data), sentences, queries, HEADS, source, D_HEAD,
        )  # fmt: skip

    session.run_with_iobinding(binding)
    hand()
    ort_out = binding.get_outputs()[0].numpy()
    timing = _turns({"onnxruntime": lambda: session.run_with_iobinding(binding), "hand": hand}, 200, 5)
    return {
        "node": "MultiHeadAttention",
        "sentences": sentences,
        "queries_per_sentence": queries,
        "source": source,
        "us_onnxruntime": timing["onnxruntime"],
        "us_hand": timing["hand"],
        "onnxruntime_over_hand": timing["onnxruntime"] / timing["hand"],
        "max_abs_difference": float(np.abs(ort_out - out).max()),
    }


def kernels(lib_path: Path) -> list[dict]:
    lib = ctypes.CDLL(str(lib_path))
    lib.ragged_self_attention.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4
    lib.cross_attention.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5
    cases = [
        self_attention_case(lib, rows, low, high)
        for rows, low, high in [
            (8, 5, 60),
            (32, 5, 60),
            (128, 5, 60),
            (128, 0, 8),
            (128, 0, 30),
            (128, 20, 100),
            (32, 0, 100),
        ]
    ]
    cases += [cross_attention_case(lib, n, q, s) for n, q, s in [(32, 4, 40), (8, 4, 40), (32, 1, 40), (32, 4, 20)]]
    return cases  # fmt: skip


def _with_custom_op(lib_path: Path) -> None:
    """Make every later ``Engine.load`` register the library and swap GroupQueryAttention for its op."""
    import nmtserve.engine.runtime as runtime

    options, source = runtime._session_options, runtime.session_source

    def options_with_op(config):  # type: ignore[no-untyped-def]
        result = options(config)
        result.register_custom_ops_library(str(lib_path))
        return result

    def source_with_op(path, kernels):  # type: ignore[no-untyped-def]
        model, fed = source(path, kernels)
        graph = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
        swapped = [n for n in graph.graph.node if n.op_type == "GroupQueryAttention"]
        for node in swapped:
            node.op_type, node.domain = "RaggedSelfAttention", "nmtserve"
            heads = [a for a in node.attribute if a.name == "num_heads"]
            del node.attribute[:]
            node.attribute.extend(heads)
        if not swapped:
            return model, fed
        graph.opset_import.append(helper.make_opsetid("nmtserve", 1))
        return graph.SerializeToString(), fed

    runtime._session_options, runtime.session_source = options_with_op, source_with_op


def engine_ab(lib_path: Path, model: Path, source: Path, sentences: int, rounds: int) -> list[dict]:
    from nmtserve.engine.decoding import DecodingOptions
    from nmtserve.engine.engine import Engine

    shipped = Engine.load(model, threads=1)
    _with_custom_op(lib_path)
    custom = Engine.load(model, threads=1)
    lines = [line.strip() for line in source.read_text().splitlines() if line.strip()][:sentences]
    ids = shipped.encode_texts(lines)
    results = []
    for beam in (4, 1):
        options = DecodingOptions(beam_size=beam)
        a, b = (engine.translate_ids(ids, options, 32) for engine in (shipped, custom))
        same = sum(x[0].token_ids == y[0].token_ids for x, y in zip(a, b, strict=True)) / len(a)
        sides = {"shipped": lambda e=shipped, o=options: e.translate_ids(ids, o, 32),
                 "custom_op": lambda e=custom, o=options: e.translate_ids(ids, o, 32)}  # fmt: skip
        timing = _turns(sides, 1, rounds)
        results.append({
            "model": str(model), "source": str(source), "sentences": len(ids), "beam": beam,
            "s_shipped": timing["shipped"] / 1e6, "s_custom_op": timing["custom_op"] / 1e6,
            "shipped_over_custom_op": timing["shipped"] / timing["custom_op"], "identical_best": same,
        })  # fmt: skip
        print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--include", type=Path, required=True, help="onnxruntime's C/C++ API headers")
    parser.add_argument("--lib", type=Path, default=Path("/tmp/libnmtserve_attention.so"))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("kernels").add_argument("--out", type=Path, required=True)
    engine = commands.add_parser("engine")
    engine.add_argument("--model", type=Path, required=True)
    engine.add_argument("--source", type=Path, required=True)
    engine.add_argument("--sentences", type=int, default=176)
    engine.add_argument("--rounds", type=int, default=5)
    engine.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    lib = build(args.include, args.lib)
    if args.command == "kernels":
        results = kernels(lib)
    else:
        results = engine_ab(lib, args.model, args.source, args.sentences, args.rounds)
    args.out.write_text(json.dumps({"onnxruntime": ort.__version__, "results": results}, indent=2) + "\n")
    for row in results:
        print(row)


if __name__ == "__main__":
    main()
