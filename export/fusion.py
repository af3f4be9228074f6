"""Optional offline fusion with ``onnxruntime.transformers.optimizer``, kept only when faster and still exact.

Only the traced encoder is a candidate (the decoder step is written around onnxruntime's fused attention). On it
the optimizer finds no attention pattern it knows (plain MatMul/Softmax with a boolean mask) and only fuses
SkipLayerNormalization, whose CPU kernel is slower than the Add + LayerNormalization it replaces (the engine turns
that fusion off in its CPU sessions, see ``engine/runtime.py``). Hence this is opt-in
(``export_model(..., fuse=True)``) and decided by measurement, with both graphs opened exactly as the engine opens
them: a fusion baked into the file is not undone by the engine's session options.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nmtserve.engine.runtime import RuntimeConfig, open_session

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


def _median_ms(session: ort.InferenceSession, feeds: Feeds, runs: int) -> float:
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def _session(path: Path) -> ort.InferenceSession:
    return open_session(path, RuntimeConfig(device="cpu", threads=1))


def maybe_fuse(
    path: Path, num_heads: int, hidden_size: int, feeds: Feeds, runs: int = 50, min_gain: float = 0.05
) -> dict:
    """Fuse ``path`` into a copy; replace the original only if outputs are identical (<= 1e-6) and it is at least
    ``min_gain`` faster. Returns what was measured and decided, for the manifest."""
    from onnxruntime.transformers import optimizer

    fused_path = path.with_suffix(".fused.onnx")
    fused = optimizer.optimize_model(
        str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1, use_gpu=False
    )
    fused.save_model_to_file(str(fused_path))
    base, candidate = _session(path), _session(fused_path)
    diff = max(
        float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
        for a, b in zip(base.run(None, feeds), candidate.run(None, feeds), strict=True)
    )
    base_ms, fused_ms = _median_ms(base, feeds, runs), _median_ms(candidate, feeds, runs)
    keep = diff <= 1e-6 and fused_ms < base_ms * (1 - min_gain)
    if keep:
        shutil.move(fused_path, path)
    else:
        fused_path.unlink()
    log.info("fusion of %s: %.3f ms -> %.3f ms, diff %.2g, kept=%s", path.name, base_ms, fused_ms, diff, keep)
    return {"kept": keep, "base_ms": round(base_ms, 4), "fused_ms": round(fused_ms, 4), "max_abs_diff": diff}
