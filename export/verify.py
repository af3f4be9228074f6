"""Check exported graphs against the PyTorch model before an export directory is declared done.

Encoder: cross K/V for batch 1 and 7, source lengths 1 and 200 (mixed lengths with padding in one batch).
Decoder step: several sentences with two rows each are decoded step by step through the ONNX cache (cache length
0..n, rows extending random parents of their own sentence through the ``reorder_cache`` graph, a sentence joining
mid-way with ``reorder = -1`` and a left-padded history), and every step's full log-probs (k = vocab) are compared
with teacher-forced PyTorch decoding of that row's whole prefix without a cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from nmtserve.engine.batch import cross_slots
from nmtserve.engine.int8_kernels import resolve_int8_kernels, session_source
from nmtserve.engine.model_dir import CROSS_KV, DECODER_STEP, ENCODER, REORDER_CACHE, SELF_KV, per_layer
from nmtserve.model.transformer import Transformer

FP32_TOLERANCE = 1e-4


class ExportVerificationError(RuntimeError):
    """The exported graphs disagree with PyTorch beyond tolerance."""


@dataclass
class VerificationReport:
    """Largest absolute differences seen against the fp32 PyTorch model."""

    cross_kv_max_abs_diff: float = 0.0
    log_prob_max_abs_diff: float = 0.0  # over the whole vocabulary
    top_log_prob_max_abs_diff: float = 0.0  # over each row's 8 most likely tokens (what beam search looks at)
    top1_agreement: float = 1.0  # fraction of steps whose arg-max token matches PyTorch's
    int8_kernels: str = ""  # int8: the format it was measured in on the exporting CPU (engine/int8_kernels.py)
    cases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _session(path: Path, threads: int, int8_kernels: str = "u8s8") -> ort.InferenceSession:
    """``int8_kernels``: resolved, as the engine would run the graph on this CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model, _ = session_source(path, int8_kernels)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _random_sources(model: Transformer, lengths: list[int], rng: np.random.Generator) -> torch.Tensor:
    """Padded source batch: random pieces, each row ending with EOS (as the tokenizer produces)."""
    config = model.config
    ids = torch.full((len(lengths), max(lengths)), config.pad_id, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = torch.from_numpy(rng.integers(4, config.vocab_size, n - 1))
        ids[i, n - 1] = config.eos_id
    return ids


def _long_length(model: Transformer) -> int:
    return min(200, model.config.max_positions)


def _lengths(model: Transformer, *lengths: int) -> list[int]:
    """Source lengths of a case, each cut to what the model's position table holds (a converted model may have
    fewer than 64 positions), and at least 1."""
    long = _long_length(model)
    return [max(1, min(n, long)) for n in lengths]


@dataclass(frozen=True)
class _StepGraphs:
    step: ort.InferenceSession
    reorder: ort.InferenceSession


class _StepCase:
    """One step-by-step decoding run of several sentences (two rows each) through the reorder and step graphs."""

    def __init__(self, model: Transformer, graphs: _StepGraphs, lengths: list[int], cache_dtype: np.dtype):
        self.model, self.step, self.reorder, self.cache_dtype = model, graphs.step, graphs.reorder, cache_dtype
        config = model.config
        self.vocab = config.vocab_size
        self.source_ids = _random_sources(model, lengths, np.random.default_rng(len(lengths)))
        with torch.inference_mode():
            pairs = model.cross_kv(model.encode(self.source_ids))
        self.cross = [t.numpy() for pair in pairs for t in pair]  # [B, H, S, Dh] each, layer-major
        self.source_mask = (self.source_ids != config.pad_id).numpy()
        self.torch_cross = [(k, v) for k, v in pairs]

    def _reference(self, rows: list[tuple[int, list[int]]]) -> np.ndarray:
        """Teacher-forced log-probs [R, V] after each row's prefix (BOS first), without a cache: independent of
        the step graph. Rows with equal prefix lengths share one batched call."""
        model = self.model
        out = np.empty((len(rows), self.vocab), np.float32)
        for length in sorted({len(h) for _, h in rows}):
            group = [r for r, (_, h) in enumerate(rows) if len(h) == length]
            sentences = torch.tensor([rows[r][0] for r in group])
            cross = [(k[sentences], v[sentences]) for k, v in self.torch_cross]
            with torch.inference_mode():
                logits, _ = model.decode(
                    torch.tensor([rows[r][1] for r in group]), cross, model.source_mask(self.source_ids[sentences])
                )
            out[group] = torch.log_softmax(logits[:, -1].float(), dim=-1).numpy()
        return out

    def run(self, steps: int, join_step: int | None, rng: np.random.Generator, report: VerificationReport) -> None:
        config = self.model.config
        batch = self.source_ids.shape[0]
        layers, heads, d_head = config.n_decoder_layers, config.n_heads, config.d_head
        self_names, cross_names = per_layer(SELF_KV, layers), per_layer(CROSS_KV, layers)
        cache = [np.zeros((1, heads, 0, d_head), self.cache_dtype) for _ in self_names]
        mask = np.zeros((1, 0), bool)
        rows: list[tuple[int, list[int]]] = []  # (sentence, tokens fed so far incl. BOS) of each cache row
        top1_total = top1_same = 0
        for t in range(steps):
            new_rows, reorder = [], []
            for s in range(batch):
                if join_step is not None and s == batch - 1 and t < join_step:
                    continue
                parents = [i for i, (sentence, _) in enumerate(rows) if sentence == s]
                for _ in range(2):
                    parent = int(rng.choice(parents)) if parents else -1
                    history = rows[parent][1] if parent >= 0 else []
                    token = config.bos_id if not history else int(rng.integers(4, self.vocab))
                    new_rows.append((s, [*history, token]))
                    reorder.append(parent)
            sentence_of = np.array([s for s, _ in new_rows])
            sentences = sorted(set(sentence_of.tolist()))  # rows come grouped by sentence, in this order
            query_rows, row_slots = cross_slots([int(np.sum(sentence_of == s)) for s in sentences])
            *cache, mask = self.reorder.run(
                None,
                {
                    **dict(zip(self_names, cache, strict=True)),
                    "self_mask": mask,
                    "reorder": np.array(reorder, np.int64),
                },
            )
            feeds = {
                "token_ids": np.array([h[-1] for _, h in new_rows], np.int64),
                "positions": np.array([len(h) - 1 for _, h in new_rows], np.int64),
                "self_mask": mask,
                "source_mask": self.source_mask[sentences],
                "query_rows": query_rows,
                "row_slots": row_slots,
                "k": np.array([self.vocab], np.int64),
                **dict(zip(self_names, cache, strict=True)),
                **{n: t[sentences].astype(self.cache_dtype) for n, t in zip(cross_names, self.cross, strict=True)},
            }
            top_values, top_ids, *cache, mask = self.step.run(None, feeds)
            if np.any(np.diff(top_values, axis=1) > 0):
                raise ExportVerificationError(f"{DECODER_STEP}: TopK output is not sorted")
            reference = self._reference(new_rows)
            for r in range(len(new_rows)):
                actual = np.empty(self.vocab, np.float32)
                actual[top_ids[r]] = top_values[r]
                expected = reference[r]
                if not np.array_equal(np.isinf(actual), np.isinf(expected)):
                    raise ExportVerificationError(f"{DECODER_STEP}: -inf pattern differs (row {r}, step {t})")
                finite = np.isfinite(expected)
                diff = np.abs(actual[finite] - expected[finite])
                report.log_prob_max_abs_diff = max(report.log_prob_max_abs_diff, float(diff.max()))
                top = np.argsort(-expected)[:8]
                report.top_log_prob_max_abs_diff = max(
                    report.top_log_prob_max_abs_diff, float(np.abs(actual[top] - expected[top]).max())
                )
                top1_total += 1
                top1_same += int(top_ids[r, 0] == top[0])
            rows = new_rows
        report.top1_agreement = min(report.top1_agreement, top1_same / top1_total)
        report.cases.append(
            f"step: {batch} sentences x 2 rows, source lengths {sorted(set(self.source_mask.sum(1).tolist()))}, "
            f"cache length 0..{steps - 1}" + (f", sentence joining at step {join_step}" if join_step else "")
        )


def verify_encoder(model: Transformer, encoder: ort.InferenceSession, report: VerificationReport) -> None:
    rng = np.random.default_rng(0)
    long = _long_length(model)
    for lengths in ([1], [long], [1] * 7, _lengths(model, long, 1, 17, long - 3, 2, 64, 5)):
        source_ids = _random_sources(model, lengths, rng)
        with torch.inference_mode():
            pairs = model.cross_kv(model.encode(source_ids))
        expected = [t.numpy() for pair in pairs for t in pair]
        actual = encoder.run(None, {"source_ids": source_ids.numpy()})
        if [a.shape for a in actual] != [e.shape for e in expected]:
            raise ExportVerificationError(f"{ENCODER}: shapes {[a.shape for a in actual]} != {expected[0].shape}")
        diff = max(float(np.abs(a.astype(np.float32) - e).max()) for a, e in zip(actual, expected, strict=True))
        report.cross_kv_max_abs_diff = max(report.cross_kv_max_abs_diff, diff)
        report.cases.append(f"encoder: batch {len(lengths)}, source lengths {sorted(set(lengths))}")


def verify_step(model: Transformer, graphs: _StepGraphs, cache_dtype: np.dtype, report: VerificationReport):
    rng = np.random.default_rng(1)
    long = _long_length(model)
    _StepCase(model, graphs, [1], cache_dtype).run(steps=5, join_step=None, rng=rng, report=report)
    lengths = _lengths(model, long, 1, 9, long - 7, 3, 40, 2)
    _StepCase(model, graphs, lengths, cache_dtype).run(steps=6, join_step=2, rng=rng, report=report)


def verify_export(
    model: Transformer, directory: Path, precision: str, threads: int = 1, tolerance: float | None = None
) -> VerificationReport:
    """Compare the graphs in ``directory`` with ``model``; raise if fp32 (or ``tolerance``, when given) is exceeded."""
    directory = Path(directory)
    cache_dtype = np.dtype(np.float16 if precision == "fp16" else np.float32)
    kernels = resolve_int8_kernels("auto") if precision == "int8" else ""
    report = VerificationReport(int8_kernels=kernels)
    verify_encoder(model, _session(directory / ENCODER, threads, kernels), report)
    graphs = _StepGraphs(
        _session(directory / DECODER_STEP, threads, kernels), _session(directory / REORDER_CACHE, threads, kernels)
    )
    verify_step(model, graphs, cache_dtype, report)
    limit = tolerance if tolerance is not None else (FP32_TOLERANCE if precision == "fp32" else None)
    worst = max(report.cross_kv_max_abs_diff, report.log_prob_max_abs_diff)
    if limit is not None and worst > limit:
        raise ExportVerificationError(
            f"{precision} export of {directory} differs from PyTorch by {worst:.3g} > {limit:g}: {report.to_dict()}"
        )
    return report
