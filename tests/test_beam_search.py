"""Reference beam search: agreement with greedy decoding and with itself without the KV cache, and its limits."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, Overfit, random_sources, tiny_model

from nmtserve.model.beam_search import DecodingOptions, Hypothesis, beam_search, greedy_search, translate_ids
from nmtserve.model.transformer import Transformer


def sequence_log_prob(model: Transformer, source: list[int], tokens: list[int]) -> float:
    """Sum of log P(token | prefix) under one teacher-forced pass: an independent check on beam scores."""
    src = torch.tensor([source])
    target_in = torch.tensor([[TINY.bos_id, *tokens[:-1]]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(src, target_in)[0].float(), dim=-1)
    return float(log_probs[torch.arange(len(tokens)), torch.tensor(tokens)].sum())


def test_beam_one_equals_greedy_on_random_sources() -> None:
    """beam_size=1 yields exactly greedy_search's tokens for several sources decoded as one padded batch."""
    model = tiny_model(seed=1)
    sources = random_sources(6, seed=20, lengths=(2, 10))
    options = DecodingOptions(beam_size=1, max_length=12)
    nbest = beam_search(model, sources, options)
    for source, hyps in zip(sources, nbest, strict=True):
        expected = greedy_search(model, source, options.max_length_for(len(source)))
        assert hyps[0].token_ids == expected


def test_beam_one_equals_greedy_when_eos_is_predicted(overfit: Overfit) -> None:
    """On a trained model (sentences end with EOS before the cap) beam 1 still equals greedy."""
    options = DecodingOptions(beam_size=1, max_length=30)
    nbest = beam_search(overfit.model, overfit.sources, options)
    greedy = [greedy_search(overfit.model, s, options.max_length_for(len(s))) for s in overfit.sources]
    assert [h[0].token_ids for h in nbest] == greedy == overfit.targets


@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("beam_size", [1, 4])
def test_cache_and_no_cache_give_the_same_hypotheses(pre_norm: bool, beam_size: int) -> None:
    """use_cache=True and use_cache=False return the same n-best tokens, with scores within 1e-5."""
    model = tiny_model(seed=2, pre_norm=pre_norm)
    sources = random_sources(4, seed=21)
    options = DecodingOptions(beam_size=beam_size, num_hypotheses=beam_size, max_length=10)
    cached = beam_search(model, sources, options, use_cache=True)
    uncached = beam_search(model, sources, options, use_cache=False)
    for a, b in zip(cached, uncached, strict=True):
        assert [h.token_ids for h in a] == [h.token_ids for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_cache_and_no_cache_agree_on_a_trained_model(overfit: Overfit) -> None:
    """Same agreement when hypotheses finish at different steps and sentences leave the batch early."""
    options = DecodingOptions(beam_size=3, num_hypotheses=3, max_length=20)
    cached = beam_search(overfit.model, overfit.sources, options, use_cache=True)
    uncached = beam_search(overfit.model, overfit.sources, options, use_cache=False)
    for a, b in zip(cached, uncached, strict=True):
        assert [h.token_ids for h in a] == [h.token_ids for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_nbest_sorted_sized_and_scored_by_the_model(overfit: Overfit, length_penalty: float) -> None:
    """n-best lists are sorted by score, hold num_hypotheses entries, and score = log P / length^penalty."""
    options = DecodingOptions(beam_size=4, num_hypotheses=3, length_penalty=length_penalty, max_length=12)
    for source, hyps in zip(overfit.sources, beam_search(overfit.model, overfit.sources, options), strict=True):
        assert len(hyps) == 3
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        cap = options.max_length_for(len(source))
        for h in hyps:
            # Shorter than the cap means the hypothesis ended with EOS, which counts in its length and score.
            tokens = h.token_ids + ([TINY.eos_id] if len(h.token_ids) < cap else [])
            assert h.log_prob == pytest.approx(sequence_log_prob(overfit.model, source, tokens), abs=1e-4)
            assert h.score == pytest.approx(h.log_prob / len(tokens) ** length_penalty, abs=1e-5)


def test_num_hypotheses_is_respected() -> None:
    """Each n-best list has exactly num_hypotheses distinct entries."""
    model = tiny_model(seed=3)
    sources = random_sources(3, seed=22)
    for n in (1, 2, 5):
        for hyps in beam_search(model, sources, DecodingOptions(beam_size=5, num_hypotheses=n, max_length=8)):
            assert len(hyps) == n and all(isinstance(h, Hypothesis) for h in hyps)
            assert len({tuple(h.token_ids) for h in hyps}) == n


def test_more_hypotheses_than_beams_is_rejected() -> None:
    """num_hypotheses > beam_size raises ValueError."""
    with pytest.raises(ValueError, match="num_hypotheses"):
        beam_search(tiny_model(), random_sources(1, seed=0), DecodingOptions(beam_size=2, num_hypotheses=3))


def test_max_length_for_formula() -> None:
    """The cap is min(max_length, int(ratio * source_len) + offset), and at least 1."""
    options = DecodingOptions(max_length=50, max_length_ratio=1.5, max_length_offset=3)
    assert options.max_length_for(10) == 18
    assert options.max_length_for(40) == 50
    assert DecodingOptions(max_length=0).max_length_for(5) == 1


@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(beam_size=3, max_length=5),  # absolute cap
        DecodingOptions(beam_size=3, max_length=100, max_length_ratio=0.5, max_length_offset=1),  # relative cap
        DecodingOptions(beam_size=1, max_length=7),
    ],
)
def test_outputs_never_exceed_max_length(options: DecodingOptions) -> None:
    """No hypothesis is longer than options.max_length_for(source length); an untrained model reaches the cap."""
    model = tiny_model(seed=4)
    sources = random_sources(5, seed=23, lengths=(2, 12))
    lengths = []
    for source, hyps in zip(sources, beam_search(model, sources, options), strict=True):
        cap = options.max_length_for(len(source))
        assert all(len(h.token_ids) <= cap for h in hyps)
        lengths.append(len(hyps[0].token_ids) == cap)
    assert any(lengths)  # the cap was actually binding


def test_max_length_truncates_a_trained_model(overfit: Overfit) -> None:
    """With a cap below the memorised target length the output is the target's prefix of exactly cap tokens."""
    options = DecodingOptions(beam_size=1, max_length=2)
    for target, hyps in zip(overfit.targets, beam_search(overfit.model, overfit.sources, options), strict=True):
        assert hyps[0].token_ids == target[:2]


def test_min_length_is_respected(overfit: Overfit) -> None:
    """No hypothesis ends before min_length tokens, even where the model would stop earlier."""
    longest = max(map(len, overfit.targets))
    options = DecodingOptions(beam_size=4, num_hypotheses=4, min_length=longest + 2, max_length=30)
    for hyps in beam_search(overfit.model, overfit.sources, options):
        assert all(len(h.token_ids) >= longest + 2 for h in hyps)
    # Without the constraint the model stops at its target length, so the constraint above did bind.
    unconstrained = beam_search(overfit.model, overfit.sources, DecodingOptions(beam_size=4, max_length=30))
    assert all(len(h[0].token_ids) <= longest for h in unconstrained)


def test_results_follow_source_order_and_do_not_depend_on_batching(overfit: Overfit) -> None:
    """A batch returns per-source n-best lists in input order, equal to decoding each source alone."""
    options = DecodingOptions(beam_size=3, num_hypotheses=2, max_length=15)
    sources = overfit.sources[::-1] + random_sources(2, seed=24)
    batched = beam_search(overfit.model, sources, options)
    for source, hyps in zip(sources, batched, strict=True):
        alone = beam_search(overfit.model, [source], options)[0]
        assert [h.token_ids for h in hyps] == [h.token_ids for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-5)
    assert translate_ids(overfit.model, sources, options) == [h[0].token_ids for h in batched]
