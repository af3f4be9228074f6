"""Training: the Section 5.3 schedule, token batches, and the resumable Trainer on a tiny synthetic corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrainedRun, copy_tokenizer, train_config
from safetensors.torch import load_file

from nmtserve.model.batching import TokenizedPairs, collate, make_batches
from nmtserve.model.checkpoint import load_checkpoint
from nmtserve.model.schedule import transformer_lr
from nmtserve.model.train import Trainer

# -- learning-rate schedule ------------------------------------------------------------------------------------


def test_lr_at_warmup_end_matches_the_paper() -> None:
    """d_model 512, warm-up 4000: at step 4000 lrate = 512^-0.5 * 4000^-0.5 (about 7.0e-4)."""
    assert transformer_lr(4000, 512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5, rel=1e-12)
    assert transformer_lr(4000, 512, 4000) == pytest.approx(6.987e-4, rel=1e-3)


def test_lr_is_linear_during_warmup_and_inverse_sqrt_after() -> None:
    """lrate = d^-0.5 * step * warmup^-1.5 before the warm-up ends and d^-0.5 * step^-0.5 after it."""
    for step in (1, 10, 1000, 3999):
        assert transformer_lr(step, 512, 4000) == pytest.approx(512**-0.5 * step * 4000**-1.5, rel=1e-12)
    for step in (4001, 8000, 100_000):
        assert transformer_lr(step, 512, 4000) == pytest.approx(512**-0.5 * step**-0.5, rel=1e-12)
    assert transformer_lr(2000, 512, 4000) == pytest.approx(transformer_lr(4000, 512, 4000) / 2)
    assert transformer_lr(16000, 512, 4000) == pytest.approx(transformer_lr(4000, 512, 4000) / 2)


def test_lr_peaks_at_warmup_and_scales_with_factor() -> None:
    """The maximum over steps is at step == warmup; ``factor`` multiplies; step 0 is treated as step 1."""
    rates = [transformer_lr(s, 256, 100) for s in range(1, 1001)]
    assert int(np.argmax(rates)) + 1 == 100
    assert transformer_lr(100, 256, 100, factor=0.8) == pytest.approx(0.8 * rates[99])
    assert transformer_lr(0, 256, 100) == rates[0] > 0


# -- batching --------------------------------------------------------------------------------------------------


def test_collate_adds_eos_bos_and_padding() -> None:
    """Source + EOS, BOS + target as decoder input, target + EOS as output, right-padded with pad id."""
    pairs = TokenizedPairs([np.array([5, 6]), np.array([7])], [np.array([8]), np.array([9, 10, 11])])
    source, target_in, target_out = collate(pairs, np.array([0, 1]), pad_id=0, bos_id=2, eos_id=3)
    assert source.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert target_in.tolist() == [[2, 8, 0, 0], [2, 9, 10, 11]]
    assert target_out.tolist() == [[8, 3, 0, 0], [9, 10, 11, 3]]


def test_make_batches_respects_token_budget_and_length_limit() -> None:
    """Every pair within max_length is in exactly one batch; rows x (longest side + 2) <= max_tokens."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, size=200)
    pairs = TokenizedPairs([np.zeros(n) for n in lengths], [np.zeros(max(1, n - 2)) for n in lengths])
    batches = make_batches(pairs, max_tokens=120, max_length=25, rng=np.random.default_rng(1))
    seen = np.concatenate(batches)
    sizes = np.array([max(len(s), len(t)) + 2 for s, t in zip(pairs.source, pairs.target, strict=True)])
    assert sorted(seen.tolist()) == np.flatnonzero(sizes <= 25).tolist()
    for batch in batches:
        assert len(batch) == 1 or len(batch) * sizes[batch].max() <= 120


# -- the Trainer -----------------------------------------------------------------------------------------------


def test_training_lowers_the_loss(trained_run: TrainedRun) -> None:
    """Over 30 steps both the training and the dev loss go down, evaluated at steps 10, 20, 30."""
    history = trained_run.trainer.history
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.5
    assert history[-1]["dev_loss"] < history[0]["dev_loss"] - 0.5
    assert all(0.0 <= h["dev_bleu"] <= 100.0 for h in history)


def test_training_writes_a_loadable_final_checkpoint(trained_run: TrainedRun) -> None:
    """final/ holds safetensors weights, config.json and the tokenizer; load_checkpoint restores the model."""
    final = trained_run.out / "final"
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors", "sentencepiece.model"]
    model, tokenizer, metadata = load_checkpoint(final)
    assert model.config.vocab_size == tokenizer.vocab_size == 100
    assert model.config.d_model == 32 and model.config.n_encoder_layers == 2
    assert metadata["steps"] == 30
    assert metadata["averaged_snapshots"] == [f"step_{s:07d}.safetensors" for s in (10, 20, 30)]
    # The final weights are the mean of the kept snapshots.
    snapshots = [load_file(trained_run.out / "snapshots" / name) for name in metadata["averaged_snapshots"]]
    weights = model.state_dict()
    for name in ("embedding.weight", "decoder_layers.1.feed_forward.outer.weight"):
        torch.testing.assert_close(weights[name], sum(s[name] for s in snapshots) / 3)


def test_training_writes_curves_and_no_pickles(trained_run: TrainedRun) -> None:
    """curves.png is a PNG; no .pt/.pkl/.pth/.bin files appear anywhere in the run directory."""
    assert (trained_run.out / "curves.png").read_bytes().startswith(b"\x89PNG")
    files = [p for p in trained_run.out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".pt", ".pth", ".pkl", ".pickle", ".bin"}]
    assert {"model.safetensors", "optimizer.safetensors", "trainer.json"} <= {p.name for p in files}


def test_resumed_run_continues_from_saved_step(trained_run: TrainedRun, tmp_path: Path) -> None:
    """Run 10 steps, then a new Trainer with max_steps=20 starts at 10 and ends at 20 with the same weights
    as the uninterrupted 30-step run had at step 20."""
    out = tmp_path / "run"
    copy_tokenizer(trained_run, out)
    Trainer(train_config(trained_run.corpus, out, max_steps=10)).train()
    assert json.loads((out / "state" / "trainer.json").read_text())["step"] == 10

    resumed = Trainer(train_config(trained_run.corpus, out, max_steps=20))
    assert resumed.step == 10 and [h["step"] for h in resumed.history] == [10]
    assert resumed.optimizer.state  # Adam moments were restored, not reset
    resumed.train()
    assert resumed.step == 20 and [h["step"] for h in resumed.history] == [10, 20]
    assert json.loads((out / "state" / "trainer.json").read_text())["step"] == 20
    _, _, metadata = load_checkpoint(out / "final")
    assert metadata["steps"] == 20

    uninterrupted = load_file(trained_run.out / "snapshots" / "step_0000020.safetensors")
    after_resume = load_file(out / "snapshots" / "step_0000020.safetensors")
    assert uninterrupted.keys() == after_resume.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(after_resume[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_trainer_at_max_steps_does_not_train_further(trained_run: TrainedRun, tmp_path: Path) -> None:
    """Re-running a finished run with the same max_steps keeps its step count and weights."""
    out = tmp_path / "run"
    copy_tokenizer(trained_run, out)
    first = Trainer(train_config(trained_run.corpus, out, max_steps=5))
    first.train()
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    again = Trainer(train_config(trained_run.corpus, out, max_steps=5))
    assert again.step == 5
    again.train()
    assert again.step == 5
    for name, value in again.model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_init_from_starts_a_new_run_from_a_checkpoint(trained_checkpoint: Path, trained_run: TrainedRun, tmp_path):
    """--init-from copies the checkpoint's tokenizer and weights, so training can continue from a shipped model."""
    config = train_config(trained_run.corpus, tmp_path / "continued", max_steps=0)
    config.init_from = trained_checkpoint
    trainer = Trainer(config)
    assert (tmp_path / "continued" / "sentencepiece.model").read_bytes() == (
        trained_checkpoint / "sentencepiece.model"
    ).read_bytes()
    shipped = load_file(trained_checkpoint / "model.safetensors")
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, shipped[name]), name
