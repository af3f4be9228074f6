"""The Transformer against the paper: masks, positional encodings, weight tying, KV cache, and that it can learn."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, Overfit, random_sources, tiny_model

from nmtserve.model.beam_search import DecodingOptions, beam_search
from nmtserve.model.checkpoint import load_checkpoint, save_checkpoint
from nmtserve.model.transformer import (
    MultiHeadAttention,
    Transformer,
    TransformerConfig,
    scaled_dot_product_attention,
    sinusoidal_positions,
)


def full_logits(model: Transformer, source: list[int], target_in: list[int]) -> torch.Tensor:
    """Teacher-forced logits [target_len, vocab] of one pair, through encode / cross_kv / decode without a cache."""
    with torch.no_grad():
        src = torch.tensor([source])
        logits, _ = model.decode(torch.tensor([target_in]), model.cross_kv(model.encode(src)), model.source_mask(src))
    return logits[0]


# -- attention and masks ---------------------------------------------------------------------------------------


def test_attention_mask_gives_zero_weight_to_masked_keys() -> None:
    """With values = identity the output rows are the attention weights: exactly 0 on masked keys, summing to 1."""
    torch.manual_seed(0)
    batch, heads, tq, tk, d = 2, 3, 4, 6, 8
    query, keys = torch.randn(batch, heads, tq, d) * 5, torch.randn(batch, heads, tk, d) * 5
    mask = torch.rand(batch, 1, tq, tk) > 0.4
    mask[..., 0] = True  # every query may attend to at least one key
    weights = scaled_dot_product_attention(query, keys, torch.eye(tk).expand(batch, heads, tk, tk), mask)
    masked = ~mask.expand_as(weights)
    assert masked.any()
    assert torch.all(weights[masked] == 0.0)
    assert torch.all(weights[~masked] > 0.0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch, heads, tq))
    # The allowed weights are a softmax of Q K^T / sqrt(d) over the allowed keys alone.
    scores = (query @ keys.transpose(-2, -1) / math.sqrt(d)).masked_fill(masked, float("-inf"))
    torch.testing.assert_close(weights, torch.softmax(scores, dim=-1))


def test_attention_output_ignores_values_of_masked_keys() -> None:
    """Changing the values (and keys) behind masked positions does not change the output."""
    torch.manual_seed(1)
    query, keys, values = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.tensor([True, True, False, True, False])[None, None, None, :]
    out = scaled_dot_product_attention(query, keys, values, mask)
    keys2, values2 = keys.clone(), values.clone()
    keys2[..., [2, 4], :] += 100.0
    values2[..., [2, 4], :] = torch.randn(1, 2, 2, 4) * 1000
    assert torch.equal(out, scaled_dot_product_attention(query, keys2, values2, mask))
    assert not torch.allclose(out, scaled_dot_product_attention(query, keys2, values2, None))


def test_multi_head_attention_shapes() -> None:
    """Heads split to [batch, heads, time, d_head] and merge back to [batch, time, d_model]."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(TINY)
    x, memory = torch.randn(2, 5, TINY.d_model), torch.randn(2, 7, TINY.d_model)
    keys, values = mha.project_kv(memory)
    assert keys.shape == values.shape == (2, TINY.n_heads, 7, TINY.d_head)
    assert mha(x, keys, values, None).shape == (2, 5, TINY.d_model)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_causal_mask_hides_future_target_tokens(pre_norm: bool) -> None:
    """Changing target token j leaves the logits at positions < j unchanged, and changes those at >= j."""
    model = tiny_model(pre_norm=pre_norm)
    source = random_sources(1, seed=5)[0]
    target = [TINY.bos_id, 10, 11, 12, 13, 14, 15]
    j = 4
    changed = list(target)
    changed[j] = 40
    before, after = full_logits(model, source, target), full_logits(model, source, changed)
    torch.testing.assert_close(before[:j], after[:j], rtol=0, atol=1e-6)
    assert (before[j:] - after[j:]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("pre_norm", [False, True])
def test_source_padding_does_not_change_decoder_logits(pre_norm: bool) -> None:
    """Appending padding to a source changes nothing else: the decoder logits agree within 1e-5."""
    model = tiny_model(pre_norm=pre_norm)
    source = random_sources(1, seed=6)[0]
    target = [TINY.bos_id, 20, 21, 22, 23]
    plain = full_logits(model, source, target)
    padded = full_logits(model, source + [TINY.pad_id] * 5, target)
    assert (plain - padded).abs().max() < 1e-5
    # The padded positions really are looked at when not masked: the check above is not vacuous.
    other = full_logits(model, source + [7] * 5, target)
    assert (plain - other).abs().max() > 1e-3


def test_padding_within_a_batch_matches_unbatched() -> None:
    """A short source padded inside a batch with a longer one gets the same logits as on its own."""
    model = tiny_model()
    short, long = [5, 6, 7, TINY.eos_id], [8, 9, 10, 11, 12, 13, 14, TINY.eos_id]
    target = torch.tensor([[TINY.bos_id, 30, 31], [TINY.bos_id, 32, 33]])
    batch = torch.tensor([short + [TINY.pad_id] * 4, long])
    with torch.no_grad():
        logits = model(batch, target)
    torch.testing.assert_close(logits[0], full_logits(model, short, target[0].tolist()), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[1], full_logits(model, long, target[1].tolist()), rtol=0, atol=1e-5)


# -- positional encodings and embeddings -----------------------------------------------------------------------


@pytest.mark.parametrize("d_model", [32, 512])
def test_sinusoidal_positions_follow_the_paper(d_model: int) -> None:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)) and PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), Section 3.5."""
    table = sinusoidal_positions(200, d_model)
    assert table.shape == (200, d_model)
    for pos in (0, 1, 7, 50, 199):
        for i in (0, 1, 5, d_model // 2 - 1):
            angle = pos / 10000 ** (2 * i / d_model)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_embedding_is_scaled_by_sqrt_d_model_plus_positions() -> None:
    """embed(ids) = E[ids] * sqrt(d_model) + PE[first_position + t], Section 3.4."""
    model = tiny_model()
    ids = torch.tensor([[5, 9, 3, 17]])
    expected = model.embedding.weight[ids] * math.sqrt(TINY.d_model)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(ids), expected + sinusoidal_positions(8, TINY.d_model)[:4])
        torch.testing.assert_close(model.embed(ids, 3), expected + sinusoidal_positions(8, TINY.d_model)[3:7])


def test_output_projection_is_the_embedding_matrix() -> None:
    """Exactly one vocab x d_model parameter exists, and logits = decoder output @ embedding.weight^T."""
    model = tiny_model(vocab_size=101)  # 101 so that no other weight has the vocab x d shape by coincidence
    shaped = [name for name, p in model.named_parameters() if p.shape == (101, TINY.d_model)]
    assert shaped == ["embedding.weight"]

    captured = {}
    model.decoder_norm.register_forward_hook(lambda module, args, out: captured.update(hidden=out))
    source, target = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 8, 9]])
    with torch.no_grad():
        logits = model(source, target)
    torch.testing.assert_close(logits, captured["hidden"] @ model.embedding.weight.T)


def test_tied_embedding_receives_gradient_from_the_output_layer() -> None:
    """A token that never occurs in the input still gets an embedding gradient: the output layer is tied to it."""
    model = tiny_model()
    source, target_in = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 8, 9]])
    logits = model(source, target_in)
    torch.nn.functional.cross_entropy(logits[0], torch.tensor([8, 9, 3])).backward()
    grad = model.embedding.weight.grad
    assert grad is not None
    assert grad[50].abs().sum() > 0  # id 50 appears nowhere in source or target


# -- incremental decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cached_incremental_decoding_equals_full_decoding(pre_norm: bool) -> None:
    """Step-by-step decoding with the self-attention KV cache matches one teacher-forced pass (< 1e-5)."""
    model = tiny_model(pre_norm=pre_norm)
    sources = random_sources(3, seed=7)
    width = max(map(len, sources))
    source = torch.tensor([s + [TINY.pad_id] * (width - len(s)) for s in sources])
    target = torch.tensor([[TINY.bos_id, 10, 20, 30, 40, 50, 60, 11, 21]] * 3)
    target[1, 1:] = torch.randint(4, TINY.vocab_size, (8,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        memory = model.encode(source)
        cross_kv, mask = model.cross_kv(memory), model.source_mask(source)
        full, _ = model.decode(target, cross_kv, mask)
        cache, steps = None, []
        for t in range(target.size(1)):
            logits, cache = model.decode(target[:, t : t + 1], cross_kv, mask, cache)
            steps.append(logits)
        incremental = torch.cat(steps, dim=1)
    assert cache is not None and all(k.size(2) == target.size(1) for k, _ in cache)
    assert incremental.shape == full.shape == (3, target.size(1), TINY.vocab_size)
    assert (incremental - full).abs().max() < 1e-5


def test_pre_norm_variant_has_final_layer_norms() -> None:
    """pre_norm=True builds final encoder/decoder LayerNorms, runs, and computes something different from post-norm."""
    pre, post = tiny_model(pre_norm=True), tiny_model(pre_norm=False)
    assert isinstance(pre.encoder_norm, torch.nn.LayerNorm) and isinstance(pre.decoder_norm, torch.nn.LayerNorm)
    source, target = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 8, 9]])
    with torch.no_grad():
        logits = pre(source, target)
        assert logits.shape == (1, 3, TINY.vocab_size) and torch.isfinite(logits).all()
        assert not torch.allclose(logits, post(source, target))


def test_config_round_trips_through_dict_and_rejects_unknown_keys() -> None:
    """TransformerConfig.from_dict(to_dict()) is the identity; unknown keys raise ValueError."""
    assert TransformerConfig.from_dict(TINY.to_dict()) == TINY
    assert TINY.d_head == TINY.d_model // TINY.n_heads
    with pytest.raises(ValueError, match="unknown config keys"):
        TransformerConfig.from_dict({**TINY.to_dict(), "n_layers": 3})


# -- learning --------------------------------------------------------------------------------------------------


def test_tiny_model_overfits_a_tiny_batch(overfit: Overfit) -> None:
    """After a few hundred Adam steps on five pairs, the loss is near zero and beam search returns the targets."""
    assert overfit.losses[-1] < 0.05 < overfit.losses[0]
    nbest = beam_search(overfit.model, overfit.sources, DecodingOptions(beam_size=4))
    assert [hyps[0].token_ids for hyps in nbest] == overfit.targets


# -- checkpoints -----------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path, spm_path: Path) -> None:
    """save_checkpoint -> load_checkpoint restores config, metadata, tokenizer and bit-identical logits."""
    model = tiny_model(seed=4, vocab_size=100)
    directory = save_checkpoint(tmp_path / "ckpt", model, spm_path, metadata={"note": "test"})
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors", "sentencepiece.model"]
    loaded, tokenizer, metadata = load_checkpoint(directory)
    assert loaded.config == model.config and metadata == {"note": "test"}
    assert not loaded.training and tokenizer.vocab_size == 100
    source, target = torch.tensor([[5, 60, 7, 99, 3]]), torch.tensor([[2, 8, 9, 90]])
    with torch.no_grad():
        assert torch.equal(model(source, target), loaded(source, target))


def test_load_checkpoint_rejects_missing_weights_and_vocab_mismatch(tmp_path: Path, spm_path: Path) -> None:
    """A directory without weights raises FileNotFoundError; a tokenizer of another size raises ValueError."""
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "bad", tiny_model(vocab_size=64), spm_path)  # tokenizer has 100 pieces
    with pytest.raises(ValueError, match="pieces"):
        load_checkpoint(tmp_path / "bad")
