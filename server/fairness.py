"""Fair turns on the CPU for several models' engine threads: ``with turns.turn(model_key): batch.step()``.

Each model has its own engine threads (server/scheduler.py), and each engine step already uses the cores it is
given (onnxruntime's intra-op threads). Left to the operating system, two models stepping at once split the cores
between them, and a flooded model with large batches slows every step of a lightly loaded one; how much depends
on their thread counts, not on any policy. ``StepTurns`` runs at most ``slots`` steps (or encodes) at a time,
one per engine worker the CPU budget was planned for (``engine_workers``), and decides whose turn is next:

- **Fair by time, not by turns** (start-time fair queueing, as Linux's CFS does for threads): each model's
  *virtual time* grows by the measured duration of its turns (all its workers' together), and a freed slot goes
  to the waiting model with the least. Plain round robin would give a model whose steps cost 10x (a big batch, a
  bigger model) 10x the CPU, and a light model's translation would wait for one heavy step *per decode step*; by
  time, after one heavy step the light model may run as many of its own steps as fit in the time the heavy one
  just used.
- **An idle model banks nothing**: when a model asks for a turn, its virtual time is raised to at least the least
  virtual time of the models competing now, less ``wake_credit_s``. The credit lets a model coming back from idle
  (a light load's next request) run that long before it alternates, so a short translation is not slowed by a
  flood next door; the floor keeps a model that was idle for an hour from taking the CPU for an hour.
- **A lone model never waits** while it runs no more workers than there are slots: a free slot is taken at once
  (one lock). So a server of one model with two workers on two slots runs two batches side by side.
- Turns are handed over explicitly (the releasing thread names the next holder), so a thread that releases and
  asks again at once cannot barge ahead of a waiting model that is owed more time; and a model still owed time
  keeps its slot for its next step (``keep_s``: the gap between two steps of an engine thread is microseconds),
  otherwise two busy models would simply alternate, which is round robin by turns again.

A turn is not preemptible: a light model waits at most for the one step in progress on each slot. Measured in
``python -m nmtserve.bench.model_fairness`` (docs/benchmarks.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

WAKE_CREDIT_S = 0.05  # how far behind the competitors a model may start when it asks for a turn
KEEP_S = 0.002  # how long a turn is kept for a model still owed time, between its steps


@dataclass
class _Model:
    virtual_s: float = 0.0  # CPU time used in turns, floored when it comes back from idle
    waiting: int = 0  # threads of this model waiting for a turn
    granted: int = 0  # slots handed over to this model's waiting threads and not yet taken up by them
    held: int = 0  # slots this model holds, granted or kept included
    kept_until: list[float] = field(default_factory=list)  # deadlines of slots kept for this model's next steps
    turns: int = 0
    used_s: float = 0.0  # CPU time used in turns (not floored): for tests and benchmarks

    @property
    def unserved(self) -> bool:
        """Has a thread waiting that no slot was handed to yet."""
        return self.waiting > self.granted


class StepTurns:
    """At most ``slots`` engine steps at a time across models, a freed slot to the model that has used the least
    time."""

    def __init__(self, slots: int = 1, wake_credit_s: float = WAKE_CREDIT_S, keep_s: float = KEEP_S) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, not {slots}")
        self.slots, self.wake_credit_s, self.keep_s = slots, wake_credit_s, keep_s
        self._clock = time.perf_counter
        self._cond = threading.Condition()
        self._models: dict[Hashable, _Model] = {}

    @contextmanager
    def turn(self, key: Hashable) -> Iterator[None]:
        """Run the body as one of ``key``'s turns: waits while every slot is held or others are due first."""
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
        """Drop an unloaded model's account and the slots kept for it (a model that is holding or waiting keeps
        it)."""
        with self._cond:
            model = self._models.get(key)
            if model is None or model.waiting:
                return
            model.held -= len(model.kept_until)
            model.kept_until.clear()
            if not model.held:
                del self._models[key]
            self._hand_over()

    # -- internals ---------------------------------------------------------------------------------------------

    def _free(self) -> int:
        return self.slots - sum(model.held for model in self._models.values())

    def _acquire(self, key: Hashable) -> None:
        with self._cond:
            model = self._models.setdefault(key, _Model())
            if model.kept_until:  # a slot kept for us since one of our turns ended (see _release)
                model.kept_until.pop()
                return
            competing = [m.virtual_s for k, m in self._models.items() if k != key and (m.waiting or m.held)]
            if competing:  # coming back from idle banks nothing beyond the credit
                model.virtual_s = max(model.virtual_s, min(competing) - self.wake_credit_s)
            if self._free() > 0:  # free slots exist only while nobody waits (_hand_over fills them)
                model.held += 1
                return
            model.waiting += 1
            while True:
                timeout = self._reclaim_expired()  # may hand a slot to us
                if model.granted:
                    break
                self._cond.wait(timeout)
            model.granted -= 1
            model.waiting -= 1

    def _reclaim_expired(self) -> float | None:
        """Free the kept slots whose keeper did not come back in time and hand them over (lock held); returns
        the seconds until the next kept slot expires (None: none kept), for a waiter's timeout."""
        now, expired, nearest = self._clock(), False, None
        for model in self._models.values():
            live = [deadline for deadline in model.kept_until if deadline > now]
            if len(live) < len(model.kept_until):
                model.held -= len(model.kept_until) - len(live)
                model.kept_until[:] = live
                expired = True
            for deadline in live:
                nearest = deadline - now if nearest is None else min(nearest, deadline - now)
        if expired:
            self._hand_over()
        return nearest

    def _release(self, key: Hashable, seconds: float) -> None:
        with self._cond:
            model = self._models[key]
            model.virtual_s += seconds
            model.used_s += seconds
            model.turns += 1
            owed = [m.virtual_s for m in self._models.values() if m.unserved]
            if owed and model.virtual_s < min(owed):
                # still owed time: keep the slot for our next step, which an engine thread asks for within
                # microseconds; if it does not (its batch finished), the waiters take it after KEEP_S
                model.kept_until.append(self._clock() + self.keep_s)
                self._cond.notify_all()  # waiters re-arm their wait with the deadline
                return
            model.held -= 1
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the free slots to the unserved models with the least virtual time (lock held)."""
        handed = False
        while self._free() > 0:
            owed = [(m.virtual_s, i, m) for i, m in enumerate(self._models.values()) if m.unserved]
            if not owed:
                break
            chosen = min(owed, key=lambda entry: entry[:2])[2]
            chosen.held += 1
            chosen.granted += 1
            handed = True
        if handed:
            self._cond.notify_all()
