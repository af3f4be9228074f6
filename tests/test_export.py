"""ONNX export of a tiny random model: graph signatures, dynamic shapes, cached vs teacher-forced decoding, the
row graphs, reduced precisions, and that verification catches a wrong graph. Real onnxruntime sessions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import write_corpus
from onnx import TensorProto, numpy_helper

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.batch import cross_slots
from nmtserve.engine.model_dir import (
    APPEND_ROWS,
    DECODER_STEP,
    ENCODER,
    GATHER_ROWS,
    MANIFEST,
    REORDER_CACHE,
    REQUIRED_FILES,
    TRIM_CACHE,
    io_names,
    per_layer,
    sha256_file,
    write_manifest,
)
from nmtserve.export.exporter import export_model
from nmtserve.export.precision import convert_fp16, quantize_int8
from nmtserve.export.row_ops import build_row_ops
from nmtserve.export.testing import tiny_export
from nmtserve.export.verify import ExportVerificationError, verify_export
from nmtserve.model.checkpoint import load_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


@pytest.fixture(scope="session")
def model(tiny_dir: Path) -> torch.nn.Module:
    return load_checkpoint(tiny_dir.parent / "checkpoint")[0]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _sources(lengths: list[int], vocab: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ids = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = torch.from_numpy(rng.integers(4, vocab, n - 1))
        ids[i, n - 1] = 3
    return ids


def test_manifest_pins_every_file(tiny_dir: Path) -> None:
    manifest = json.loads((tiny_dir / MANIFEST).read_text())
    assert set(REQUIRED_FILES) <= set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert sha256_file(tiny_dir / name) == digest
    assert manifest["precision"] == "fp32" and manifest["opset"] == 18
    assert manifest["languages"] == {"source": "en", "target": "de"}
    assert manifest["dimensions"]["d_head"] * manifest["dimensions"]["n_heads"] == manifest["dimensions"]["d_model"]
    assert manifest["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["exporter"])
    fp32 = manifest["verification"]["fp32"]
    assert fp32["log_prob_max_abs_diff"] <= 1e-4 and fp32["cross_kv_max_abs_diff"] <= 1e-4
    assert not list(tiny_dir.parent.glob(".*.partial")), "staging directory left behind"


def _per_layer(prefix: str, tensors: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{prefix_keys.i: tensors[2i], prefix_values.i: tensors[2i+1]}: the graphs' per-layer K/V inputs."""
    names = per_layer((f"{prefix}_keys", f"{prefix}_values"), len(tensors) // 2)
    return dict(zip(names, tensors, strict=True))


def test_graph_signatures(tiny_dir: Path, model) -> None:
    names = io_names(model.config.n_decoder_layers)
    for graph in (ENCODER, DECODER_STEP, GATHER_ROWS, APPEND_ROWS, TRIM_CACHE, REORDER_CACHE):
        session = _session(tiny_dir / graph)
        assert [i.name for i in session.get_inputs()] == names[graph]["inputs"], graph
        assert [o.name for o in session.get_outputs()] == names[graph]["outputs"], graph


@pytest.mark.parametrize(("batch", "source_len"), [(1, 1), (1, 200), (7, 1), (7, 200)])
def test_encoder_dynamic_shapes(tiny_dir: Path, model, batch: int, source_len: int) -> None:
    lengths = [source_len] + [max(1, source_len - 3 * i) for i in range(1, batch)]
    source_ids = _sources(lengths, model.config.vocab_size)
    outputs = _session(tiny_dir / ENCODER).run(None, {"source_ids": source_ids.numpy()})
    with torch.inference_mode():
        pairs = model.cross_kv(model.encode(source_ids))
    config = model.config
    assert len(outputs) == 2 * config.n_decoder_layers
    for actual, expected in zip(outputs, [t for pair in pairs for t in pair], strict=True):
        assert actual.shape == (batch, config.n_heads, source_len, config.d_head)
        np.testing.assert_allclose(actual, expected.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("batch", "source_len"), [(1, 1), (7, 200)])
def test_cached_steps_equal_teacher_forcing(tiny_dir: Path, model, batch: int, source_len: int) -> None:
    """Cache lengths 0..n through the step graph (k = vocab) against one teacher-forced pass without a cache."""
    config, steps = model.config, 6
    vocab, layers, heads, d_head = config.vocab_size, config.n_decoder_layers, config.n_heads, config.d_head
    lengths = [source_len] + [max(1, source_len // (i + 1)) for i in range(1, batch)]
    source_ids = _sources(lengths, vocab, seed=batch)
    target = torch.cat([torch.full((batch, 1), config.bos_id), torch.randint(4, vocab, (batch, steps - 1))], dim=1)
    with torch.inference_mode():
        cross = model.cross_kv(model.encode(source_ids))
        logits, _ = model.decode(target, cross, model.source_mask(source_ids))
    expected = torch.log_softmax(logits, dim=-1).numpy()

    step = _session(tiny_dir / DECODER_STEP)
    cache, mask = [np.zeros((batch, heads, 0, d_head), np.float32)] * (2 * layers), np.zeros((batch, 0), bool)
    for t in range(steps):
        top_values, top_ids, *cache, mask = step.run(
            None,
            {
                "token_ids": target[:, t].numpy(),
                "positions": np.full(batch, t),
                "self_mask": mask,
                "source_mask": (source_ids != 0).numpy(),
                **dict(zip(("query_rows", "row_slots"), cross_slots([1] * batch), strict=True)),
                "k": np.array([vocab]),
                **_per_layer("self", cache),
                **_per_layer("cross", [t.numpy() for pair in cross for t in pair]),
            },
        )
        assert all(c.shape == (batch, heads, t + 1, d_head) for c in cache) and mask.all()
        assert np.all(np.diff(top_values, axis=1) <= 0), "TopK output must be sorted"
        actual = np.empty((batch, vocab), np.float32)
        np.put_along_axis(actual, top_ids, top_values, axis=1)
        np.testing.assert_allclose(actual, expected[:, t], atol=1e-4, rtol=0)


def test_step_reorder_and_small_k(tiny_dir: Path, model) -> None:
    """reorder_cache gives each row its parent's cache (-1 starts an empty history), then the step grows it by one
    valid slot and honours k; rows 0-1 are one sentence's beams (sharing its cross K/V), row 2 another's."""
    config = model.config
    layers, heads, d_head = config.n_decoder_layers, config.n_heads, config.d_head
    rng = np.random.default_rng(3)
    cache = [rng.standard_normal((2, heads, 3, d_head), np.float32) for _ in range(2 * layers)]
    cross = [rng.standard_normal((2, heads, 4, d_head), np.float32) for _ in range(2 * layers)]  # 2 sentences
    mask = np.array([[True, True, True], [False, True, True]])
    *moved, moved_mask = _session(tiny_dir / REORDER_CACHE).run(
        None, {**_per_layer("self", cache), "self_mask": mask, "reorder": np.array([1, 0, -1])}
    )
    for old, new in zip(cache, moved, strict=True):
        np.testing.assert_array_equal(new[0], old[1])
        np.testing.assert_array_equal(new[1], old[0])
    np.testing.assert_array_equal(moved_mask, [[False, True, True], [True, True, True], [False] * 3])
    feeds = {
        "token_ids": np.array([5, 6, 7]),
        "positions": np.array([3, 3, 0]),
        "self_mask": moved_mask,
        "source_mask": np.ones((2, 4), bool),
        **dict(zip(("query_rows", "row_slots"), cross_slots([2, 1]), strict=True)),
        "k": np.array([2]),
        **_per_layer("self", moved),
        **_per_layer("cross", cross),
    }
    top_values, top_ids, *new_cache, new_mask = _session(tiny_dir / DECODER_STEP).run(None, feeds)
    assert top_values.shape == (3, 2) and top_ids.dtype == np.int64
    for old, new in zip(moved, new_cache, strict=True):
        np.testing.assert_array_equal(new[:, :, :3], old)
    np.testing.assert_array_equal(new_mask, np.concatenate([moved_mask, np.ones((3, 1), bool)], axis=1))
    full = _session(tiny_dir / DECODER_STEP).run(None, {**feeds, "k": np.array([config.vocab_size])})
    np.testing.assert_array_equal(full[1][:, :2], top_ids)


@pytest.mark.parametrize(("dtype", "np_dtype"), [(TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16)])
def test_row_graphs(tmp_path: Path, dtype: int, np_dtype: type) -> None:
    layers = 2
    build_row_ops(tmp_path, dtype, layers)
    rng = np.random.default_rng(0)
    kv = [rng.standard_normal((3, 2, 5, 4)).astype(np_dtype) for _ in range(2 * layers)]
    mask, rows = rng.random((3, 5)) > 0.3, np.array([2, 0, 0])
    *gathered, gathered_mask = _session(tmp_path / GATHER_ROWS).run(
        None, {**_per_layer("cross", kv), "source_mask": mask, "rows": rows, "source_len": [4]}
    )
    for before, after in zip(kv, gathered, strict=True):
        np.testing.assert_array_equal(after, before[rows, :, :4])
    np.testing.assert_array_equal(gathered_mask, mask[rows, :4])
    longer = [rng.standard_normal((2, 2, 7, 4)).astype(np_dtype) for _ in range(2 * layers)]
    longer_mask = np.ones((2, 7), bool)
    new = {f"new_{name}": value for name, value in _per_layer("cross", longer).items()}
    *joined, joined_mask = _session(tmp_path / APPEND_ROWS).run(
        None, {**_per_layer("cross", kv), "source_mask": mask, **new, "new_source_mask": longer_mask}
    )
    for old, added, out in zip(kv, longer, joined, strict=True):
        assert out.shape == (5, 2, 7, 4)
        np.testing.assert_array_equal(out[:3, :, :5], old)
        np.testing.assert_array_equal(out[3:], added)
    np.testing.assert_array_equal(joined_mask, np.concatenate([np.pad(mask, ((0, 0), (0, 2))), longer_mask]))
    for keep in (0, 2, 5):
        *trimmed, trimmed_mask = _session(tmp_path / TRIM_CACHE).run(
            None, {**_per_layer("self", kv), "self_mask": mask, "keep": [keep]}
        )
        for before, after in zip(kv, trimmed, strict=True):
            np.testing.assert_array_equal(after, before[:, :, 5 - keep :])
        np.testing.assert_array_equal(trimmed_mask, mask[:, 5 - keep :])


def _derived_copy(tiny_dir: Path, tmp_path: Path, precision: str) -> Path:
    directory = tmp_path / precision
    shutil.copytree(tiny_dir, directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    if precision == "int8":
        quantize_int8(directory / ENCODER)
        quantize_int8(directory / DECODER_STEP)
    elif precision == "fp16":
        convert_fp16(directory / ENCODER, [])
        convert_fp16(directory / DECODER_STEP, ["topk_log_probs"])
        build_row_ops(directory, TensorProto.FLOAT16, manifest["dimensions"]["n_decoder_layers"])
    write_manifest(
        directory, {**manifest, "precision": precision, "cache_dtype": "float16" if precision == "fp16" else "float32"}
    )
    return directory


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_reduced_precision_is_close(tiny_dir: Path, model, tmp_path: Path, precision: str) -> None:
    directory = _derived_copy(tiny_dir, tmp_path, precision)
    if precision == "int8":
        ops = {n.op_type for n in onnx.load(str(directory / DECODER_STEP)).graph.node}
        assert ops & {"DynamicQuantizeMatMul", "MatMulInteger"}, ops
    else:
        step = onnx.load(str(directory / DECODER_STEP))
        types = {o.name: o.type.tensor_type.elem_type for o in step.graph.output}
        assert types["topk_log_probs"] == TensorProto.FLOAT and types["new_self_keys.0"] == TensorProto.FLOAT16
    report = verify_export(model, directory, precision)
    assert report.log_prob_max_abs_diff < 0.5 and report.top1_agreement > 0.9, report
    engine = Engine.load(directory, threads=1)  # the engine runs it end to end (fp16: fp16 cache on CPU)
    nbest = engine.translate_ids([[5, 6, 7, 3], [9, 3]], DecodingOptions(beam_size=2))
    assert all(len(n) == 1 and n[0].log_prob < 0 for n in nbest)


def test_fp16_export_end_to_end(tiny_dir: Path, tmp_path: Path) -> None:
    """``nmtserve export --precision fp16`` as a whole: the fp32 graphs are verified with fp32 row graphs, then
    converted, and the row graphs that ship move an fp16 cache; the result is measured, recorded and serves."""
    out = export_model(tiny_dir.parent / "checkpoint", tmp_path / "fp16", "fp16", progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["precision"] == "fp16" and manifest["cache_dtype"] == "float16"
    assert manifest["verification"]["fp32"]["log_prob_max_abs_diff"] <= 1e-4
    assert manifest["verification"]["fp16"]["top1_agreement"] > 0.9, manifest["verification"]["fp16"]
    inputs = {i.name: i.type.tensor_type.elem_type for i in onnx.load(str(out / REORDER_CACHE)).graph.input}
    assert inputs["self_keys.0"] == TensorProto.FLOAT16
    nbest = Engine.load(out, threads=1).translate_ids([[5, 6, 7, 3]], DecodingOptions(beam_size=2))
    assert len(nbest) == 1 and nbest[0][0].log_prob < 0


def test_reduced_export_is_gated_by_bleu(tiny_dir: Path, tmp_path: Path) -> None:
    """With a corpus, an int8 export is decoded on its dev split beside the verified fp32 graphs: the scores are
    recorded in the manifest, and an export that misses the tolerance is refused with nothing written."""
    corpus = write_corpus(tmp_path / "corpus", train=4, dev=6)
    checkpoint = tiny_dir.parent / "checkpoint"
    out = export_model(checkpoint, tmp_path / "int8", "int8", progress=False, bleu_corpus=corpus)
    record = json.loads((out / MANIFEST).read_text())["verification"]["int8"]["bleu"]
    assert record["split"] == "dev" and record["sentences"] == 6 and record["tolerance"] == 0.5
    assert record["int8"] >= record["fp32"] - 0.5
    assert not list(tmp_path.glob(".*")), "staging and the fp32 reference are cleaned up"

    impossible = tmp_path / "refused"
    with pytest.raises(ExportVerificationError, match="BLEU"):  # must beat fp32 by 1 BLEU: cannot
        export_model(checkpoint, impossible, "int8", progress=False, bleu_corpus=corpus, bleu_tolerance=-1.0)
    assert not impossible.exists() and not list(tmp_path.glob(".refused*"))


def test_verification_catches_a_wrong_graph(tiny_dir: Path, model, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    graph = onnx.load(str(broken / DECODER_STEP))
    weight = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(graph, str(broken / DECODER_STEP))
    with pytest.raises(ExportVerificationError):
        verify_export(model, broken, "fp32")


def test_fused_export_is_verified_and_serves(tiny_dir: Path, tmp_path: Path) -> None:
    """--fuse measures the encoder fusion, records the decision, and the result still loads and translates."""
    out = export_model(tiny_dir.parent / "checkpoint", tmp_path / "fused", "fp32", fuse=True, progress=False)
    fusion = json.loads((out / MANIFEST).read_text())["fusion"]
    assert fusion["requested"] and {"kept", "base_ms", "fused_ms"} <= fusion[ENCODER].keys()
    assert fusion[ENCODER]["max_abs_diff"] <= 1e-6 or not fusion[ENCODER]["kept"]
    nbest = Engine.load(out, threads=1).translate_ids([[5, 6, 7, 3]], DecodingOptions(beam_size=2))
    assert len(nbest) == 1 and nbest[0][0].log_prob < 0


def test_the_input_embedding_reads_rows_of_its_own_copy_when_small(model, tmp_path: Path, monkeypatch) -> None:
    """Small vocabularies get a [V, d] embedding for the step's Gather (onnxruntime's CPU Gather of [d, V] columns
    is slow); above ``SEPARATE_EMBEDDING_MAX`` the step gathers the output projection's columns. Same outputs."""
    from nmtserve.export import step_graph

    config = model.config
    rows_path = step_graph.build_decoder_step(model, tmp_path / "rows.onnx")
    monkeypatch.setattr(step_graph, "SEPARATE_EMBEDDING_MAX", 0)
    columns_path = step_graph.build_decoder_step(model, tmp_path / "columns.onnx")

    def embedding_gathers(path: Path) -> list[tuple[str, list[int], int]]:
        graph = onnx.load(str(path)).graph
        shapes = {t.name: list(t.dims) for t in graph.initializer}
        return [
            (node.input[0], shapes[node.input[0]], next((a.i for a in node.attribute if a.name == "axis"), 0))
            for node in graph.node
            if node.op_type == "Gather" and node.input[1] == "token_ids"
        ]

    vocab, d = config.vocab_size, config.d_model
    assert embedding_gathers(rows_path) == [("embedding", [vocab, d], 0)]
    assert embedding_gathers(columns_path) == [("output_projection", [d, vocab], 1)]
    batch, heads, d_head, layers = 3, config.n_heads, config.d_head, config.n_decoder_layers
    rng = np.random.default_rng(1)
    feeds = {
        "token_ids": rng.integers(4, vocab, batch),
        "positions": np.zeros(batch, np.int64),
        "self_mask": np.zeros((batch, 0), bool),
        "source_mask": np.ones((batch, 5), bool),
        **dict(zip(("query_rows", "row_slots"), cross_slots([1] * batch), strict=True)),
        "k": np.array([vocab]),
        **_per_layer("self", [np.zeros((batch, heads, 0, d_head), np.float32)] * (2 * layers)),
        **_per_layer("cross", [rng.standard_normal((batch, heads, 5, d_head)).astype(np.float32)] * (2 * layers)),
    }
    by_rows, by_columns = _session(rows_path).run(None, feeds), _session(columns_path).run(None, feeds)
    for a, b in zip(by_rows, by_columns, strict=True):
        np.testing.assert_array_equal(a, b)


def test_export_bleu_scores_int8_in_the_format_asked(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """``nmtserve export bleu --int8-kernels u8s7``: a user measures the 7-bit format on their own model before
    serving with it; the engine that scores is loaded in that format, and the scores and verdict are printed."""
    from nmtserve.cli.main import main

    corpus = write_corpus(tmp_path / "corpus", train=4, dev=6)
    int8 = tiny_export(tiny_dir.parent, "int8")
    argv = ["export", "bleu", str(tiny_dir), str(int8), "--corpus", str(corpus), "--tolerance", "100"]
    with caplog.at_level("INFO", logger="nmtserve.engine.runtime"):
        assert main([*argv, "--int8-kernels", "u8s7"]) == 0
    assert any("rewritten for u8s7" in record.getMessage() for record in caplog.records)
    out = capsys.readouterr().out
    assert "fp32: " in out and "other: " in out and "within 100.0 BLEU: True" in out
    with pytest.raises(SystemExit):  # an unknown format is refused by argparse, naming the choices
        main([*argv, "--int8-kernels", "s8s8"])
    assert "u8s7" in capsys.readouterr().err
