"""Forced target prefixes (the target-language token of M2M-100 / NLLB) and the decoder start id, in the engine and
the PyTorch reference, on the tiny model exported once.

Both decoders must agree token for token with per-sentence prefixes mixed in one batch; a forced token's log-prob
counts as 0 (transformers' ``ForcedBOSTokenLogitsProcessor``), which a teacher-forced rescoring checks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nmtserve.engine import DecodingOptions, Engine, Hypothesis
from nmtserve.export.exporter import export_model
from nmtserve.export.testing import tiny_export
from nmtserve.model.beam_search import beam_search, greedy_search
from nmtserve.model.checkpoint import TOKENIZER, load_checkpoint, save_checkpoint
from nmtserve.model.transformer import Transformer, fairseq_positions, sinusoidal_positions

EOS = 3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> Engine:
    return Engine.load(tiny_dir, threads=1)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Transformer:
    return load_checkpoint(tiny_dir.parent / "checkpoint")[0]


def _sources(count: int, seed: int = 0, vocab: int = 64) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = [1, 3, 17, 6, 2, 40, 9, 12, 5, 25][:count]
    return [[int(t) for t in rng.integers(4, vocab, n - 1)] + [EOS] for n in lengths]


# Per sentence: none, one "language" token, two tokens, a prefix longer than some sentences' max length.
PREFIXES = [[], [5], [7, 9], [5], [11], [], [7, 9], [60, 61, 62, 63, 4], [5], [12]]


def _assert_same(reference: list[list[Hypothesis]], engine: list[list[Hypothesis]]) -> None:
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
    {"beam_size": 3, "min_length": 4, "max_length": 9},
    {"beam_size": 2, "max_length": 3},
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_mixed_prefixes_in_one_batch_match_reference(engine: Engine, model: Transformer, options: dict) -> None:
    sources = _sources(10)
    reference = beam_search(model, sources, DecodingOptions(**options), target_prefixes=PREFIXES)
    got = engine.translate_ids(sources, DecodingOptions(**options), target_prefixes=PREFIXES)
    _assert_same(reference, got)
    for prefix, nbest in zip(PREFIXES, got, strict=True):
        for hypothesis in nbest:  # the forced tokens open every hypothesis (cut by a short max length)
            assert hypothesis.token_ids[: len(prefix)] == prefix[: len(hypothesis.token_ids)]


def test_uncached_reference_agrees(model: Transformer) -> None:
    """The reference's forced steps with and without its K/V cache: a check on the reference itself."""
    sources, options = _sources(6, seed=2), DecodingOptions(beam_size=3)
    cached = beam_search(model, sources, options, target_prefixes=PREFIXES[:6])
    uncached = beam_search(model, sources, options, use_cache=False, target_prefixes=PREFIXES[:6])
    _assert_same(cached, uncached)


def test_prefix_changes_the_translation(engine: Engine) -> None:
    """Not a no-op: forcing a token other than the free choice changes what follows it."""
    sources = _sources(10, seed=1)
    free = engine.translate_ids(sources, DecodingOptions(beam_size=1))
    prefixes = [[60 if h[0].token_ids[:1] != [60] else 61] for h in free]
    forced = engine.translate_ids(sources, DecodingOptions(beam_size=1), target_prefixes=prefixes)
    assert [h[0].token_ids[0] for h in forced] == [p[0] for p in prefixes]
    assert sum(f[0].token_ids[1:] != g[0].token_ids for f, g in zip(forced, free, strict=True)) >= 5


@torch.inference_mode()
def _teacher_forced_log_prob(model: Transformer, source: list[int], target: list[int], skip: int) -> float:
    """Sum of the model's log-probs of ``target`` + EOS after the decoder start, the first ``skip`` tokens left out."""
    memory = model.encode(torch.tensor([source]))
    mask = model.source_mask(torch.tensor([source]))
    decoder_in = torch.tensor([[model.config.start_id, *target]])
    logits, _ = model.decode(decoder_in, model.cross_kv(memory), mask)
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)
    wanted = [*target, EOS]
    return float(sum(log_probs[i, t] for i, t in enumerate(wanted) if i >= skip))


def test_forced_tokens_count_zero_in_the_score(engine: Engine, model: Transformer) -> None:
    sources = _sources(10, seed=3)
    prefixes = [[5], [7, 9]] * 5
    options = DecodingOptions(beam_size=4, length_penalty=1.0, max_length=60)
    results = engine.translate_ids(sources, options, target_prefixes=prefixes)
    ended = 0
    for source, prefix, nbest in zip(sources, prefixes, results, strict=True):
        best = nbest[0]
        if len(best.token_ids) + 1 >= options.max_length_for(len(source)):
            continue  # stopped at max length: no EOS to rescore
        ended += 1
        expected = _teacher_forced_log_prob(model, source, best.token_ids, skip=len(prefix))
        assert best.log_prob == pytest.approx(expected, abs=1e-4)
        assert best.score == pytest.approx(expected / (len(best.token_ids) + 1), abs=1e-4)  # forced tokens count
    assert ended >= 5


def test_greedy_reference_with_prefix(engine: Engine, model: Transformer) -> None:
    sources = _sources(10, seed=4)
    got = engine.translate_ids(sources, DecodingOptions(beam_size=1, max_length=30), target_prefixes=PREFIXES)
    for source, prefix, nbest in zip(sources, PREFIXES, got, strict=True):
        limit = DecodingOptions(max_length=30).max_length_for(len(source))
        assert nbest[0].token_ids == greedy_search(model, source, limit, target_prefix=prefix)


@pytest.mark.parametrize("in_place", [True, False], ids=["host-cache", "graph-cache"])
def test_step_api_prefixes_join_a_running_batch(engine: Engine, in_place: bool) -> None:
    """Sentences with different prefixes joining at different steps get their stand-alone results."""
    sources = _sources(8, seed=5)
    beams = [DecodingOptions(beam_size=4), DecodingOptions(beam_size=1), DecodingOptions(beam_size=2)]
    expected = {
        i: engine.translate_ids([s], beams[i % 3], target_prefixes=[PREFIXES[i]])[0] for i, s in enumerate(sources)
    }
    batch = engine.new_batch(in_place)
    results, pending, steps = {}, list(range(8)), 0
    while len(batch) or pending:
        if pending:  # one newcomer a step: some are forcing while others already choose
            i = pending.pop(0)
            batch.add([sources[i]], beams[i % 3], keys=[i], target_prefixes=[PREFIXES[i]])
        results.update({done.key: done.hypotheses for done in batch.step()})
        steps += 1
    assert sorted(results) == list(range(8))
    for i in range(8):
        _assert_same([expected[i]], [results[i]])


def test_bad_prefixes_are_refused(engine: Engine) -> None:
    batch = engine.new_batch()
    with pytest.raises(ValueError, match="target prefix token ids"):
        batch.add([[5, EOS]], DecodingOptions(), target_prefixes=[[64]])
    with pytest.raises(ValueError, match="one target prefix per source"):
        batch.add([[5, EOS], [6, EOS]], DecodingOptions(), target_prefixes=[[5]])
    assert len(batch) == 0


def test_fairseq_positions_equal_transformers_table() -> None:
    """Bit-identical to ``M2M100SinusoidalPositionalEmbedding`` (even and odd widths), rows after the padding index."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.m2m_100.modeling_m2m_100 import M2M100SinusoidalPositionalEmbedding

    for width in (32, 33, 1024):
        hf = M2M100SinusoidalPositionalEmbedding(600, width, padding_idx=1)
        ids = torch.tensor([[5] * 600])  # no padding: position i reads row i + padding_idx + 1
        expected = hf(ids)[0]
        assert torch.equal(sinusoidal_positions(600, width, "sinusoidal-fairseq", offset=2), expected)
        assert torch.equal(fairseq_positions(602, width)[2:], expected)
    assert transformers is not None


def test_decoder_start_and_fairseq_positions_export(tiny_dir: Path, tmp_path: Path) -> None:
    """A model that starts decoding from EOS with the fairseq position table (M2M-100's options) exports, verifies
    and decodes as the reference does, prefixes included; its manifest records the start id."""
    trained = load_checkpoint(tiny_dir.parent / "checkpoint")[0]
    config = replace(trained.config, decoder_start_id=EOS, positions="sinusoidal-fairseq", position_offset=2)
    model = Transformer(config).eval()
    model.load_state_dict(trained.state_dict())
    assert not torch.equal(model.positions, trained.positions)
    checkpoint = save_checkpoint(
        tmp_path / "ckpt", model, tiny_dir.parent / "checkpoint" / TOKENIZER, metadata={"task": "reverse"}
    )
    out = export_model(checkpoint, tmp_path / "onnx", "fp32", progress=False)
    engine = Engine.load(out, threads=1)
    assert engine.info.decoder_start_id == EOS and engine.info.bos_id == 2
    sources, options = _sources(10, seed=6), DecodingOptions(beam_size=4)
    _assert_same(
        beam_search(model, sources, options, target_prefixes=PREFIXES),
        engine.translate_ids(sources, options, target_prefixes=PREFIXES),
    )
    # The start id matters: the same weights starting from BOS decode differently.
    assert engine.translate_ids(sources, options) != Engine.load(tiny_dir, threads=1).translate_ids(sources, options)
