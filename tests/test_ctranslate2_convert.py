"""CTranslate2 conversion of our checkpoints: same weights, same maths, same beam search, token for token.

The bench compares our ONNX engine with CTranslate2; that comparison is only fair if CTranslate2 computes what
our model computes. Scoring checks the weight layout, position table and LayerNorm epsilon per token; beam
search (1 and 4) checks decoding rules on a model that stops at varied lengths and on an overfit one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nmtserve.bench.ctranslate2_convert import build_spec, convert_checkpoint, save_spec, sinusoidal_table
from nmtserve.bench.ctranslate2_engine import CTranslate2Engine, absolute_cap
from nmtserve.engine import DecodingOptions
from nmtserve.export.testing import make_tiny_checkpoint
from nmtserve.model.beam_search import beam_search
from nmtserve.model.checkpoint import load_checkpoint
from nmtserve.model.transformer import Transformer

pytest.importorskip("ctranslate2")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny string-reversal checkpoint (shared with the engine tests' root when they run in the same session)."""
    root = tmp_path_factory.getbasetemp() / "tiny-model"
    checkpoint = root / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        make_tiny_checkpoint(root)
    return checkpoint


@pytest.fixture(scope="session")
def tiny_ct2(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> CTranslate2Engine:
    return CTranslate2Engine(convert_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("ct2") / "fp32"), threads=1)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> Transformer:
    return load_checkpoint(tiny_checkpoint)[0]


def _sources(count: int, seed: int, vocab: int = 64) -> list[list[int]]:
    """At least one real token before EOS: CTranslate2 answers an EOS-only source without decoding."""
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(4, vocab, rng.integers(1, 14))] + [3] for _ in range(count)]


def _reference(model: Transformer, sources: list[list[int]], beam: int, max_length: int = 40):
    options = DecodingOptions(beam_size=beam, max_length=max_length, max_length_ratio=0.0, max_length_offset=max_length)
    return beam_search(model, sources, options)


def test_position_table_is_the_models(tiny_model: Transformer) -> None:
    config = tiny_model.config
    assert np.array_equal(sinusoidal_table(config.max_positions, config.d_model), tiny_model.positions.numpy())


def test_scores_match_teacher_forced_log_probs(tiny_model: Transformer, tiny_ct2: CTranslate2Engine) -> None:
    """Per-token log-probs of given targets: any layout, position-offset or epsilon error shows here first."""
    sources = _sources(6, seed=1)
    rng = np.random.default_rng(2)
    targets = [[int(t) for t in rng.integers(4, 64, n)] for n in (1, 3, 7, 12, 20, 30)]
    scored = tiny_ct2.score_ids(sources, targets)
    with torch.inference_mode():
        for source, target, got in zip(sources, targets, scored, strict=True):
            source_ids = torch.tensor([source])
            cross_kv = tiny_model.cross_kv(tiny_model.encode(source_ids))
            logits, _ = tiny_model.decode(torch.tensor([[2, *target]]), cross_kv, tiny_model.source_mask(source_ids))
            log_probs = torch.log_softmax(logits[0], dim=-1)
            expected = [float(log_probs[i, token]) for i, token in enumerate([*target, 3])]
            assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 4])
def test_beam_search_matches_reference(tiny_model: Transformer, tiny_ct2: CTranslate2Engine, beam: int) -> None:
    sources = _sources(12, seed=3)
    reference = _reference(tiny_model, sources, beam)
    got = tiny_ct2.translate_ids(sources, absolute_cap(DecodingOptions(beam_size=beam, max_length=40)))
    assert [o.token_ids for o in got] == [nbest[0].token_ids for nbest in reference]
    for out, nbest in zip(got, reference, strict=True):
        assert out.score == pytest.approx(nbest[0].score, abs=1e-3)
    lengths = {len(o.token_ids) for o in got}
    assert len(lengths) > 2 and 40 in lengths  # EOS at varied lengths and the max-length cut both exercised


def test_min_length_and_length_penalty(tiny_model: Transformer, tiny_ct2: CTranslate2Engine) -> None:
    sources = _sources(8, seed=4)
    fields = {"beam_size": 3, "min_length": 5, "length_penalty": 0.6, "max_length": 12}
    reference = beam_search(tiny_model, sources, DecodingOptions(**fields, max_length_ratio=0.0, max_length_offset=12))
    got = tiny_ct2.translate_ids(sources, absolute_cap(DecodingOptions(**fields)))
    assert [o.token_ids for o in got] == [nbest[0].token_ids for nbest in reference]


def test_overfit_model_reproduces_its_targets(overfit, tmp_path: Path) -> None:
    """The memorised pairs come out of CTranslate2 exactly, at beam 1 and 4, from an fp32 and an int8 model."""
    config = overfit.model.config
    weights = {name: tensor.numpy() for name, tensor in overfit.model.state_dict().items()}
    pieces = ["<pad>", "<unk>", "<s>", "</s>", *[f"t{i}" for i in range(4, config.vocab_size)]]
    for quantization in (None, "int8"):
        directory = save_spec(build_spec(config, weights, pieces), tmp_path / str(quantization), quantization, {})
        engine = CTranslate2Engine(directory, threads=1, precision="int8" if quantization else "fp32")
        for beam in (1, 4):
            got = engine.translate_ids(overfit.sources, absolute_cap(DecodingOptions(beam_size=beam, max_length=20)))
            assert [o.token_ids for o in got] == overfit.targets
            if quantization is None:
                reference = _reference(overfit.model, overfit.sources, beam, max_length=20)
                assert [o.token_ids for o in got] == [nbest[0].token_ids for nbest in reference]


def test_int8_at_load_time_runs_and_mostly_agrees(tiny_checkpoint: Path, tiny_ct2: CTranslate2Engine) -> None:
    int8 = CTranslate2Engine(tiny_ct2.model_dir, threads=1, precision="int8")
    sources = _sources(12, seed=5)
    options = absolute_cap(DecodingOptions(beam_size=4, max_length=40))
    fp32 = [o.token_ids for o in tiny_ct2.translate_ids(sources, options)]
    quantized = [o.token_ids for o in int8.translate_ids(sources, options)]
    assert sum(a[:3] == b[:3] for a, b in zip(fp32, quantized, strict=True)) >= len(sources) // 2


def test_eos_only_source_gives_empty_output(tiny_ct2: CTranslate2Engine) -> None:
    """A known difference: CTranslate2 returns an empty translation for an empty (EOS-only) source, while our
    engines decode it. The benchmark skips empty lines for that reason."""
    got = tiny_ct2.translate_ids([[3]], absolute_cap(DecodingOptions(beam_size=1, max_length=10)))
    assert got[0].token_ids == []


def test_relative_length_cap_is_refused(tiny_ct2: CTranslate2Engine) -> None:
    with pytest.raises(ValueError, match="absolute_cap"):
        tiny_ct2.translate_ids(_sources(2, seed=6), DecodingOptions(beam_size=2))
