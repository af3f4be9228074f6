"""Ragged rows (``nmtserve export --ragged``): per-row self-attention cache lengths, against the PyTorch reference.

The ragged export's decoder step is the verified standard graph with its self-attention swapped for
``GroupQueryAttention`` over a right-padded, in-place cache (``export/ragged.py``, ``cache.RaggedHostCache``).
These tests run the real export, real onnxruntime sessions and the PyTorch reference beam search.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from nmtserve.engine import DecodingOptions, Engine, EngineError, Hypothesis
from nmtserve.engine.cache import RaggedHostCache
from nmtserve.engine.model_dir import DECODER_STEP, MANIFEST
from nmtserve.export.exporter import export_model
from nmtserve.export.ragged import check_ragged, to_ragged
from nmtserve.export.testing import tiny_export
from nmtserve.model.beam_search import beam_search
from nmtserve.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def standard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


@pytest.fixture(scope="module")
def ragged_dir(standard_dir: Path) -> Path:
    return export_model(standard_dir.parent / "checkpoint", standard_dir.parent / "onnx-fp32-ragged", ragged=True)


@pytest.fixture(scope="module")
def ragged(ragged_dir: Path) -> Engine:
    return Engine.load(ragged_dir, threads=1)


@pytest.fixture(scope="module")
def standard(standard_dir: Path) -> Engine:
    return Engine.load(standard_dir, threads=1)


@pytest.fixture(scope="module")
def model(standard_dir: Path):
    return load_checkpoint(standard_dir.parent / "checkpoint")[0]


def _sources(count: int, seed: int = 0, vocab: int = 64) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = [1, 3, 17, 6, 2, 40, 9, 12, 5, 25][:count]
    return [[int(t) for t in rng.integers(4, vocab, n - 1)] + [3] for n in lengths]


def _assert_same(reference: list[list], engine: list[list[Hypothesis]], tolerance: float = 1e-4) -> None:
    assert len(reference) == len(engine)
    for ref_nbest, got_nbest in zip(reference, engine, strict=True):
        assert [h.token_ids for h in got_nbest] == [h.token_ids for h in ref_nbest]
        for ref, got in zip(ref_nbest, got_nbest, strict=True):
            assert got.score == pytest.approx(ref.score, abs=tolerance)
            assert got.log_prob == pytest.approx(ref.log_prob, abs=tolerance)


def test_ragged_export_interface(ragged_dir: Path) -> None:
    """The manifest says ragged; the step graph has one GroupQueryAttention per decoder layer, no self mask."""
    manifest = json.loads((ragged_dir / MANIFEST).read_text())
    assert manifest["cache_layout"] == "ragged"
    assert manifest["verification"]["ragged"]["log_prob_max_abs_diff_vs_left_padded"] < 1e-4
    graph = onnx.load(str(ragged_dir / DECODER_STEP)).graph
    layers = manifest["dimensions"]["n_decoder_layers"]
    ops = [node.op_type for node in graph.node]
    assert ops.count("GroupQueryAttention") == layers
    assert ops.count("MultiHeadAttention") == layers  # cross-attention stays
    assert [i.name for i in graph.input] == manifest["io"][DECODER_STEP]["inputs"]
    assert "self_mask" not in manifest["io"][DECODER_STEP]["inputs"]
    assert "new_self_mask" not in [o.name for o in graph.output]


def test_to_ragged_refuses_a_graph_without_the_expected_attention(standard_dir: Path) -> None:
    step = onnx.load(str(standard_dir / DECODER_STEP))
    with pytest.raises(ValueError, match="expected 3"):
        to_ragged(step, layers=3)  # the tiny model has fewer decoder layers


def test_ragged_step_matches_left_padded_step_with_a_join(standard_dir: Path, ragged_dir: Path, model) -> None:
    config = model.config
    diff = check_ragged(
        standard_dir / DECODER_STEP,
        ragged_dir / DECODER_STEP,
        layers=config.n_decoder_layers,
        heads=config.n_heads,
        d_head=config.d_head,
        vocab=config.vocab_size,
        dtype=np.dtype(np.float32),
        steps=30,
    )
    assert diff < 1e-4


OPTION_SETS = [
    {"beam_size": 4},
    {"beam_size": 1},
    {"beam_size": 4, "num_hypotheses": 4, "length_penalty": 0.6},
    {"beam_size": 3, "min_length": 4, "max_length": 9},
    {"beam_size": 2, "max_length_ratio": 0.5, "max_length_offset": 1},
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_ragged_matches_reference_beam_search(ragged: Engine, model, options: dict) -> None:
    sources = _sources(10)
    reference = beam_search(model, sources, DecodingOptions(**options))
    _assert_same(reference, ragged.translate_ids(sources, DecodingOptions(**options), max_batch_size=4))


def test_ragged_continuous_batching_gives_the_stand_alone_results(ragged: Engine, model) -> None:
    """Sentences join a running batch with long histories, with mixed beams and a cancellation of the longest:
    each gets the PyTorch reference's result, as if decoded alone."""
    sources = _sources(8, seed=5)
    beams = [DecodingOptions(beam_size=4), DecodingOptions(beam_size=1), DecodingOptions(beam_size=2)]
    expected = {i: beam_search(model, [s], beams[i % 3])[0] for i, s in enumerate(sources)}
    batch = ragged.new_batch()
    batch.add([sources[5]], DecodingOptions(beam_size=4, min_length=30), keys=["gone"])  # the longest history
    results, pending, steps = {}, list(range(7)), 0
    while len(batch) or pending:
        if pending and steps % 3 == 2:  # one newcomer every third step, into an ever longer history
            i = pending.pop(0)
            batch.add([sources[i]], beams[i % 3], keys=[i])
        if steps == 12:
            assert batch.cancel("gone")
        results.update({done.key: done.hypotheses for done in batch.step()})
        steps += 1
    assert sorted(results) == list(range(7))
    for i in range(7):
        _assert_same([expected[i]], [results[i]])


def test_ragged_cache_shrinks_its_layout_when_the_longest_history_leaves(ragged: Engine, model) -> None:
    """A sentence decodes 66 steps, young ones join, then it is cancelled: the rows are laid out anew for the
    young histories (a row stride under half the long one's), and every young sentence still gets the reference's
    result."""
    sources = _sources(6, seed=7)
    options = DecodingOptions(beam_size=2)
    expected = {i: beam_search(model, [s], options)[0] for i, s in enumerate(sources)}
    batch = ragged.new_batch()
    cache = batch._cache
    assert isinstance(cache, RaggedHostCache)
    batch.add([sources[5]], DecodingOptions(beam_size=4, min_length=70), keys=["long"])
    for _ in range(66):
        assert not batch.step()
    batch.add(sources[:5], options, keys=list(range(5)))
    results = {done.key: done.hypotheses for done in batch.step()}
    stride_with_the_long_history = cache._capacity
    assert batch.cancel("long")
    results.update({done.key: done.hypotheses for done in batch.step()})
    assert len(batch) and cache._capacity < stride_with_the_long_history / 2
    while len(batch):
        results.update({done.key: done.hypotheses for done in batch.step()})
    assert stride_with_the_long_history > 67
    assert sorted(results) == list(range(5))
    for i in range(5):
        _assert_same([expected[i]], [results[i]])


@pytest.mark.parametrize("seed", [0, 1])
def test_ragged_and_left_padded_agree_under_random_traffic(ragged: Engine, standard: Engine, seed: int) -> None:
    """Lockstep random joins, cancellations, beam sizes and min lengths (the cache's buffers grow in rows and in
    capacity on the way): both layouts finish the same sentences at the same steps with the same hypotheses."""
    rng = np.random.default_rng(seed)
    left, right = standard.new_batch(), ragged.new_batch()
    serial, live, finished = 0, set(), 0
    for step in range(80):
        if step < 50 and rng.random() < 0.5:
            count = int(rng.integers(1, 4))
            sources = _sources(10, seed=int(rng.integers(1 << 30)))[:count]
            options = [
                DecodingOptions(beam_size=int(rng.choice([1, 2, 4])), min_length=int(rng.choice([0, 0, 3])))
                for _ in sources
            ]
            keys = list(range(serial, serial + count))
            serial += count
            left.add(sources, options, keys)
            right.add(sources, options, keys)
            live.update(keys)
        if live and rng.random() < 0.1:
            gone = int(rng.choice(sorted(live)))
            assert left.cancel(gone) and right.cancel(gone)
            live.discard(gone)
        from_left, from_right = left.step(), right.step()
        assert [f.key for f in from_left] == [f.key for f in from_right]
        for a, b in zip(from_left, from_right, strict=True):
            _assert_same([a.hypotheses], [b.hypotheses])
        live.difference_update(f.key for f in from_left)
        finished += len(from_left)
        assert left.rows == right.rows
    assert finished > 20


def test_ragged_export_is_cpu_only(ragged_dir: Path) -> None:
    with pytest.raises(EngineError, match="CPU only"):
        Engine.load(ragged_dir, device="cuda")
    with pytest.raises(ValueError, match="CPU and in_place"):
        Engine.load(ragged_dir, threads=1).new_batch(in_place=False)


def test_ragged_fp16_is_refused_before_any_work(standard_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CPU only"):
        export_model(standard_dir.parent / "checkpoint", tmp_path / "out", "fp16", ragged=True, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("export", "expected"), [("ragged", "continuous"), ("standard", "request")])
def test_auto_batching_is_continuous_for_a_ragged_export_only(
    ragged_dir: Path, standard_dir: Path, export: str, expected: str
) -> None:
    """The default ``batching = "auto"`` (server/config.py ``batching_mode``): a real server on each export
    runs its engine thread in that mode and says so in GetModelInfo; translations are the engine's."""
    import grpc

    from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
    from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc
    from nmtserve.server.background import BackgroundServer
    from nmtserve.server.config import ServerConfig

    model_dir = ragged_dir if export == "ragged" else standard_dir
    config = ServerConfig(model=model_dir, port=0, metrics_port=0, threads=1, warmup=False)
    assert config.batching == "auto"
    with BackgroundServer(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        assert stub.GetModelInfo(pb.GetModelInfoRequest()).batching == expected
        scheduler = server.server._scheduler
        assert scheduler is not None and scheduler.continuous == (expected == "continuous")
        texts = ["a b c", "d e f g h"]
        reply = stub.Translate(pb.TranslateRequest(texts=texts), timeout=60)
        engine = Engine.load(model_dir, threads=1)
        assert [t.hypotheses[0].text for t in reply.translations] == [n[0].text for n in engine.translate(texts)]
