"""One decoder step, left-padded (``MultiHeadAttention``) vs ragged (``GroupQueryAttention``), on the same shapes.

    python -m nmtserve.bench.ragged_step --left export/demo/fp32 --ragged /tmp/ragged-fp32

Both graphs run as the engine runs them on CPU: IO binding, the cache in buffers the caller owns (the left-padded
step writes its grown cache into a second buffer; the ragged one appends in place). Sentences of 4 rows (beam 4),
30 source tokens, every row with the same history length (the cohort case; a joining row would add padding to
the left-padded graph only). Thread CPU time, the minimum of ``--runs`` alternating calls: on a shared machine
the minimum is the figure least moved by other processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nmtserve.engine.model_dir import CROSS_KV, DECODER_STEP, SELF_KV, load_model_info, per_layer
from nmtserve.engine.runtime import RuntimeConfig, open_session

SHAPES = ((64, 16), (64, 48), (64, 96), (128, 48))  # (rows, cached tokens)


def _bind(session: ort.InferenceSession, inputs: dict, outputs: dict, host: tuple[str, ...]) -> Callable[[], None]:
    def run() -> None:
        binding = session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        for name in host:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)

    return run


def compare(left: Path, ragged: Path, runs: int = 25, seed: int = 0) -> list[dict]:
    info = load_model_info(left)
    heads, d_head, layers, vocab = info.n_heads, info.d_head, info.n_decoder_layers, info.vocab_size
    config = RuntimeConfig(threads=1, spin=False)
    sessions = {name: open_session(path / DECODER_STEP, config) for name, path in (("left", left), ("ragged", ragged))}
    rng = np.random.default_rng(seed)
    self_names, cross_names = per_layer(SELF_KV, layers), per_layer(CROSS_KV, layers)
    rows_out = []
    for rows, cached in SHAPES:
        sentences = rows // 4
        shared = {
            "token_ids": rng.integers(4, vocab, rows),
            "positions": np.full(rows, cached, np.int64),
            "query_rows": np.arange(rows, dtype=np.int64).reshape(sentences, 4),
            "row_slots": np.arange(rows, dtype=np.int64),
            "source_mask": np.ones((sentences, 30), bool),
            "k": np.array([8], np.int64),
            **{n: rng.standard_normal((sentences, heads, 30, d_head)).astype(np.float32) for n in cross_names},
        }
        past = {n: rng.standard_normal((rows, heads, cached, d_head)).astype(np.float32) for n in self_names}
        grown = {f"new_{n}": np.empty((rows, heads, cached + 1, d_head), np.float32) for n in self_names}
        capacity = 2 * cached + 32
        buffers = {n: rng.standard_normal((rows, heads, capacity, d_head)).astype(np.float32) for n in self_names}
        in_place = {n: ort.OrtValue.ortvalue_from_numpy(b) for n, b in buffers.items()}
        calls = {
            "left": _bind(
                sessions["left"],
                {**shared, **past, "self_mask": np.ones((rows, cached), bool)},
                {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in grown.items()},
                ("topk_log_probs", "topk_ids", "new_self_mask"),
            ),
            "ragged": _bind(
                sessions["ragged"],
                {**shared, **in_place},
                {f"new_{n}": v for n, v in in_place.items()},
                ("topk_log_probs", "topk_ids"),
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(runs):
            for name, call in calls.items():
                start = time.thread_time()
                call()
                times[name].append(time.thread_time() - start)
        best = {name: min(t) * 1000 for name, t in times.items()}
        row = {"rows": rows, "cached": cached, "left_ms": best["left"], "ragged_ms": best["ragged"]}
        rows_out.append(row)
        print(
            f"{info.precision} rows {rows} cached {cached}: left-padded {best['left']:.2f} ms, "
            f"ragged {best['ragged']:.2f} ms, ragged/left {best['ragged'] / best['left']:.2f}",
            flush=True,
        )
    return rows_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtserve.bench.ragged_step", description=__doc__.split("\n")[0])
    parser.add_argument("--left", type=Path, required=True, help="a standard (left-padded) export")
    parser.add_argument("--ragged", type=Path, required=True, help="the same model exported with --ragged")
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args(argv)
    compare(args.left, args.ragged, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
