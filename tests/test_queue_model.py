"""The batching model (``loadtest/queue_model.py``): measured step counts and fitted costs, replayed by the
CPU-time simulation's admission rules."""

from __future__ import annotations

import numpy as np
import pytest

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.export.testing import tiny_export
from nmtserve.loadtest.batching_sim import POLICIES, simulate
from nmtserve.loadtest.queue_model import (
    Costs,
    Measured,
    ModelledBatch,
    StepFeatures,
    compare,
    measure,
    saturation_rate,
)

COSTS = Costs(step_fixed=1e-3, per_row=1e-4, per_history=1e-6, per_cross=1e-6, encode_fixed=2e-3, encode_per_token=1e-5)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32"), threads=1)


def sources_of(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(4, 64, n)] + [3] for n in rng.integers(2, 20, count)]


def test_measured_steps_are_the_engines_own(engine: Engine) -> None:
    """Each source's step count is what the engine takes to decode it alone, and the costs are fitted to real
    calls: a step's fixed and per-row parts are not both zero, and the fit's error is a finite share."""
    sources = sources_of(12)
    options = DecodingOptions(beam_size=4, max_length=30)  # the random model's near-ties: see count_steps
    measured = measure(engine, sources, requests=12, options=options)
    for source, steps in zip(sources, measured.steps, strict=True):
        batch, alone = engine.new_batch(), 0
        batch.add([source], options, keys=[0])
        while len(batch):
            batch.step()
            alone += 1
        assert steps == alone
    costs = measured.costs
    assert costs.step_fixed + costs.per_row > 0 and costs.encode_fixed + costs.encode_per_token > 0
    assert 0 <= measured.step_residual < 10


def test_a_lone_sentence_costs_its_encoder_call_and_its_steps() -> None:
    """On the modelled clock one sentence's latency is exactly its encoder call plus its steps: one row on the
    first, its beam of 4 after, each attending over its history so far and its 10 source tokens."""
    source = [5] * 9 + [3]
    latency = simulate(None, [source], np.array([0.0]), POLICIES["continuous"], batch=ModelledBatch(COSTS, {0: 7}))
    steps = [StepFeatures(1, 0, 10)] + [StepFeatures(4, 4 * taken, 40) for taken in range(1, 7)]
    assert latency[0] == pytest.approx(COSTS.encode([10]) + sum(COSTS.step(f) for f in steps))


def test_a_join_slows_the_running_sentence_by_the_newcomers_rows() -> None:
    """A second sentence arriving mid-way joins under continuous batching (its rows make the first one's later
    steps dearer) and waits for the batch under request-level batching past its join window."""
    sources, steps = [[5] * 9 + [3], [6] * 4 + [3]], {0: 40, 1: 5}
    arrivals = np.array([0.0, 0.03])  # during the first one's 21st step (each about 1.4 ms)
    joined = simulate(None, sources, arrivals, POLICIES["continuous"], batch=ModelledBatch(COSTS, steps))
    waited = simulate(None, sources, arrivals, POLICIES["request"], batch=ModelledBatch(COSTS, steps))
    alone = simulate(None, sources[:1], arrivals[:1], POLICIES["request"], batch=ModelledBatch(COSTS, steps))[0]
    assert waited[0] == pytest.approx(alone) and joined[0] > alone
    assert joined[1] < waited[1]


def test_policies_are_compared_with_request_level_over_seeds() -> None:
    sources = sources_of(40)
    measured = Measured(COSTS, [int(n) for n in np.random.default_rng(1).integers(3, 40, len(sources))], 0.0)
    assert saturation_rate(COSTS, sources, measured.steps) > 0
    result = compare(measured, sources, 30, 3, [POLICIES["request"], POLICIES["continuous"]])
    rows = {(row["fraction"], row["policy"]): row for row in result["rows"]}
    assert len(rows) == 6
    for fraction in (0.5, 0.75, 0.9):
        request, continuous = rows[(fraction, "request")], rows[(fraction, "continuous")]
        assert request["p99_lower_share"] == 0.0  # never lower than itself
        assert 0.0 <= continuous["p99_lower_share"] <= 1.0
        assert 0 < request["p50_ms"] <= request["p99_ms"]
    assert rows[(0.5, "request")]["p99_ms"] < rows[(0.9, "request")]["p99_ms"]  # more load, longer tail
