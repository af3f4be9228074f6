"""Fair turns on the CPU for several models' engine threads: ``with turns.turn(model_key): batch.step()``.

Each model has its own engine thread (server/scheduler.py), and each engine step already uses every core it is
given (onnxruntime's intra-op threads). Left to the operating system, two models stepping at once split the cores
between them, and a flooded model with large batches slows every step of a lightly loaded one; how much depends
on their thread counts, not on any policy. ``StepTurns`` runs one model's step (or encode) at a time and decides
whose turn is next:

- **Fair by time, not by turns** (start-time fair queueing, as Linux's CFS does for threads): each model's
  *virtual time* grows by the measured duration of its turns, and the next turn goes to the waiting model with
  the least. Plain round robin would give a model whose steps cost 10x (a big batch, a bigger model) 10x the CPU,
  and a light model's translation would wait for one heavy step *per decode step*; by time, after one heavy step
  the light model may run as many of its own steps as fit in the time the heavy one just used.
- **An idle model banks nothing**: when a model asks for a turn, its virtual time is raised to at least the least
  virtual time of the models competing now, less ``wake_credit_s``. The credit lets a model coming back from idle
  (a light load's next request) run that long before it alternates, so a short translation is not slowed by a
  flood next door; the floor keeps a model that was idle for an hour from taking the CPU for an hour.
- **A lone model never waits**: with nobody else holding or waiting, a turn is taken at once (one lock).
- Turns are handed over explicitly (the releasing thread names the next holder), so a thread that releases and
  asks again at once cannot barge ahead of a waiting model that is owed more time; and a model still owed time
  keeps the turn for its next step (``keep_s``: the gap between two steps of an engine thread is microseconds),
  otherwise two busy models would simply alternate, which is round robin by turns again.

A turn is not preemptible: a light model waits at most for the one step in progress. Measured in
``python -m nmtserve.bench.model_fairness`` (docs/benchmarks.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

WAKE_CREDIT_S = 0.05  # how far behind the competitors a model may start when it asks for a turn
KEEP_S = 0.002  # how long a turn is kept for a model still owed time, between its steps


@dataclass
class _Model:
    virtual_s: float = 0.0  # CPU time used in turns, floored when it comes back from idle
    waiting: bool = False
    turns: int = 0
    used_s: float = 0.0  # CPU time used in turns (not floored): for tests and benchmarks


class StepTurns:
    """One engine step at a time across models, the next turn to the model that has used the least time."""

    def __init__(self, wake_credit_s: float = WAKE_CREDIT_S, keep_s: float = KEEP_S) -> None:
        self.wake_credit_s, self.keep_s = wake_credit_s, keep_s
        self._clock = time.perf_counter
        self._kept_until: float | None = None  # the holder's turn is kept for it until then (see _release)
        self._cond = threading.Condition()
        self._models: dict[Hashable, _Model] = {}
        self._holder: Hashable | None = None  # holding the turn, or granted it and not yet woken
        self._waiting = 0

    @contextmanager
    def turn(self, key: Hashable) -> Iterator[None]:
        """Run the body as ``key``'s turn: waits while another model holds it or is due before this one."""
        self._acquire(key)
        start = self._clock()
        try:
            yield
        finally:
            self._release(key, self._clock() - start)

    def used_s(self, key: Hashable) -> float:
        """Seconds ``key`` has spent in turns so far."""
        with self._cond:
            model = self._models.get(key)
            return model.used_s if model else 0.0

    def forget(self, key: Hashable) -> None:
        """Drop an unloaded model's account (a model that is holding or waiting keeps it)."""
        with self._cond:
            model = self._models.get(key)
            if model is not None and not model.waiting and self._holder != key:
                del self._models[key]

    # -- internals ---------------------------------------------------------------------------------------------

    def _acquire(self, key: Hashable) -> None:
        with self._cond:
            model = self._models.setdefault(key, _Model())
            if self._holder == key:  # kept for us since our last turn (see _release)
                self._kept_until = None
                return
            competing = [m.virtual_s for k, m in self._models.items() if k != key and (m.waiting or k == self._holder)]
            if competing:  # coming back from idle banks nothing beyond the credit
                model.virtual_s = max(model.virtual_s, min(competing) - self.wake_credit_s)
            if self._holder is None:
                self._holder = key
                return
            model.waiting = True
            self._waiting += 1
            while self._holder != key:
                if self._kept_until is not None:
                    left = self._kept_until - self._clock()
                    if left <= 0:  # the keeper did not come back: the turn goes to the most deserving waiter
                        self._hand_over()
                        continue
                    self._cond.wait(left)
                else:
                    self._cond.wait()
            model.waiting = False
            self._waiting -= 1

    def _release(self, key: Hashable, seconds: float) -> None:
        with self._cond:
            model = self._models[key]
            model.virtual_s += seconds
            model.used_s += seconds
            model.turns += 1
            if not self._waiting:
                self._holder = None
                return
            if model.virtual_s < min(m.virtual_s for m in self._models.values() if m.waiting):
                # still owed time: keep the turn for our next step, which an engine thread asks for within
                # microseconds; if it does not (its batch finished), the waiters take it after KEEP_S
                self._kept_until = self._clock() + self.keep_s
                self._cond.notify_all()  # waiters re-arm their wait with the deadline
                return
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the turn to the waiting model with the least virtual time (lock held, someone waiting)."""
        self._kept_until = None
        self._holder = min((m.virtual_s, i, k) for i, (k, m) in enumerate(self._models.items()) if m.waiting)[2]
        self._cond.notify_all()
