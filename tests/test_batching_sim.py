"""The batching simulation (``loadtest/batching_sim.py``): real engine calls on a CPU-time clock, scheduler rules."""

from __future__ import annotations

import numpy as np
import pytest

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.export.testing import tiny_export
from nmtserve.loadtest.batching_sim import Policy, simulate


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32"), threads=1)


@pytest.mark.parametrize("mode", ["continuous", "request"])
def test_every_arrival_is_answered_after_it_arrived(engine: Engine, mode: str) -> None:
    rng = np.random.default_rng(0)
    sources = [[int(t) for t in rng.integers(4, 64, n)] + [3] for n in rng.integers(1, 20, 40)]
    arrivals = np.cumsum(rng.exponential(0.002, len(sources)))  # faster than the engine: a queue forms
    latency = simulate(engine, sources, arrivals, Policy(mode, max_batch_size=8))
    assert np.isfinite(latency).all() and (latency > 0).all()


def test_request_mode_makes_a_late_arrival_wait_for_the_batch(engine: Engine) -> None:
    """Past the join window, request-level batching makes an arrival wait for the running batch to drain; in
    continuous mode it joins at once, so its latency is lower."""
    long_source = [5] * 30 + [3]
    sources = [long_source] * 4 + [[7, 8, 3]]
    # min_length makes the long batch run at least 40 steps whatever the random model predicts (EOS is barred)
    options = DecodingOptions(beam_size=4, min_length=40)
    assert options.max_length_for(len(long_source)) > 40
    # the short sentence arrives once the batch has run well past its 8-step join window (about 20 of its 40+
    # steps); the clock is measured after a warm-up, since onnxruntime's first calls cost more CPU time
    simulate(engine, sources[:4], np.zeros(4), Policy("request"), options)
    first = simulate(engine, sources[:4], np.zeros(4), Policy("request"), options)
    arrivals = np.array([0, 0, 0, 0, float(np.min(first)) / 2])
    waited = simulate(engine, sources, arrivals, Policy("request"), options)[-1]
    joined = simulate(engine, sources, arrivals, Policy("continuous"), options)[-1]
    assert joined < waited
