"""Starvation across models, with real engines: the demo fp32 model's queue is kept full (saturated) while the demo
int8 model gets a light open-loop load, each with its own queue and engine thread (Scheduler) as a multi-model
server runs them, sharing one StepTurns. Every light request must be answered, right (equal to the int8 model's
own offline translation of the sentence), while the flood never ran out of work; the flood's answers must be right
too. The same light load alone is the yardstick. Latencies are printed, not asserted (a shared machine's timings
are no test): the figures with their spread are bench/model_fairness.py's, in docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmtserve.bench.model_fairness import SENTENCES, references, run_scenario
from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.model_dir import demo_export


@pytest.fixture(scope="module")
def engines(demo_model_dir: Path) -> tuple[Engine, Engine]:
    flood = Engine.load(demo_model_dir, threads=1, spin=False)
    light = Engine.load(demo_export("int8"), threads=1, spin=False)
    return flood, light


@pytest.fixture(scope="module")
def checks(engines: tuple[Engine, Engine]) -> dict:
    flood, light = engines
    options = DecodingOptions()
    light_sources, flood_sources = light.encode_texts(SENTENCES), flood.encode_texts(SENTENCES)
    return {
        "light": (light_sources, references(light, light_sources, options)),
        "flood": (flood_sources, references(flood, flood_sources, options)),
    }


def test_a_light_model_is_served_while_another_is_saturated(engines, checks, capsys) -> None:
    flood, light = engines
    common = dict(duration_s=4.0, light_rate=4.0, flood_depth=32, max_batch=16, checks=checks)
    alone = run_scenario("alone", flood, light, seed=1, **common)
    shared = run_scenario("turns", flood, light, seed=1, **common)
    assert alone.light_requests >= 5 and shared.light_requests >= 5
    for result in (alone, shared):
        assert result.light_lost == 0, f"{result.scenario}: {result.light_lost} light requests never answered"
        assert result.light_wrong == 0 and result.flood_wrong == 0
    assert shared.flood_min_waiting is not None and shared.flood_min_waiting > 0, "the flood ran dry: not saturated"
    assert shared.flood_sentences_per_s > 0
    assert shared.light_share_of_turn_time is not None and 0 < shared.light_share_of_turn_time < 1
    with capsys.disabled():
        for result in (alone, shared):
            p = result.percentiles()
            print(
                f"\n{result.scenario:>6}: light p50 {p['p50_ms']:.0f} ms p99 {p['p99_ms']:.0f} ms "
                f"({result.light_requests} requests), flood {result.flood_sentences_per_s:.1f} sentences/s"
            )
