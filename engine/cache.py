"""The decoder's self-attention cache: where it lives and how its rows move between steps.

Every step the cache is read as the step graph's past K/V (one tensor per layer, [rows, heads, length, d_head],
plus a bool mask [rows, length]) and comes back one slot longer. Between steps its rows are rearranged: beam
search gives each row the history of the hypothesis it extends (``reorder``), finished sentences leave, new
ones start with an empty history, and slots that no live row uses any more are dropped (``trim``).

Two implementations, chosen by device:
- ``GraphCache`` (CUDA): the tensors are onnxruntime-owned device values, rearranged by the small
  ``reorder_cache``/``trim_cache`` graphs, so the cache never crosses to the host. Each reorder copies the whole
  cache, whichever rows moved.
- ``HostCache`` (CPU): the tensors are numpy arrays the engine owns, in two buffers per tensor used in turn: the
  step reads the past from one and writes the grown cache into the other (IO binding to the engine's memory).
  Owning the memory lets a reorder copy only the rows that moved, in place. Beam search keeps a hypothesis in
  its parent's row where it can (``beam.stable_slots``), so on the dev set about 80 % of rows stay put at beam
  4 instead of about 50 %; the full-cache ``Gather`` of ``reorder_cache`` was 6-9 % of CPU decoding time.
Both give the same tensors, so translations are identical (a test runs both).
- ``RaggedHostCache`` (CPU, exports with ``cache_layout: ragged``, see ``export/ragged.py``): one right-padded
  buffer per tensor, [rows, heads, capacity, d_head], row r's history in slots 0..step-1. The step's
  ``GroupQueryAttention`` appends in place (past and present are the same memory) and attends over each row's
  own length, so a sentence joining a running batch pays for its own history only: no left-padding and no
  trim. The capacity follows the batch's longest history (``_ensure_capacity``), so the cache is laid out anew
  only a few times per batch. A reorder copies the moved rows' used slots only, each once (``copy_rows``).

Memory: a host buffer grows to the largest rows x length the batch has held (with ``GROWTH`` headroom) and is
kept for later batches, as onnxruntime's arena keeps its blocks; the peak is two copies of the largest cache.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from nmtserve.engine.model_dir import REORDER_CACHE, SELF_KV, TRIM_CACHE, per_layer
from nmtserve.engine.runtime import Runtime, Value, strip_prefix

MASK = "self_mask"
GROWTH = 1.5  # a host buffer that must grow takes this much headroom, so growth is rare
CAPACITY_STEP = 32  # the ragged cache's least growth, in slots per row


def at_least(buffer: np.ndarray, size: int, keep: bool = True) -> np.ndarray:
    """``buffer`` if it holds ``size`` elements, else a larger one (``GROWTH`` headroom; ``keep``: with its
    contents as a prefix). Host buffers are laid out so that growing keeps every row where it was."""
    if buffer.size >= size:
        return buffer
    grown = np.empty(int(size * GROWTH), buffer.dtype)
    if keep:
        grown[: buffer.size] = buffer
    return grown


class GraphCache:
    """The cache as device values, rearranged by graphs (one full copy per reorder or trim)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._names = per_layer(SELF_KV, runtime.info.n_decoder_layers)
        self.reset()

    def reset(self) -> None:
        """An empty cache: one row (so that Gather has something to index) of length 0."""
        info, upload = self._runtime.info, self._runtime.upload
        empty = np.zeros((1, info.n_heads, 0, info.d_head), self._runtime.cache_dtype)
        self._values: dict[str, Value] = {name: upload(empty) for name in self._names}
        self._values[MASK] = upload(np.zeros((1, 0), bool))
        self.rows, self.length = 1, 0

    def reorder(self, sources: np.ndarray, histories: np.ndarray | None = None) -> None:
        """Row i becomes a copy of row ``sources[i]`` (-1: an empty, masked history). ``histories`` (each new row's
        own history length) is not needed: left-padded rows all span the longest history."""
        if _is_identity(sources, self.rows):
            return
        moved = self._runtime.run(REORDER_CACHE, {**self._values, "reorder": sources})
        self._values, self.rows = strip_prefix(moved, "out_"), len(sources)

    def trim(self, keep: int) -> None:
        """Keep the newest ``keep`` slots (rows are left-padded, so the oldest are the unused ones)."""
        if keep < self.length:
            trimmed = self._runtime.run(TRIM_CACHE, {**self._values, "keep": np.array([keep], np.int64)})
            self._values, self.length = strip_prefix(trimmed, "out_"), keep

    def feeds(self) -> dict[str, Value]:
        return self._values

    def step_outputs(self, rows: int) -> dict[str, ort.OrtValue]:
        """Outputs to bind before the step (none: onnxruntime allocates them on the device)."""
        return {}

    def host_outputs(self) -> tuple[str, ...]:
        return ()

    def advance(self, outputs: dict[str, ort.OrtValue], rows: int) -> None:
        """Take the step's grown cache (its ``new_`` outputs) of ``rows`` rows."""
        self._values = strip_prefix(outputs, "new_")
        self.rows, self.length = rows, self.length + 1


class HostCache:
    """The cache in numpy buffers the engine owns (CPU), so that a reorder moves only the rows that changed."""

    def __init__(self, runtime: Runtime) -> None:
        info = runtime.info
        self._names = per_layer(SELF_KV, info.n_decoder_layers)
        self._row_shape = (info.n_heads, info.d_head)  # a row holds [heads, length, d_head]
        self._dtype = runtime.cache_dtype
        self._buffers = {name: [np.empty(0, self._dtype), np.empty(0, self._dtype)] for name in self._names}
        self.reset()

    def reset(self) -> None:
        self._side = 0  # which of each tensor's two buffers holds the cache
        self.rows, self.length = 1, 0
        self._mask = np.zeros((1, 0), bool)

    def _view(self, name: str, side: int, rows: int, length: int, keep: bool = True) -> np.ndarray:
        """The [rows, heads, length, d_head] prefix of a buffer, grown (``keep``: with its contents) if too small."""
        heads, d_head = self._row_shape
        size = rows * heads * length * d_head
        buffer = self._buffers[name][side] = at_least(self._buffers[name][side], size, keep)
        return buffer[:size].reshape(rows, heads, length, d_head)

    def reorder(self, sources: np.ndarray, histories: np.ndarray | None = None) -> None:
        """Row i becomes a copy of row ``sources[i]`` (-1: an empty, masked history); unmoved rows are not touched
        (``histories``: not needed, as above).

        Rows are laid out one after another, so row r sits at the same offset whatever the row count, and the
        moved rows are copied within the buffer (``copy_rows``).
        """
        if _is_identity(sources, self.rows):
            return
        moved = np.flatnonzero(sources != np.arange(len(sources)))
        copied, empty = moved[sources[moved] >= 0], moved[sources[moved] < 0]
        if self.length:
            span = max(self.rows, len(sources))  # rows keep their offsets: one view covers old and new rows
            views = [self._view(name, self._side, span, self.length) for name in self._names]
            copy_rows(views, {int(d): (int(sources[d]), self.length) for d in copied})
            for view in views:
                view[empty] = 0  # after the copies: an emptied row may still have been read
        mask = self._mask[np.maximum(sources, 0)]
        mask[empty] = False
        self._mask, self.rows = mask, len(sources)

    def trim(self, keep: int) -> None:
        """Keep the newest ``keep`` slots: copied into the other buffers (a slot range is not a contiguous block)."""
        if keep >= self.length:
            return
        other = 1 - self._side
        for name in self._names:
            before = self._view(name, self._side, self.rows, self.length)
            self._view(name, other, self.rows, keep, keep=False)[...] = before[:, :, self.length - keep :]
        self._mask = np.ascontiguousarray(self._mask[:, self.length - keep :])
        self._side, self.length = other, keep

    def feeds(self) -> dict[str, Value]:
        values: dict[str, Value] = {
            name: ort.OrtValue.ortvalue_from_numpy(self._view(name, self._side, self.rows, self.length))
            for name in self._names
        }
        values[MASK] = self._mask
        return values

    def step_outputs(self, rows: int) -> dict[str, ort.OrtValue]:
        """The other buffers, bound as the step's grown-cache outputs: the step writes straight into them."""
        other = 1 - self._side
        return {
            f"new_{name}": ort.OrtValue.ortvalue_from_numpy(self._view(name, other, rows, self.length + 1, keep=False))
            for name in self._names
        }

    def host_outputs(self) -> tuple[str, ...]:
        return (f"new_{MASK}",)

    def advance(self, outputs: dict[str, ort.OrtValue], rows: int) -> None:
        self._mask = outputs[f"new_{MASK}"].numpy()
        self._side, self.rows, self.length = 1 - self._side, rows, self.length + 1


class RaggedHostCache:
    """The ragged cache (see the module doc): per-row lengths, written in place by the step graph (CPU)."""

    def __init__(self, runtime: Runtime) -> None:
        info = runtime.info
        self._names = per_layer(SELF_KV, info.n_decoder_layers)
        self._heads, self._d_head = info.n_heads, info.d_head
        self._dtype = runtime.cache_dtype
        self._buffers = {name: np.empty(0, self._dtype) for name in self._names}
        self._bound: dict[str, ort.OrtValue] = {}
        self._bound_layout: tuple[int, ...] = ()
        self.reset()

    def reset(self) -> None:
        self.rows, self.length = 1, 0  # length: the longest history any row may have (slots to copy on reorder)
        self._capacity = 0  # slots per row: the next batch lays its rows out for its own histories

    def _view(self, name: str, rows: int, keep: bool = True) -> np.ndarray:
        size = rows * self._heads * self._capacity * self._d_head
        buffer = self._buffers[name] = at_least(self._buffers[name], size, keep)  # row r keeps its offset
        return buffer[:size].reshape(rows, self._heads, self._capacity, self._d_head)

    def _ensure_capacity(self, slots: int) -> None:
        """Room for ``slots`` per row, and not much more: a new layout when the rows are too short or more than
        twice too long (the longest history left). The used slots are copied over (out first, so a buffer that
        must grow for the new stride need not copy its old contents too).

        Why tight: the capacity is every row's stride, so slack spreads the rows' used slots over more memory.
        With the capacity of the longest batch kept for all later ones (the old rule: double, never shrink),
        beam-4 decodes of long sentences ran 1.08-1.19x slower, most of it in reorders copying between rows far
        apart (docs/benchmarks.md, issue 17, session 20). Growing by half (at least ``CAPACITY_STEP`` slots) lays
        the cache out anew a few times per batch; growing by a quarter did so twice as often and ran 1.01-1.07x
        slower.
        """
        if slots <= self._capacity <= 2 * slots + CAPACITY_STEP:
            return
        old = {name: self._view(name, self.rows)[:, :, : self.length].copy() for name in self._names}
        self._capacity = slots + max(CAPACITY_STEP, slots // 2)
        for name in self._names:
            self._view(name, self.rows, keep=False)[:, :, : self.length] = old[name]

    def reorder(self, sources: np.ndarray, histories: np.ndarray | None = None) -> None:
        """Row i takes row ``sources[i]``'s history (-1: none; its slots are simply overwritten from slot 0).

        ``histories``: each new row's own history length (its position), so that a moved row copies its own used
        slots rather than the longest history's: under continuous batching young sentences' beams reorder too.
        """
        if _is_identity(sources, self.rows):
            return
        copied = np.flatnonzero((sources != np.arange(len(sources))) & (sources >= 0))
        if self.length and len(copied):
            used = np.full(len(copied), self.length)
            if histories is not None:
                used = np.minimum(histories[copied], used)
            moves = {int(d): (int(sources[d]), int(n)) for d, n in zip(copied, used, strict=True)}
            copy_rows([self._view(name, max(self.rows, len(sources))) for name in self._names], moves)
        self.rows = len(sources)

    def trim(self, keep: int) -> None:
        """Nothing moves: the longest live history just bounds what a reorder copies."""
        self.length = min(self.length, keep)

    def feeds(self) -> dict[str, Value]:
        self._ensure_capacity(self.length + 1)
        layout = (self.rows, self._capacity, *(id(self._buffers[name]) for name in self._names))
        if layout != self._bound_layout:  # the same buffers and shape: the values bound last step still fit
            self._bound = {name: ort.OrtValue.ortvalue_from_numpy(self._view(name, self.rows)) for name in self._names}
            self._bound_layout = layout
        return dict(self._bound)

    def step_outputs(self, rows: int) -> dict[str, ort.OrtValue]:
        """The very values fed as the past (``feeds`` runs first): the step appends each row's new key/value in
        place, which onnxruntime's kernel recognises by past and present sharing their memory."""
        if rows != self.rows:
            raise ValueError(f"the step writes {rows} rows, the cache holds {self.rows}")
        return {f"new_{name}": value for name, value in self._bound.items()}

    def host_outputs(self) -> tuple[str, ...]:
        return ()

    def advance(self, outputs: dict[str, ort.OrtValue], rows: int) -> None:
        self.rows, self.length = rows, self.length + 1


def copy_rows(views: list[np.ndarray], moves: dict[int, tuple[int, int]]) -> None:
    """For each ``row: (source, slots)`` of ``moves``, the first ``slots`` slots of ``row`` in every view ([rows,
    heads, slots, d_head]) become those of ``source``, as if every row were read before any was written.

    Why not ``view[rows] = view[sources]``: numpy gathers index arrays into a temporary first, so every moved row
    was copied twice, and at long histories beam search's reorders were 20 % of a decode (GPL-3, int8, beam 4,
    docs/benchmarks.md, issue 17, session 18). Here each moved row is copied once, straight to its place, in an
    order in which no row is overwritten while a later move still reads it; only a cycle of moves (two beams
    trading parents) sets one row aside first.
    """
    readers: dict[int, int] = {}  # rows still to be read by a pending move that are themselves overwritten
    for source, _ in moves.values():
        if source in moves:
            readers[source] = readers.get(source, 0) + 1
    ready = [row for row in moves if row not in readers]
    pending = dict(moves)
    set_aside: dict[int, list[np.ndarray]] = {}
    while pending:
        while ready:
            row = ready.pop()
            source, slots = pending.pop(row)
            kept = set_aside.get(source)
            for i, view in enumerate(views):
                view[row, :, :slots] = (view[source] if kept is None else kept[i])[:, :slots]
            if source in readers:
                readers[source] -= 1
                if readers[source] == 0 and source in pending:
                    ready.append(source)
        if pending:  # only cycles are left: keep one row's contents aside, and that row may be written
            row = next(iter(pending))
            longest = max(slots for source, slots in pending.values() if source == row)
            set_aside[row] = [view[row, :, :longest].copy() for view in views]
            del readers[row]
            ready.append(row)


def _is_identity(sources: np.ndarray, rows: int) -> bool:
    return len(sources) == rows and bool((sources == np.arange(rows)).all())
