"""The torch-free ONNX engine against the PyTorch reference beam search, on a tiny random model exported once."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nmtserve.engine import DecodingOptions, Engine, EngineError, Hypothesis, ModelDirError
from nmtserve.engine.batch import ENCODER_CALL_TOKENS, cross_slots, encoder_calls
from nmtserve.engine.beam import stable_slots
from nmtserve.engine.engine import cohorts
from nmtserve.engine.model_dir import DECODER_STEP, ENCODER, MANIFEST, TOKENIZER
from nmtserve.export.testing import tiny_export
from nmtserve.model.beam_search import beam_search, greedy_search
from nmtserve.model.checkpoint import load_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


@pytest.fixture(scope="session")
def engine(tiny_dir: Path) -> Engine:
    return Engine.load(tiny_dir, threads=1)


@pytest.fixture(scope="session")
def model(tiny_dir: Path):
    return load_checkpoint(tiny_dir.parent / "checkpoint")[0]


def _sources(count: int, seed: int = 0, vocab: int = 64) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = [1, 3, 17, 6, 2, 40, 9, 12, 5, 25][:count]
    return [[int(t) for t in rng.integers(4, vocab, n - 1)] + [3] for n in lengths]


def _assert_same(reference: list[list], engine: list[list[Hypothesis]]) -> None:
    assert len(reference) == len(engine)
    for ref_nbest, got_nbest in zip(reference, engine, strict=True):
        assert [h.token_ids for h in got_nbest] == [h.token_ids for h in ref_nbest]
        for ref, got in zip(ref_nbest, got_nbest, strict=True):
            assert got.score == pytest.approx(ref.score, abs=1e-4)
            assert got.log_prob == pytest.approx(ref.log_prob, abs=1e-4)


OPTION_SETS = [
    {"beam_size": 4},
    {"beam_size": 1},
    {"beam_size": 4, "num_hypotheses": 4, "length_penalty": 0.6},
    {"beam_size": 4, "length_penalty": 0.0, "num_hypotheses": 2},
    {"beam_size": 3, "min_length": 4, "max_length": 9},
    {"beam_size": 1, "min_length": 5, "max_length": 9},
    {"beam_size": 2, "max_length_ratio": 0.5, "max_length_offset": 1},
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_matches_reference_beam_search(engine: Engine, model, options: dict) -> None:
    sources = _sources(10)
    reference = beam_search(model, sources, DecodingOptions(**options))
    _assert_same(reference, engine.translate_ids(sources, DecodingOptions(**options)))


def test_outputs_vary_in_length(engine: Engine) -> None:
    """The fixture model must exercise both EOS and the max-length cut, or the parity tests prove little."""
    sources = _sources(10)
    options = DecodingOptions()
    results = engine.translate_ids(sources, options)
    hit_max = [len(n[0].token_ids) == options.max_length_for(len(s)) for s, n in zip(sources, results, strict=True)]
    assert any(hit_max) and not all(hit_max)


def test_beam_one_is_greedy(engine: Engine, model) -> None:
    sources = _sources(10, seed=1)
    options = DecodingOptions(beam_size=1)
    got = engine.translate_ids(sources, options)
    for source, nbest in zip(sources, got, strict=True):
        assert nbest[0].token_ids == greedy_search(model, source, options.max_length_for(len(source)))


def test_nbest_sorted_and_counted(engine: Engine) -> None:
    for nbest in engine.translate_ids(_sources(6), DecodingOptions(beam_size=4, num_hypotheses=3)):
        scores = [h.score for h in nbest]
        assert len(nbest) == 3 and scores == sorted(scores, reverse=True)
    unscored = engine.translate_ids(_sources(2), DecodingOptions(return_scores=False))
    assert all(h.score is None and h.log_prob is None for nbest in unscored for h in nbest)


def test_max_and_min_length(engine: Engine) -> None:
    sources = _sources(10, seed=2)
    for nbest in engine.translate_ids(sources, DecodingOptions(max_length=3, num_hypotheses=4)):
        assert all(1 <= len(h.token_ids) <= 3 for h in nbest)
    relative = DecodingOptions(max_length_ratio=1.0, max_length_offset=0)
    for source, nbest in zip(sources, engine.translate_ids(sources, relative), strict=True):
        assert len(nbest[0].token_ids) <= len(source)
    for nbest in engine.translate_ids(sources, DecodingOptions(min_length=6, max_length=8, num_hypotheses=4)):
        assert all(6 <= len(h.token_ids) <= 8 for h in nbest)


def test_eos_is_stripped_and_ends_hypotheses(engine: Engine, model) -> None:
    sources = _sources(10, seed=3)
    options = DecodingOptions(beam_size=4, num_hypotheses=4)
    ended_early = 0
    for source, nbest in zip(sources, engine.translate_ids(sources, options), strict=True):
        for h in nbest:
            assert model.config.bos_id not in h.token_ids
            ended_early += len(h.token_ids) < options.max_length_for(len(source))
            assert h.log_prob <= 0
    assert ended_early > 0


def test_batched_equals_one_by_one(engine: Engine) -> None:
    sources = _sources(10, seed=4)
    options = DecodingOptions(beam_size=4, num_hypotheses=2)
    batched = engine.translate_ids(sources, options, max_batch_size=4)  # refilled as sentences finish
    singles = [engine.translate_ids([s], options)[0] for s in sources]
    _assert_same(singles, batched)


def test_cohorts_bound_sentences_and_padded_tokens() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 40]
    # sorted: 1, 3, 3 (three sentences: full) | 5, then 7 would make 2 x 7 > 12 | 7 | 9 | 40 (over the budget: alone)
    assert cohorts(lengths, max_sentences=3, max_tokens=12) == [[1, 3, 4], [0], [5], [2], [6]]
    assert cohorts(lengths, max_sentences=3) == [[1, 3, 4], [0, 5, 2], [6]]  # no token bound: sorted chunks
    assert cohorts([], max_sentences=4, max_tokens=8) == []
    rng = np.random.default_rng(7)
    for _ in range(20):
        lengths = [int(n) for n in rng.integers(1, 60, int(rng.integers(1, 40)))]
        found = cohorts(lengths, max_sentences=8, max_tokens=100)
        assert sorted(i for c in found for i in c) == list(range(len(lengths)))  # every source once
        order = [i for c in found for i in c]
        assert [lengths[i] for i in order] == sorted(lengths)  # consecutive runs of the length order
        for c in found:
            assert len(c) == 1 or (len(c) <= 8 and len(c) * max(lengths[i] for i in c) <= 100)
    with pytest.raises(ValueError, match="at least 1"):
        cohorts([3], max_sentences=4, max_tokens=0)


def test_token_bounded_cohorts_equal_one_by_one(engine: Engine) -> None:
    """A token bound changes which sentences decode together, never what they decode to (fp32)."""
    sources = _sources(10, seed=5)
    options = DecodingOptions(beam_size=4, num_hypotheses=2)
    bounded = engine.translate_ids(sources, options, max_batch_size=8, max_batch_tokens=30)
    singles = [engine.translate_ids([s], options)[0] for s in sources]
    _assert_same(singles, bounded)


@pytest.mark.parametrize("in_place", [True, False], ids=["host-cache", "graph-cache"])
def test_step_api_continuous_batching(engine: Engine, in_place: bool) -> None:
    """Sentences joining a running batch, mixed beam sizes and a cancellation (of the longest history, so the
    cache is trimmed) give the stand-alone results, with the cache in host buffers (CPU) or in device values moved
    by graphs (CUDA's path, which runs on CPU too)."""
    sources = _sources(8, seed=5)
    beams = [DecodingOptions(beam_size=4), DecodingOptions(beam_size=1), DecodingOptions(beam_size=2)]
    expected = {i: engine.translate_ids([s], beams[i % 3])[0] for i, s in enumerate(sources)}
    batch = engine.new_batch(in_place)
    batch.add([sources[7]], DecodingOptions(beam_size=4, min_length=5), keys=["gone"])  # the longest history
    results, pending, steps = {}, list(range(3, 7)), 0
    while len(batch) or pending:
        if steps == 1:
            batch.add(sources[:3], [beams[i % 3] for i in range(3)], keys=[0, 1, 2])
        if pending and steps % 2 == 1:  # one newcomer every other step
            i = pending.pop(0)
            batch.add([sources[i]], beams[i % 3], keys=[i])
        if steps == 2:
            assert batch.cancel("gone") and not batch.cancel("gone")
        results.update({done.key: done.hypotheses for done in batch.step()})
        steps += 1
    assert sorted(results) == list(range(7))
    for i in range(7):
        _assert_same([expected[i]], [results[i]])
    assert batch.rows == 0 and batch.step() == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_host_and_graph_caches_agree_under_random_traffic(engine: Engine, seed: int) -> None:
    """Two batches driven in lockstep by the same random joins, cancellations, beam sizes and min lengths, one with
    the host cache (rows moved in place, buffers grown as needed) and one with the graph cache: every step
    finishes the same sentences with the same hypotheses, bit for bit."""
    rng = np.random.default_rng(seed)
    host, graph = engine.new_batch(in_place=True), engine.new_batch(in_place=False)
    serial, live, finished = 0, set(), 0
    for step in range(60):
        if step < 40 and rng.random() < 0.5:
            count = int(rng.integers(1, 4))
            sources = _sources(10, seed=int(rng.integers(1 << 30)))[:count]
            options = [
                DecodingOptions(beam_size=int(rng.choice([1, 2, 4])), min_length=int(rng.choice([0, 0, 3])))
                for _ in sources
            ]
            keys = list(range(serial, serial + count))
            serial += count
            assert host.add(sources, options, keys) == graph.add(sources, options, keys)
            live.update(keys)
        if live and rng.random() < 0.1:
            gone = int(rng.choice(sorted(live)))
            assert host.cancel(gone) and graph.cancel(gone)
            live.discard(gone)
        from_host, from_graph = host.step(), graph.step()
        assert [(f.key, f.hypotheses) for f in from_host] == [(f.key, f.hypotheses) for f in from_graph]
        live.difference_update(f.key for f in from_host)
        finished += len(from_host)
        assert host.rows == graph.rows
    assert finished > 20  # the traffic really ran sentences to the end


def test_translate_text(engine: Engine) -> None:
    results = engine.translate(["the cat sat on the mat", "", "open the file"], DecodingOptions(num_hypotheses=2))
    assert [len(n) for n in results] == [2, 2, 2]
    assert all(isinstance(h.text, str) for nbest in results for h in nbest)
    assert results[0][0].text == engine.tokenizer.decode(results[0][0].token_ids)


def test_rejects_bad_requests(engine: Engine) -> None:
    with pytest.raises(ValueError, match="num_hypotheses"):
        engine.translate_ids([[5, 3]], DecodingOptions(beam_size=2, num_hypotheses=3))
    with pytest.raises(ValueError, match="token ids"):
        engine.translate_ids([[5, 999, 3]])
    with pytest.raises(ValueError, match="tokens"):
        engine.translate_ids([[]])


@pytest.mark.parametrize("damage", ["corrupt-step", "missing-tokenizer", "missing-manifest", "corrupt-manifest"])
def test_damaged_model_dir_is_refused(tiny_dir: Path, tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "model"
    shutil.copytree(tiny_dir, directory)
    if damage == "corrupt-step":
        with open(directory / DECODER_STEP, "r+b") as handle:
            handle.seek(100)
            handle.write(b"\x00\x01\x02")
        expected = DECODER_STEP
    elif damage == "missing-tokenizer":
        (directory / TOKENIZER).unlink()
        expected = TOKENIZER
    elif damage == "missing-manifest":
        (directory / MANIFEST).unlink()
        expected = MANIFEST
    else:
        (directory / MANIFEST).write_text("{not json")
        expected = MANIFEST
    with pytest.raises(ModelDirError, match=expected.replace(".", r"\.")):
        Engine.load(directory)


def test_cuda_without_provider_is_a_clear_error(tiny_dir: Path) -> None:
    with pytest.raises(EngineError, match="CUDAExecutionProvider"):
        Engine.load(tiny_dir, device="cuda")


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import pkgutil, sys, importlib\n"
        "import nmtserve.server, nmtserve.engine\n"
        "for m in pkgutil.walk_packages(nmtserve.server.__path__, 'nmtserve.server.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_stable_slots_keep_hypotheses_in_their_parents_rows() -> None:
    """The best child of each parent stays in the parent's row; other children fill the rows left free, in order."""
    np.testing.assert_array_equal(stable_slots([0, 0, 1, 2]), [0, 3, 1, 2])
    np.testing.assert_array_equal(stable_slots([3, 3, 3, 0]), [3, 1, 2, 0])
    np.testing.assert_array_equal(stable_slots([0, 0, 0, 0]), [0, 1, 2, 3])  # step 0: one row becomes the beam


def test_cross_slots_lay_out_each_sentences_rows() -> None:
    """Sentences with 2, 1 and 3 consecutive rows: W = 3 slots each; spare slots repeat the sentence's last row."""
    query_rows, row_slots = cross_slots([2, 1, 3])
    np.testing.assert_array_equal(query_rows, [[0, 1, 1], [2, 2, 2], [3, 4, 5]])
    np.testing.assert_array_equal(row_slots, [0, 1, 3, 6, 7, 8])
    np.testing.assert_array_equal(query_rows.reshape(-1)[row_slots], np.arange(6))  # every row reads its own slot


def test_cpu_sessions_leave_residual_add_and_layer_norm_unfused(tiny_dir: Path, tmp_path: Path) -> None:
    """onnxruntime's CPU SkipLayerNormalization kernel is slower than the Add + LayerNormalization it fuses
    (docs/benchmarks.md): the engine's CPU sessions must not fuse them; a plain session does."""
    import onnx
    import onnxruntime as ort

    from nmtserve.engine.runtime import RuntimeConfig, _session_options, open_session

    def optimized_ops(open_fn, name: str) -> set[str]:
        options = _session_options(RuntimeConfig(threads=1))
        options.optimized_model_filepath = str(tmp_path / name)
        open_fn(options)
        return {node.op_type for node in onnx.load(str(tmp_path / name)).graph.node}

    step = tiny_dir / DECODER_STEP
    engine_ops = optimized_ops(lambda options: open_session(step, RuntimeConfig(threads=1), options), "engine.onnx")
    plain_ops = optimized_ops(
        lambda options: ort.InferenceSession(str(step), options, providers=["CPUExecutionProvider"]), "plain.onnx"
    )
    assert "SkipLayerNormalization" in plain_ops  # the fusion applies to this graph...
    assert "SkipLayerNormalization" not in engine_ops and "LayerNormalization" in engine_ops  # ...and is off


def test_fill_holes_moves_the_last_sentence_into_a_hole_of_its_size() -> None:
    """A sentence that left is replaced by the last live one when their rows match, so rows in between stay."""
    from nmtserve.engine.batch import fill_holes
    from nmtserve.engine.beam import Sentence

    def sentence(key: str, rows: int) -> Sentence:
        s = Sentence(key, 0, 3, DecodingOptions(), 10)
        s.scores = np.zeros(rows, np.float32)
        return s

    a, b, c, d = sentence("a", 4), sentence("b", 4), sentence("c", 1), sentence("d", 4)
    assert [s.key for s in fill_holes([(a, 4), (None, 4), (b, 4), (d, 4)])] == ["a", "d", "b"]
    # the last live sentence needs other rows than the hole freed: the rows after the hole shift, as before
    assert [s.key for s in fill_holes([(None, 4), (a, 4), (c, 1)])] == ["a", "c"]
    # holes at the end stay holes; several holes are filled from the back
    assert [s.key for s in fill_holes([(None, 4), (a, 4), (None, 4), (b, 4), (d, 4), (None, 4)])] == ["d", "a", "b"]


def test_encoder_calls_minimise_padded_tokens_plus_a_cost_per_call() -> None:
    """Against every split of consecutive runs (brute force): the chosen one is never dearer, covers the sources in
    order, and a GPU (no call cost given) or lengths close enough keep one call."""
    rng = np.random.default_rng(0)

    def cost(lengths: list[int], calls: list[slice], call_tokens: int) -> int:
        return sum(call_tokens + (c.stop - c.start) * max(lengths[c]) for c in calls)

    for _ in range(200):
        lengths = [int(n) for n in rng.integers(1, 80, rng.integers(1, 9))]
        calls = encoder_calls(lengths, 24)
        assert [i for c in calls for i in range(c.start, c.stop)] == list(range(len(lengths)))
        cheapest = min(
            cost(lengths, [slice(a, b) for a, b in zip((0, *cuts), (*cuts, len(lengths)), strict=True)], 24)
            for k in range(len(lengths))
            for cuts in itertools.combinations(range(1, len(lengths)), k)
        )
        assert cost(lengths, calls, 24) == cheapest
    assert encoder_calls([3, 70, 4], None) == [slice(0, 3)]
    assert encoder_calls([10, 11, 12], 24) == [slice(0, 3)]
    assert len(encoder_calls([2, 3, 60, 61], 24)) == 2


def test_sentences_of_mixed_lengths_joining_together_are_encoded_in_runs_with_unchanged_results(engine: Engine) -> None:
    """One ``add`` of short and long sources encodes them in several calls (counted on the real runtime), and every
    sentence decodes as it does alone."""
    sources = sorted(_sources(10, seed=6), key=len)
    options = DecodingOptions(beam_size=4, num_hypotheses=2)
    singles = [engine.translate_ids([s], options)[0] for s in sources]
    calls: list[int] = []
    run = engine.runtime.run

    def counting_run(graph: str, *args, **kwargs):
        if graph == ENCODER:
            calls.append(graph)
        return run(graph, *args, **kwargs)

    batch = engine.new_batch()
    engine.runtime.run = counting_run  # type: ignore[method-assign]
    try:
        batch.add(sources, options, keys=list(range(len(sources))))
    finally:
        del engine.runtime.run  # back to the class's method
    assert len(calls) == len(encoder_calls([len(s) for s in sources], ENCODER_CALL_TOKENS)) > 1
    results = {}
    while len(batch):
        results.update({done.key: done.hypotheses for done in batch.step()})
    _assert_same(singles, [results[i] for i in range(len(sources))])
