"""The engine thread: forms batches from the queue and drives the engine's step-level ``DecodingBatch``.

Two modes, one loop (so that they differ in nothing else):
- ``request`` (request-level dynamic batching, as CTranslate2 and Triton do for encoder-decoder models): when the
  engine is idle, a batch is formed from the queue and decoded until its last sentence finishes; sentences that
  arrive meanwhile wait for it, except in the batch's first ``join_window_steps`` decode steps, when they may
  still join it (while it has room). Without that window a sentence arriving just after a batch started waits
  for the whole batch, which is most of request-level batching's tail, and a burst whose first requests form a
  small batch leaves the engine half used while the rest of the burst waits. Joining that early is cheap: the
  joining rows' cache is left-padded by at most the window's few slots.
- ``continuous`` (iteration-level batching): between decode steps, waiting sentences join the running batch
  (their encoder runs, their cache rows are appended) and finished sentences leave at once, so a short sentence
  never waits for a long one.

Joining has a price on this engine: the newcomers' encoder call stalls the running rows, a newcomer longer than
every running source widens the batch's cross-attention K/V (every row is copied, ``engine/cross.py``; on CUDA
every join and leave copies them), and a batch that takes every length carries the padding of its longest
source. So, in continuous mode:
- newcomers join once they number at least ``join_fraction`` of the running batch (at low load that is one
  sentence: it joins at the next step) or ``max_join_steps`` steps after the last join (a bound on their wait);
- but not once ``max_later_joins`` sentences have joined after the batch's oldest running sentence: newcomers
  then wait until it has finished. Without that bound continuous batching behaves like processor sharing (a
  step costs about in proportion to its rows, so each arrival slows everyone running), and a long sentence
  shares every step of its life with every arrival: its p99 lost to request-level batching's at high load,
  while its median won. With the bound a long sentence is slowed by at most that many later sentences, and
  request-level batching's tail advantage goes (docs/benchmarks.md, issue 17, session 16);
- under backlog (more sentences waiting than the batch has room for) nobody joins: the batch drains and the next
  one is formed from the backlog with length grouping, as in request mode, which is the cheaper way to run a
  saturated engine. Continuous batching thus buys its latency where there is spare capacity and gives back
  nothing at saturation.

A multi-batch variant (several running batches advanced in turn, newcomers starting their own) was measured and
dropped: the rounds lengthen every sentence's steps, and its p99 was worse than either mode.

Default: ``auto`` (``config.batching_mode``): continuous for a ragged export, request-level with an 8-step join
window otherwise. With left-padded rows (the shipped exports) request-level batching had the lower p99 at every
load measured on CPU, and the same saturation throughput: late joins carry the running batch's whole history as
padding, and a decode step costs in proportion to its rows, so keeping the batch full slows every long sentence.
With ragged rows (``nmtserve export --ragged``) continuous batching had the lower median at nearly every load,
but on a real server the lower p99 in only 7 of 9 runs at 50 % load, 3 of 9 at 75 % and 5 of 9 at 90 %, until
``max_later_joins``; with it, in 5 of 6 runs at 50 %, 6 of 6 at 75 % and 5 of 6 at 90 %, on three text sets
(docs/benchmarks.md, issue 17, session 16). So it is the ragged export's default, but not the shipped exports'.
Where a step's cost hardly depends on its rows (a GPU), the balance may well flip: measure with
``nmtserve bench server``.

The thread never touches the event loop: results go out through each request's sink (which hops threads). The
engine releases the GIL inside onnxruntime, so the gRPC event loop keeps serving while a step runs. Between two
steps the thread drops sentences whose request was cancelled, timed out or failed, so no further work is spent
on them.

Several engine threads per model (``EngineThreads``, ``engine_workers``): Schedulers on one queue and one engine's
sessions (onnxruntime's ``run`` may be called concurrently), each with its own batch. A sentence arriving while
one thread's batch runs is taken by an idle one instead of waiting for that batch, and on a CPU two batches side
by side use two cores better than one batch split over them (``config.engine_plan``). Newcomers join a running
batch (either mode's rule above) only if no idle thread, and in continuous mode no thread running fewer sentences,
would take them: the lightest batch gets them.

Several models: each has its own engine threads and queue; their encodes and steps take turns on the CPU through
a shared ``StepTurns`` (server/fairness.py) of one slot per engine worker, so a flood to one model cannot starve
another.

Failure isolation: an exception while encoding new sentences retries them one by one; an exception in a decode
step re-runs every sentence of the batch alone, so only the sentences that fail on their own fail their
request (INTERNAL), never their neighbours.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import cast

from nmtserve.engine import Engine, Hypothesis
from nmtserve.server.batching import Budget
from nmtserve.server.fairness import StepTurns
from nmtserve.server.metrics import EngineMetrics
from nmtserve.server.work import WorkItem
from nmtserve.server.workqueue import WorkQueue

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1  # how often an idle engine thread rechecks for shutdown


class EngineFailure(RuntimeError):
    """The engine failed on this request's own sentence (it failed when decoded alone)."""


class ShuttingDown(RuntimeError):
    """The engine thread stopped before the sentence finished."""


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        queue: WorkQueue,
        budget: Budget,
        metrics: EngineMetrics,
        continuous: bool = False,
        max_delay_s: float = 0.002,
        join_fraction: float = 0.25,
        max_join_steps: int = 8,
        max_later_joins: int = 0,
        join_window_steps: int = 0,
        turns: StepTurns | None = None,
        turn_key: Hashable | None = None,
        name: str = "nmtserve-engine",
        report_running: Callable[[], None] | None = None,
    ) -> None:
        self.engine, self.queue, self.budget, self.metrics = engine, queue, budget, metrics
        # Several models' engine threads share one StepTurns (server/fairness.py); alone, a private one never waits.
        self.turns = turns if turns is not None else StepTurns()
        self.turn_key: Hashable = turn_key if turn_key is not None else id(self)
        self.continuous, self.max_delay_s = continuous, max_delay_s
        self.join_fraction, self.max_join_steps = join_fraction, max_join_steps
        self.max_later_joins = max_later_joins
        self.join_window_steps = join_window_steps
        self._batch = engine.new_batch()
        self._live: dict[int, WorkItem] = {}  # key -> item: the sentences in the running batch
        self._admitted = 0  # sentences this thread has admitted, ever
        self._admitted_by: dict[int, int] = {}  # key -> _admitted once its group had joined
        self._oldest_mark = 0  # min of _admitted_by (the oldest sentence's), an int that peer threads may read
        self._steps_since_join = 0
        self._batch_steps = 0  # decode steps since the running batch was formed from an empty one
        self.peers: Sequence[Scheduler] = ()  # the model's other engine threads (EngineThreads sets them)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # EngineThreads sums its threads' batches into the one gauge; alone, a Scheduler sets its own
        self._report_running = report_running or (lambda: self.metrics.running.set(len(self._live)))

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step; sentences still running are abandoned (their requests are told)."""
        self.request_stop()
        self.join(timeout)
        self.turns.forget(self.turn_key)

    def request_stop(self) -> None:
        """Ask the thread to stop after its current step, without waiting (``join`` waits)."""
        self._stop.set()
        self.queue.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> int:
        """Sentences in the running batch."""
        return len(self._live)

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """This model's turn on the CPU (server/fairness.py), the wait for it recorded."""
        asked = time.perf_counter()
        with self.turns.turn(self.turn_key):
            self.metrics.turn_wait.observe(time.perf_counter() - asked)
            yield

    # -- the loop ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._iteration()
            except Exception:  # a bug in the scheduler itself: fail what is running, keep serving
                log.exception("scheduler iteration failed; failing the running batch")
                self._fail_all(EngineFailure("internal scheduler error"))
        self._fail_all(ShuttingDown("the server is shutting down"))

    def _iteration(self) -> None:
        self._reap()
        if not self._live:
            self._admit(wait_s=IDLE_POLL_S)
        elif self._worth_joining():
            self._admit(wait_s=None)
        if self._live:
            self._step()
        self._report_running()

    def _a_lighter_peer(self) -> bool:
        """Would another engine thread of this model take the waiting sentences into fewer sentences than ours?
        Newcomers are cheaper there: a step costs about in proportion to its rows, and a fresh batch carries no
        other history. An idle thread always takes them; in continuous mode a running one with fewer sentences
        does too (its join rule is the easier one); in request mode a running one may be past its join window."""
        mine = len(self._live)
        return any(
            peer.running == 0 or (self.continuous and peer.running < mine and not peer.closed_to_joins)
            for peer in self.peers
            if peer is not self
        )

    @property
    def closed_to_joins(self) -> bool:
        """Have ``max_later_joins`` sentences joined after the running batch's oldest one (continuous mode)? Then
        newcomers wait until it has finished. A step costs about in proportion to its rows, so every later joiner
        slows each remaining step of the sentences already running; unchecked, a long sentence under steady
        traffic shares all its steps with every arrival of its lifetime, and such sentences make the p99."""
        return bool(self.continuous and self.max_later_joins and self._live) and (
            self._admitted - self._oldest_mark >= self.max_later_joins
        )

    def _note_members(self) -> None:
        self._oldest_mark = min(self._admitted_by.values(), default=self._admitted)

    def _worth_joining(self) -> bool:
        """Should the waiting sentences join the running batch now (see the module doc)? Not while a lighter
        peer could take them: an idle one is waiting on the queue and takes them at once."""
        if self._a_lighter_peer():
            return False
        if not self.continuous:
            return self._batch_steps < self.join_window_steps and len(self.queue) > 0
        waiting, room = len(self.queue), self.budget.max_sentences - len(self._live)
        if waiting == 0 or room <= 0 or waiting > room or self.closed_to_joins:
            return False
        return (
            waiting >= math.ceil(len(self._live) * self.join_fraction) or self._steps_since_join >= self.max_join_steps
        )

    def _reap(self) -> None:
        """Drop running sentences whose request is gone."""
        now = time.monotonic()
        dead = [key for key, item in self._live.items() if item.request.dead(now)]
        for key in dead:
            self._batch.cancel(key)
            del self._live[key]
            del self._admitted_by[key]
        if dead:
            self._note_members()
            self.metrics.abandoned.labels("batch").inc(len(dead))

    def _admit(self, wait_s: float | None) -> None:
        """Take sentences from the queue into the batch, within what the budget has left."""
        live = self._live.values()
        longest = max((item.length for item in live), default=0)
        chosen, dead = self.queue.take(self.budget, len(self._live), longest, wait_s, self.max_delay_s)
        if dead:
            self.metrics.abandoned.labels("queue").inc(len(dead))
        if not chosen:
            return
        if not self._live:
            self._batch_steps = 0
        now = time.monotonic()
        for item in chosen:
            self.metrics.queue_wait.observe(now - item.enqueued_at)
        chosen.sort(key=lambda item: item.length)
        start = time.perf_counter()
        try:
            with self._turn():
                self._batch.add(
                    [i.source_ids for i in chosen],
                    [i.options for i in chosen],
                    [i.key for i in chosen],
                    [i.target_prefix for i in chosen],
                )
        except Exception:
            log.exception("encoding %d joining sentences failed; retrying them one by one", len(chosen))
            self.metrics.engine_errors.inc()
            chosen = self._add_one_by_one(chosen)
        self.metrics.encode.observe(time.perf_counter() - start)
        self.metrics.admitted_batch_size.observe(len(chosen))
        self.metrics.tokens.labels("input").inc(sum(item.length for item in chosen))
        self._admitted += len(chosen)
        for item in chosen:
            self._live[item.key] = item
            self._admitted_by[item.key] = self._admitted
        self._note_members()
        self._steps_since_join = 0

    def _add_one_by_one(self, items: list[WorkItem]) -> list[WorkItem]:
        added = []
        for item in items:
            try:
                with self._turn():
                    self._batch.add([item.source_ids], [item.options], [item.key], [item.target_prefix])
                added.append(item)
            except Exception as error:
                log.exception("encoding a sentence failed on its own; failing its request")
                self._fail(item, error)
        return added

    def _step(self) -> None:
        items = list(self._live.values())
        start = time.perf_counter()
        try:
            with self._turn():
                finished = self._batch.step()
        except Exception:
            log.exception("decode step of %d sentences failed; re-running each alone", len(items))
            self.metrics.engine_errors.inc()
            self._batch, self._live, self._admitted_by = self.engine.new_batch(), {}, {}
            for item in items:
                self._run_alone(item)
            return
        self._steps_since_join += 1
        self._batch_steps += 1
        self.metrics.decode_step.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(len(items))
        self.metrics.batch_tokens.observe(len(items) * max(item.length for item in items))
        for done in finished:
            key = cast(int, done.key)  # keys are the items' ids
            del self._admitted_by[key]
            self._deliver(self._live.pop(key), done.hypotheses)
        if finished:
            self._note_members()
        if any(item.request.partial for item in self._live.values()):
            self._send_partials()

    def _send_partials(self) -> None:
        sentences = {sentence.key: sentence for sentence in self._batch.sentences}
        for key, item in self._live.items():
            if item.request.partial and key in sentences:
                prefix = sentences[key].stable_prefix()
                if len(prefix) > item.last_partial:
                    item.last_partial = len(prefix)
                    item.request.sink.partial(item.index, prefix)

    def _deliver(self, item: WorkItem, hypotheses: list[Hypothesis]) -> None:
        if hypotheses:
            self.metrics.tokens.labels("output").inc(len(hypotheses[0].token_ids))
        item.request.sink.finished(item.index, hypotheses)

    def _run_alone(self, item: WorkItem) -> None:
        """Decode one sentence in a batch of its own (after a shared batch failed), honouring cancellation."""
        if item.request.dead():
            return
        batch = self.engine.new_batch()
        try:
            with self._turn():
                batch.add([item.source_ids], [item.options], [item.key], [item.target_prefix])
            while len(batch) and not item.request.dead():
                with self._turn():
                    finished = batch.step()
                for done in finished:
                    self._deliver(item, done.hypotheses)
        except Exception as error:
            log.exception("a sentence failed when decoded alone; failing its request")
            self._fail(item, error)

    def _fail(self, item: WorkItem, error: BaseException) -> None:
        item.request.cancel()  # its other sentences stop too
        item.request.sink.failed(EngineFailure(f"the engine failed on text {item.index}: {error}"))

    def _fail_all(self, error: BaseException) -> None:
        """Fail every running sentence's request and start over with an empty batch."""
        for item in self._live.values():
            item.request.cancel()
            item.request.sink.failed(error)
        self._batch, self._live, self._admitted_by = self.engine.new_batch(), {}, {}


class EngineThreads:
    """One model version's engine threads: Schedulers sharing its queue, engine and turn key, each decoding its own
    batch (see the module doc). Stops them together, and reports their running sentences as one sum."""

    def __init__(self, make: Callable[..., Scheduler], workers: int) -> None:
        """``make(name=..., report_running=...)`` builds one Scheduler; ``workers`` of them are made."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        self.schedulers: Sequence[Scheduler] = [
            make(name=f"nmtserve-engine-{index}", report_running=self._report_running) for index in range(workers)
        ]
        for scheduler in self.schedulers:
            scheduler.peers = self.schedulers

    def _report_running(self) -> None:
        first = self.schedulers[0]
        first.metrics.running.set(self.running)

    @property
    def running(self) -> int:
        """Sentences in the running batches of every thread."""
        return sum(scheduler.running for scheduler in self.schedulers)

    @property
    def continuous(self) -> bool:
        return self.schedulers[0].continuous

    def start(self) -> None:
        for scheduler in self.schedulers:
            scheduler.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every thread after its current step (all asked first, so none spins on the closed queue while
        another finishes); their running sentences' requests are told."""
        for scheduler in self.schedulers:
            scheduler.request_stop()
        deadline = time.monotonic() + timeout
        for scheduler in self.schedulers:
            scheduler.join(max(0.0, deadline - time.monotonic()))
        first = self.schedulers[0]
        first.turns.forget(first.turn_key)
