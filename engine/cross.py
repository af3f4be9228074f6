"""The batch's cross-attention K/V: one row per sentence, kept in the sentences' row order between steps.

Each sentence's encoder output (per decoder layer, K and V [heads, source, d_head]) and its source mask are
computed once when it joins and read by every step as [sentences, heads, width, d_head], where width is the
longest live source (shorter sources are zero-padded and masked). Sentences join (``append``) and leave
(``align`` to the live sentences' order) between steps.

Two implementations, chosen by device, as for the self-attention cache (``cache.py``):
- ``GraphCross`` (CUDA): onnxruntime-owned device values moved by the ``append_rows``/``gather_rows`` graphs, so
  nothing crosses to the host. Each join or leave copies every row.
- ``HostCross`` (CPU): numpy buffers the engine owns. A leaving sentence's row is refilled by the one that takes
  its place (``batch.fill_holes`` moves the last sentence there) and joining rows are written after the others,
  so a join or a leave copies the rows that moved only. Under continuous traffic (sentences joining every other
  step, beam 4) the two graphs' full copies were 9-12 % of the engine's time. The layout changes (every row
  copied) only when the width does: a longer source joins, or the longest one leaves.
Both give the same tensors (zero padding, the same width), so translations are identical (tests run both).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from nmtserve.engine.cache import at_least
from nmtserve.engine.model_dir import APPEND_ROWS, CROSS_KV, GATHER_ROWS, per_layer
from nmtserve.engine.runtime import Runtime, Value, strip_prefix

MASK = "source_mask"


class GraphCross:
    """The cross K/V as device values, moved by graphs (one full copy per join or leave)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.clear()

    def clear(self) -> None:
        self._values: dict[str, ort.OrtValue] | None = None
        self.serials: list[int] = []  # the sentence owning each row

    def append(self, serials: list[int], encoded: dict[str, ort.OrtValue], mask: np.ndarray) -> None:
        """Add the rows of newly encoded sentences (the encoder's outputs and their [n, source] mask) at the end."""
        new = {**encoded, MASK: self._runtime.upload(mask)}
        if self._values is None:
            self._values = new
        else:
            joined = self._runtime.run(APPEND_ROWS, {**self._values, **{f"new_{n}": v for n, v in new.items()}})
            self._values = strip_prefix(joined, "out_")
        self.serials = self.serials + serials

    def align(self, serials: list[int], width: int) -> None:
        """Keep the rows of ``serials`` (live sentences, in their row order), cut to ``width`` source slots."""
        if serials == self.serials:
            return
        assert self._values is not None
        position = {serial: i for i, serial in enumerate(self.serials)}
        rows = np.array([position[serial] for serial in serials], np.int64)
        gathered = self._runtime.run(
            GATHER_ROWS, {**self._values, "rows": rows, "source_len": np.array([width], np.int64)}
        )
        self._values, self.serials = strip_prefix(gathered, "out_"), serials

    def feeds(self) -> dict[str, Value]:
        assert self._values is not None
        return dict(self._values)


class HostCross:
    """The cross K/V in numpy buffers the engine owns (CPU): joins and leaves copy the rows that moved only."""

    def __init__(self, runtime: Runtime) -> None:
        info = runtime.info
        self._names = per_layer(CROSS_KV, info.n_decoder_layers)
        self._heads, self._d_head = info.n_heads, info.d_head
        self._buffers = {name: np.empty(0, runtime.cache_dtype) for name in self._names}  # the K/V dtype
        self.clear()

    def clear(self) -> None:
        self.serials: list[int] = []  # the sentence owning each row
        self._width = 0
        self._mask = np.zeros((0, 0), bool)
        self._fed: dict[str, Value] | None = None  # the values of the last feeds(), while nothing changed

    def _view(self, name: str, rows: int, width: int, keep: bool = True) -> np.ndarray:
        """The [rows, heads, width, d_head] prefix of a buffer, grown (``keep``: with its contents) if too small."""
        size = rows * self._heads * width * self._d_head
        buffer = self._buffers[name] = at_least(self._buffers[name], size, keep)
        return buffer[:size].reshape(rows, self._heads, width, self._d_head)

    def _relayout(self, order: np.ndarray, width: int) -> None:
        """Every row anew: row i becomes old row ``order[i]``, at ``width`` slots (zero-padded beyond the old)."""
        kept = min(width, self._width)
        for name in self._names:
            rows = self._view(name, len(self.serials), self._width)[order, :, :kept]  # a copy: the buffer is rewritten
            after = self._view(name, len(order), width, keep=False)
            after[:, :, :kept] = rows
            after[:, :, kept:] = 0
        mask = np.zeros((len(order), width), bool)
        mask[:, :kept] = self._mask[order, :kept]
        self._mask, self._width = mask, width

    def append(self, serials: list[int], encoded: dict[str, ort.OrtValue], mask: np.ndarray) -> None:
        """Add the rows of newly encoded sentences after the others (relayout first if their source is longer)."""
        new_width = mask.shape[1]
        if not self.serials:
            self._width, self._mask = new_width, np.zeros((0, new_width), bool)
        elif new_width > self._width:
            self._relayout(np.arange(len(self.serials)), new_width)
        start, end = len(self.serials), len(self.serials) + len(serials)
        for name in self._names:
            rows = encoded[name].numpy()
            after = self._view(name, end, self._width)
            after[start:, :, :new_width] = rows
            after[start:, :, new_width:] = 0
        grown = np.zeros((end, self._width), bool)
        grown[:start], grown[start:, :new_width] = self._mask, mask
        self._mask, self._fed = grown, None
        self.serials = self.serials + serials

    def align(self, serials: list[int], width: int) -> None:
        """Keep the rows of ``serials`` (in their row order) at ``width`` slots; unmoved rows are not touched
        unless the width changes."""
        if serials == self.serials and width == self._width:
            return
        position = {serial: i for i, serial in enumerate(self.serials)}
        order = np.array([position[serial] for serial in serials], np.int64)
        if width != self._width:
            self._relayout(order, width)
        else:
            moved = np.flatnonzero(order != np.arange(len(order)))
            for name in self._names:
                rows = self._view(name, len(self.serials), width)[order[moved]]  # a copy: sources may be overwritten
                self._view(name, len(order), width)[moved] = rows
            self._mask = self._mask[order]
        self.serials, self._fed = serials, None

    def feeds(self) -> dict[str, Value]:
        if self._fed is not None:
            return self._fed
        rows = len(self.serials)
        values: dict[str, Value] = {
            name: ort.OrtValue.ortvalue_from_numpy(self._view(name, rows, self._width)) for name in self._names
        }
        values[MASK] = self._mask
        self._fed = values
        return values
