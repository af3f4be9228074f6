"""Batch formation, the work queue and beam-search partial output, without gRPC."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nmtserve.engine import DecodingOptions, Engine
from nmtserve.engine.beam import Sentence
from nmtserve.export.testing import tiny_export
from nmtserve.server.batching import Budget, fair_window, is_full, select
from nmtserve.server.work import Request, WorkItem
from nmtserve.server.workqueue import QueueClosed, QueueFull, WorkQueue


class NullSink:
    def finished(self, index, hypotheses) -> None: ...

    def partial(self, index, token_ids) -> None: ...

    def failed(self, error) -> None: ...


def items(*lengths: int, request: Request | None = None) -> list[WorkItem]:
    request = request or Request(NullSink())
    return [WorkItem(request, i, [5] * (n - 1) + [3], DecodingOptions()) for i, n in enumerate(lengths)]


# -- selection ------------------------------------------------------------------------------------------------------


def test_oldest_first_then_similar_lengths() -> None:
    waiting = items(10, 50, 11, 9, 30, 12)
    chosen = select(waiting, Budget(max_sentences=4, max_tokens=10_000, window=100))
    assert [item.length for item in chosen] == [10, 11, 9, 12]


def test_token_budget_counts_padding() -> None:
    waiting = items(10, 10, 10, 40)
    chosen = select(waiting, Budget(max_sentences=10, max_tokens=100, window=100))
    assert [item.length for item in chosen] == [10, 10, 10]  # 4 x 40 = 160 padded tokens would not fit
    # A running batch of 2 sentences up to 30 tokens: one more makes 3 x 30 = 90.
    assert len(select(waiting, Budget(10, 100, 100), running=2, running_longest=30)) == 1


def test_oldest_is_never_skipped_for_a_shorter_one() -> None:
    waiting = items(60, 5, 5)
    assert select(waiting, Budget(10, 100, 100), running=1, running_longest=20) == []  # 2 x 60 > 100: wait
    assert [i.length for i in select(waiting, Budget(10, 130, 100), running=1, running_longest=20)] == [60]


def test_size_cap_and_window() -> None:
    waiting = items(*([10] * 20))
    assert len(select(waiting, Budget(8, 10_000, 100))) == 8
    assert len(select(waiting, Budget(8, 10_000, 3))) == 3
    assert select(waiting, Budget(8, 10_000, 100), running=8) == []
    assert is_full(waiting, Budget(20, 10_000, 100)) and not is_full(waiting, Budget(21, 10_000, 100))
    assert is_full(waiting, Budget(100, 200, 100))


def test_batch_slots_are_dealt_round_robin_over_requests() -> None:
    """A 20-sentence page ahead of two one-sentence requests: first in, first out filled the batch with the page;
    now each request gets a slot before the page gets its second (the oldest, the page's first, still leads)."""
    page, light, other = Request(NullSink()), Request(NullSink()), Request(NullSink())
    waiting = items(*[10] * 20, request=page) + items(12, request=light) + items(30, request=other)
    chosen = select(waiting, Budget(max_sentences=4, max_tokens=10_000, window=100))
    assert [item.request for item in chosen] == [page, light, other, page]
    assert chosen[0] is waiting[0]


def test_length_grouping_still_orders_each_request_and_each_round() -> None:
    page, light = Request(NullSink()), Request(NullSink())
    waiting = items(10, 50, 11, 9, 30, request=page) + items(40, 12, request=light)
    chosen = select(waiting, Budget(max_sentences=5, max_tokens=10_000, window=100))
    # round 0: the anchor (10) and light's closest (12); round 1: page's closest (11), light's other (40);
    # round 2: page's next closest (9)
    assert [item.length for item in chosen] == [10, 12, 11, 40, 9]
    # the token budget still bounds padding: 40 would make 4 x 40 = 160 > 100, so it is passed over
    assert [item.length for item in select(waiting, Budget(5, 100, 100))] == [10, 12, 11, 9]


def test_the_window_is_dealt_round_robin_so_requests_behind_a_big_one_are_seen() -> None:
    page, light, other = items(*[10] * 20), items(12), items(30)
    window = fair_window([page, light, other], 6)
    assert window == page[:4] + light + other  # 4 + 1 + 1, in arrival order: the oldest first
    assert fair_window([page, light, other], 2) == page[:1] + light  # at most ``window`` lanes are looked at
    assert fair_window([page[:2], light], 100) == page[:2] + light


# -- queue ----------------------------------------------------------------------------------------------------------


def test_queue_is_bounded_and_all_or_nothing() -> None:
    depths = []
    queue = WorkQueue(capacity=3, on_depth=depths.append)
    queue.put(items(5, 5))
    with pytest.raises(QueueFull, match="queue is full"):
        queue.put(items(5, 5))
    assert len(queue) == 2
    queue.put(items(5))
    assert depths == [2, 3]
    queue.close()
    with pytest.raises(QueueClosed):
        queue.put(items(5))


def test_discard_and_dead_requests_leave_the_queue() -> None:
    queue = WorkQueue(capacity=10)
    keep, cancel, expire = Request(NullSink()), Request(NullSink()), Request(NullSink(), deadline=time.monotonic())
    queue.put(items(5, request=cancel) + items(6, request=expire) + items(7, request=keep))
    assert queue.discard(cancel) == 1
    chosen, dead = queue.take(Budget(8, 1000, 32), 0, 0, wait_s=None, max_delay_s=0)
    assert [i.length for i in chosen] == [7] and [i.length for i in dead] == [6] and len(queue) == 0


def test_light_requests_behind_a_big_page_join_the_next_batch() -> None:
    """The page's 200 sentences fill the 32 oldest places; first in, first out with a 32-sentence window never
    saw the light requests until the page was nearly done."""
    queue = WorkQueue(capacity=1000)
    page = Request(NullSink())
    queue.put(items(*[10] * 200, request=page))
    lights = [Request(NullSink()) for _ in range(3)]
    for light in lights:
        queue.put(items(10, request=light))
    chosen, _ = queue.take(Budget(8, 10_000, 32), 0, 0, wait_s=None, max_delay_s=0)
    assert [item.request for item in chosen].count(page) == 5 and {item.request for item in chosen} >= set(lights)
    assert len(queue) == 203 - 8 and queue.tokens == 10 * (203 - 8)
    chosen, _ = queue.take(Budget(8, 10_000, 32), 0, 0, wait_s=None, max_delay_s=0)
    assert [item.index for item in chosen] == list(range(5, 13))  # only the page is left: its next sentences


def test_idle_take_waits_for_the_batch_to_fill_at_most_the_delay() -> None:
    queue = WorkQueue(capacity=10)
    budget = Budget(max_sentences=3, max_tokens=1000, window=32)
    start = time.monotonic()
    assert queue.take(budget, 0, 0, wait_s=0.05, max_delay_s=0) == ([], [])  # nothing came
    assert time.monotonic() - start >= 0.05
    queue.put(items(5))
    threading.Timer(0.05, lambda: queue.put(items(5, 5))).start()
    start = time.monotonic()
    chosen, _ = queue.take(budget, 0, 0, wait_s=1.0, max_delay_s=1.0)
    assert len(chosen) == 3 and time.monotonic() - start < 0.9  # woke as soon as the batch was full
    queue.put(items(5))
    start = time.monotonic()
    chosen, _ = queue.take(budget, 0, 0, wait_s=1.0, max_delay_s=0.05)
    assert len(chosen) == 1 and 0.04 <= time.monotonic() - start < 0.9  # waited for the delay, then went


# -- partial output ---------------------------------------------------------------------------------------------------


def sentence(rows: list[list[int]], finished: list[tuple[list[int], float, int]] = (), penalty: float = 1.0):
    s = Sentence("k", 0, 5, DecodingOptions(beam_size=len(rows), length_penalty=penalty), 50)
    s.tokens = np.array(rows, np.int64).reshape(len(rows), -1)
    s.finished = list(finished)
    return s


def test_stable_prefix_rules() -> None:
    assert sentence([[]]).stable_prefix() == []
    assert sentence([[7, 8, 9]]).stable_prefix() == [7, 8, 9]  # greedy: all of it
    assert sentence([[7, 8, 9], [7, 8, 4], [7, 5, 9]]).stable_prefix() == [7]
    # A finished hypothesis that can still win limits the prefix; one that is already beaten does not.
    assert sentence([[7, 8, 9], [7, 8, 4]], [([7, 6], -1.0, 3)]).stable_prefix() == [7]
    beaten = [([7, 8, 1], -0.5, 4), ([6], -9.0, 2)]
    assert sentence([[7, 8, 9], [7, 8, 4]], beaten).stable_prefix() == [7, 8]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    model_dir: Path = tiny_export(tmp_path_factory.getbasetemp() / "tiny-model", "fp32")
    return Engine.load(model_dir, threads=1)


@pytest.mark.parametrize("options", [DecodingOptions(beam_size=4), DecodingOptions(beam_size=3, length_penalty=0.0)])
def test_stable_prefix_on_the_engine_only_grows_and_is_final(engine: Engine, options: DecodingOptions) -> None:
    sources = engine.encode_texts(["the cat sat on the mat", "open the file", "a package manager installs software"])
    batch = engine.new_batch()
    batch.add(sources, options, keys=[0, 1, 2])
    prefixes: dict[int, list[int]] = {0: [], 1: [], 2: []}
    finals = {}
    grew = 0
    while len(batch):
        for done in batch.step():
            finals[done.key] = done.hypotheses[0].token_ids
        for live in batch.sentences:
            key, prefix = live.key, live.stable_prefix()
            assert prefix[: len(prefixes[key])] == prefixes[key], "a stable prefix changed"
            grew += len(prefix) > len(prefixes[key])
            prefixes[key] = prefix
    assert grew > 0
    for key, prefix in prefixes.items():
        assert finals[key][: len(prefix)] == prefix


# -- the retry hint ---------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retry_hint_is_the_busy_drain_rate_and_survives_an_idle_spell() -> None:
    """The engine took 32 sentences per second of backlog; after 10 idle minutes a burst of 64 waiting sentences
    is told 2 s, not a rate decayed to nothing (the time-decayed average said 13.5-14.7 s after idle)."""
    clock = FakeClock()
    queue = WorkQueue(1024, clock=clock)
    budget = Budget(32, 100_000, 128)
    assert queue.retry_after_s() == 1.0  # nothing measured yet
    queue.put(items(*[4] * 160))
    for _ in range(4):  # a backlog throughout: each interval is one cycle of the busy engine
        assert len(queue.take(budget, 0, 0, None, 0.0)[0]) == 32
        clock.now += 1.0
    queue.take(budget, 0, 0, None, 0.0)  # the queue is now empty: the engine goes idle
    assert queue.drain_rate() == pytest.approx(32.0)
    clock.now += 600.0
    queue.put(items(*[4] * 64))
    assert queue.retry_after_s() == pytest.approx(2.0)
    clock.now += 0.002
    queue.take(budget, 0, 0, None, 0.0)  # the first take after idle measured the batching delay: not counted
    assert queue.drain_rate() == pytest.approx(32.0)
