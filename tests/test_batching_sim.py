"""The batching simulation (``loadtest/batching_sim.py``): real engine calls on a CPU-time clock, scheduler rules."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.export.testing import tiny_export
from nmtserve.loadtest.batching_sim import POLICIES, Policy, p99_wins, simulate


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32"), threads=1)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_arrival_is_answered_after_it_arrived(engine: Engine, policy: str) -> None:
    rng = np.random.default_rng(0)
    sources = [[int(t) for t in rng.integers(4, 64, n)] + [3] for n in rng.integers(1, 20, 40)]
    arrivals = np.cumsum(rng.exponential(0.002, len(sources)))  # faster than the engine: a backlog forms
    latency = simulate(engine, sources, arrivals, replace(POLICIES[policy], max_batch_size=8))
    assert np.isfinite(latency).all() and (latency > 0).all()


def test_request_mode_makes_a_late_arrival_wait_for_the_batch(engine: Engine) -> None:
    """Past the join window, request-level batching makes an arrival wait for the running batch to drain; in
    continuous mode it joins at once, so its latency is lower."""
    long_source = [5] * 30 + [3]
    sources = [long_source] * 4 + [[7, 8, 3]]
    # min_length makes the long batch run at least 40 steps whatever the random model predicts (EOS is barred)
    options = DecodingOptions(beam_size=4, min_length=40)
    assert options.max_length_for(len(long_source)) > 40
    # the short sentence arrives at step 20 (on a clock of decode steps, which no machine load moves), well past
    # the 8-step join window and well before the long batch's 40th step
    arrivals = np.array([0, 0, 0, 0, 20])
    waited = simulate(engine, sources, arrivals, Policy("request"), options, step_clock=True)[-1]
    joined = simulate(engine, sources, arrivals, Policy("continuous"), options, step_clock=True)[-1]
    assert waited >= 40 - 20  # it waited for the batch to drain
    assert joined < waited


def test_wins_are_counted_per_model_load_and_policy() -> None:
    def run(mode: str, p50: float, p99: float) -> dict:
        return {"fraction": 0.5, "model": "m", "mode": mode, "p50_ms": p50, "p99_ms": p99}

    seeds = [
        {"runs": [run("request", 100, 500), run("continuous", 90, 400)]},
        {"runs": [run("request", 100, 500), run("continuous", 120, 600)]},
    ]
    assert p99_wins(seeds) == ["m 50% continuous: lower p99 than request-level in 1/2 seeds, lower p50 in 1/2"]


def test_a_batch_closes_to_joins_after_max_later_joins(engine: Engine) -> None:
    """With ``max_later_joins`` 2, two short sentences join a long running one and the third waits for it to
    finish; with no limit the third joins at once (a clock of decode steps, which no machine load moves)."""
    # EOS is barred until step 40 or a sentence's output cap: the long one runs 40 steps or more, the short ones
    # their cap of 2 x 3 + 10 = 16
    options = DecodingOptions(beam_size=4, min_length=40)
    sources = [[5] * 30 + [3]] + [[7, 8, 3]] * 3
    arrivals = np.array([0, 10, 11, 20])  # the third short one arrives at step 20, after the other two joined
    bounded = simulate(engine, sources, arrivals, Policy("continuous", max_later_joins=2), options, step_clock=True)
    unbounded = simulate(engine, sources, arrivals, Policy("continuous"), options, step_clock=True)
    assert bounded[0] >= 40 and bounded[3] >= bounded[0] - 20  # it started once the long one had finished
    assert unbounded[3] < bounded[3]
    assert bounded[1] == unbounded[1] and bounded[2] == unbounded[2]  # the first two joined in both
