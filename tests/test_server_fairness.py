"""StepTurns (server/fairness.py) with real threads: one turn per slot at a time, a lone model never waits (with
two slots its two engine threads run side by side), CPU shared by time (not by turns) among busy models, an idle
model banks no credit, and a light model's burst is not interleaved with a flooded model's steps. Turn bodies
sleep for a step's cost: what is tested is the policy deciding who goes next, on real threads and a real clock.
Bounds are loose (the machine is shared); each fails under the policy it rules out (round robin, or no floor on
idle credit), as the comments say."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from nmtserve.server.fairness import StepTurns


class Recorder:
    """Turns as they happened: (key, start, end), and a check that two never overlap."""

    def __init__(self, turns: StepTurns) -> None:
        self.turns = turns
        self.log: list[tuple[str, float, float]] = []
        self.inside = 0
        self.most_inside = 0  # the most turns seen running at once
        self.overlaps = 0  # turns that started while more than the slots were running (never, if turns work)
        self._lock = threading.Lock()

    def step(self, key: str, seconds: float) -> None:
        with self.turns.turn(key):
            with self._lock:
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
                if self.inside > self.turns.slots:
                    self.overlaps += 1
            start = time.perf_counter()
            time.sleep(seconds)
            end = time.perf_counter()
            with self._lock:
                self.inside -= 1
        self.log.append((key, start, end))


def run_threads(*targets: Callable[[], None], timeout: float = 30.0) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a thread never got its turn"


def busy(recorder: Recorder, key: str, seconds: float, until: threading.Event) -> Callable[[], None]:
    def loop() -> None:
        while not until.is_set():
            recorder.step(key, seconds)

    return loop


def test_a_lone_model_takes_its_turns_without_anyone_else() -> None:
    turns = StepTurns()
    recorder = Recorder(turns)
    run_threads(lambda: [recorder.step("only", 0) for _ in range(2000)], timeout=10)
    assert len(recorder.log) == 2000 and turns.used_s("only") > 0


def test_one_turn_at_a_time_and_everyone_gets_turns() -> None:
    turns = StepTurns()
    recorder = Recorder(turns)
    stop = threading.Event()
    threading.Timer(0.6, stop.set).start()
    run_threads(*(busy(recorder, f"m{i}", 0.001, stop) for i in range(4)))
    assert recorder.overlaps == 0
    counts = {key: sum(1 for k, _, _ in recorder.log if k == key) for key in ("m0", "m1", "m2", "m3")}
    assert min(counts.values()) > 0.5 * max(counts.values()), counts  # equal steps: equal turns


def test_a_model_back_from_idle_banks_no_more_than_the_credit() -> None:
    """A ran alone for 0.5 s; B arriving then may run at most about wake_credit_s before A's next turn (with no
    floor B would run 0.5 s first)."""
    turns = StepTurns(wake_credit_s=0.05)
    recorder = Recorder(turns)
    run_threads(lambda: [recorder.step("a", 0.005) for _ in range(100)])
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    run_threads(busy(recorder, "a", 0.005, stop), busy(recorder, "b", 0.005, stop))
    log = recorder.log[100:]
    first_b = next(i for i, (k, _, _) in enumerate(log) if k == "b")
    next_a = next(i for i in range(first_b, len(log)) if log[i][0] == "a")
    b_before_a = sum(end - start for _, start, end in log[first_b:next_a])
    assert b_before_a < 0.15, b_before_a


def test_a_light_burst_is_not_interleaved_with_a_flooded_models_steps() -> None:
    """A flood with 20 ms steps; a light model's bursts of 10 steps of 1 ms each wait for the flood's step in
    progress and then run together (round robin would put a 20 ms step between each of them)."""
    turns = StepTurns()
    recorder = Recorder(turns)
    stop = threading.Event()
    bursts: list[tuple[float, float]] = []

    def light() -> None:
        for _ in range(8):
            time.sleep(0.06)
            asked = time.perf_counter()
            for _ in range(10):
                recorder.step("light", 0.001)
            bursts.append((asked, time.perf_counter()))
        stop.set()

    run_threads(busy(recorder, "flood", 0.020, stop), light)
    assert recorder.overlaps == 0
    for asked, done in bursts:
        light_turns = [start for key, start, _ in recorder.log if key == "light" and asked <= start <= done]
        interleaved = [s for key, s, _ in recorder.log if key == "flood" and light_turns[0] < s < light_turns[-1]]
        assert len(light_turns) == 10 and len(interleaved) <= 1, (len(light_turns), len(interleaved))


def test_two_slots_run_two_steps_at_once_and_never_three() -> None:
    """A model's three engine threads on two slots: two of its steps overlap (one slot would serialise them: the
    most inside would be 1), a third never joins them."""
    turns = StepTurns(slots=2)
    recorder = Recorder(turns)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    run_threads(*(busy(recorder, "m", 0.002, stop) for _ in range(3)))
    assert recorder.most_inside == 2 and recorder.overlaps == 0, (recorder.most_inside, recorder.overlaps)
    spans = sorted((start, end) for _, start, end in recorder.log)
    overlapping = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end)
    assert overlapping > len(spans) / 4, (overlapping, len(spans))


def test_a_lone_model_on_two_slots_never_waits_for_itself() -> None:
    """Two threads of one model, two slots: each turn is granted at once (no hand-over, no kept-slot timeout), so
    2 x 300 empty turns take about as long as the lock does, far below 300 x KEEP_S."""
    turns = StepTurns(slots=2, keep_s=0.05)
    recorder = Recorder(turns)
    start = time.perf_counter()
    run_threads(*(lambda: [recorder.step("only", 0) for _ in range(300)] for _ in range(2)), timeout=10)
    assert len(recorder.log) == 600 and time.perf_counter() - start < 5.0


@pytest.mark.parametrize("slots", [1, 2])
def test_busy_models_share_the_time_not_the_turns(slots: int) -> None:
    """Steps of 10 ms against steps of 1 ms, each model with one engine thread per slot: each gets about half the
    time (round robin by turns: 10/11 vs 1/11), so the cheap model takes about 10x the turns."""
    turns = StepTurns(slots=slots)
    recorder = Recorder(turns)
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    models = (("heavy", 0.010), ("light", 0.001)) * slots
    run_threads(*(busy(recorder, key, seconds, stop) for key, seconds in models))
    assert recorder.overlaps == 0 and recorder.most_inside == slots
    heavy, light = turns.used_s("heavy"), turns.used_s("light")
    assert 0.5 < light / heavy < 2.0, (light, heavy)
    heavy_turns = sum(1 for k, _, _ in recorder.log if k == "heavy")
    light_turns = sum(1 for k, _, _ in recorder.log if k == "light")
    assert light_turns > 4 * heavy_turns, (light_turns, heavy_turns)


def test_a_forgotten_models_kept_slot_goes_to_a_waiter() -> None:
    """A model unloaded while a slot is kept for it (its last turn ended owing time): the waiter gets the slot at
    forget, not once the keep expires (here an hour)."""
    turns = StepTurns(slots=1, keep_s=3600)
    with turns.turn("next"):
        time.sleep(0.3)  # "next" has used 0.3 s; "gone", new and alone, starts at 0 and is owed time
    got = threading.Event()

    def waiter() -> None:
        with turns.turn("next"):
            got.set()

    with turns.turn("gone"):
        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        time.sleep(0.05)  # the waiter is queued behind "gone"
    time.sleep(0.2)
    assert not got.is_set(), "the slot was not kept for the model still owed time"
    turns.forget("gone")
    assert got.wait(5), "the waiter never got the forgotten model's slot"
