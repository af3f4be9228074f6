"""A vocabulary shortlist for an exported model: a lexical table from the training corpus, and the step graph's
output projection rewritten to cover only the tokens a batch's sources make likely (CTranslate2's vmap, Marian's
lexical shortlist).

Why: at the demo's size the [rows x d] x [d x V] projection, its LogSoftmax and TopK are about 40 % of a decoder
step's multiply-adds, and nearly all of the vocabulary is impossible for any given source sentence.

- **The table.** Per source token, the ``per_source`` target tokens that most often share a training sentence pair
  with it, not counting the ``frequent`` most common target tokens, which every shortlist contains anyway (they
  co-occur with everything, so ranking by raw co-occurrence would spend every slot on them). Pairs seen fewer than
  ``min_count`` times are noise and are dropped. Stored as CSR arrays in ``shortlist.npz`` (read with
  ``allow_pickle=False``), with the projection's own tensors (below), listed in the manifest like every file.
- **The graph.** Every initializer the projection reads whose last axis is the vocabulary (fp32: the [d, V]
  weight; int8: its int8 columns, per-column scales and zero points; a final logits bias) becomes a graph input
  ``vocab.<name>`` of the batch's V' columns, and ``topk_ids`` maps the subset's indices back through
  ``vocab_ids``. The engine gathers the columns once when the batch's vocabulary changes (a sentence joins), not
  per step (``engine/shortlist.py``). Log-probabilities are normalised over the subset, as in CTranslate2.
- **The gate.** Like int8: a shortlist export is refused unless it scores within 0.3 BLEU of its source export on
  the dev split (``build_shortlist_export``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from nmtserve.engine.model_dir import (
    DECODER_STEP,
    MANIFEST,
    load_model_info,
    read_manifest,
    sha256_file,
    write_manifest,
)
from nmtserve.engine.shortlist import SHORTLIST_FILE, VOCAB_IDS, VOCAB_PREFIX
from nmtserve.engine.tokenizer import load_tokenizer
from nmtserve.export.verify import FP32_TOLERANCE, ExportVerificationError

BLEU_TOLERANCE = 0.3  # the bar: a shortlist may cost at most this much BLEU on dev
CHUNK = 4096  # sentence pairs per counting chunk: bounds the pair-key arrays to a few hundred MB


@dataclass(frozen=True)
class ShortlistParameters:
    per_source: int = 20  # target candidates kept per source token
    frequent: int = 300  # most frequent target tokens, always in the shortlist
    min_count: int = 2  # co-occurrences below this are dropped


@dataclass(frozen=True)
class LexicalTable:
    """CSR: source token s's candidates are ``targets[offsets[s]:offsets[s + 1]]``; ``always`` joins every list."""

    offsets: np.ndarray  # int64 [V + 1]
    targets: np.ndarray  # int32 [nnz]
    always: np.ndarray  # int32 [frequent]


def read_parallel(corpus: Path, split: str = "train") -> tuple[list[str], list[str]]:
    sources = (corpus / f"{split}.en").read_text(encoding="utf-8").splitlines()
    targets = (corpus / f"{split}.de").read_text(encoding="utf-8").splitlines()
    if len(sources) != len(targets):
        raise ValueError(f"{corpus}/{split}: {len(sources)} source lines but {len(targets)} target lines")
    return sources, targets


def _pair_keys(sources: list[list[int]], targets: list[list[int]], vocab: int) -> np.ndarray:
    """s * vocab + t for every (distinct source token, distinct target token) of each sentence pair."""
    keys = []
    for source, target in zip(sources, targets, strict=True):
        s, t = np.unique(source), np.unique(target)
        keys.append((s[:, None] * vocab + t[None, :]).ravel())
    return np.concatenate(keys) if keys else np.empty(0, np.int64)


def build_table(
    source_ids: list[list[int]], target_ids: list[list[int]], vocab: int, parameters: ShortlistParameters
) -> LexicalTable:
    """Count sentence-level co-occurrences (sparse: distinct pairs only) and keep each source token's best."""
    target_counts = np.zeros(vocab, np.int64)
    for target in target_ids:
        target_counts[np.unique(target)] += 1
    always = np.argsort(-target_counts, kind="stable")[: parameters.frequent].astype(np.int32)
    is_frequent = np.zeros(vocab, bool)
    is_frequent[always] = True

    pair_keys, pair_counts = np.empty(0, np.int64), np.empty(0, np.int64)
    for start in tqdm(range(0, len(source_ids), CHUNK), desc="co-occurrences", unit="chunk"):
        keys = _pair_keys(source_ids[start : start + CHUNK], target_ids[start : start + CHUNK], vocab)
        keys = keys[~is_frequent[keys % vocab]]
        merged, inverse = np.unique(np.concatenate([pair_keys, keys]), return_inverse=True)
        counts = np.zeros(len(merged), np.int64)
        np.add.at(counts, inverse[: len(pair_keys)], pair_counts)
        counts += np.bincount(inverse[len(pair_keys) :], minlength=len(merged))
        pair_keys, pair_counts = merged, counts

    keep = pair_counts >= parameters.min_count
    pair_keys, pair_counts = pair_keys[keep], pair_counts[keep]
    pair_source, pair_target = pair_keys // vocab, pair_keys % vocab
    # per source token, the most frequent partners first: sort by (source, -count)
    order = np.lexsort((-pair_counts, pair_source))
    pair_source, pair_target = pair_source[order], pair_target[order]
    starts = np.searchsorted(pair_source, np.arange(vocab + 1))
    kept = np.arange(len(pair_source)) - starts[pair_source] < parameters.per_source
    pair_source, pair_target = pair_source[kept], pair_target[kept]
    offsets = np.searchsorted(pair_source, np.arange(vocab + 1)).astype(np.int64)
    return LexicalTable(offsets, pair_target.astype(np.int32), always)


def build_table_from_corpus(model_dir: Path, corpus: Path, parameters: ShortlistParameters) -> LexicalTable:
    """The table from ``corpus``'s training split, tokenized by the export's own tokenizer."""
    info = load_model_info(model_dir, verify=False)
    tokenizer = load_tokenizer(model_dir, info.manifest.get("tokenizer"))
    sources, targets = read_parallel(corpus)
    encode_target = getattr(tokenizer, "encode_target_batch", tokenizer.encode_batch)
    source_ids, target_ids = tokenizer.encode_batch(sources), encode_target(targets)
    return build_table(source_ids, target_ids, info.vocab_size, parameters)


def _projection_tail(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes between the last hidden state and LogSoftmax: the projection (and its int8 scaffolding, bias)."""
    nodes = list(graph.node)
    softmax = next((i for i, n in enumerate(nodes) if n.op_type == "LogSoftmax"), None)
    if softmax is None:
        raise ExportVerificationError(f"{DECODER_STEP}: no LogSoftmax, so no output projection to shortlist")
    squeeze = max(i for i, n in enumerate(nodes[:softmax]) if n.op_type == "Squeeze")
    return nodes[squeeze + 1 : softmax]


def rewrite_step_graph(path: Path, vocab: int) -> dict[str, tuple[np.ndarray, int]]:
    """Rewrite ``path`` in place for a shortlist; return, by the graph input each feeds, the vocabulary-indexed
    tensors the engine gathers from and the axis it gathers along.

    An fp32 projection ``MatMul(h, W)`` becomes ``Transpose(MatMul(W_subset^T, h^T))`` with the subset fed as
    [V', d] rows: onnxruntime packs a MatMul's B operand on every call unless it is a constant, and packing the
    [d, V'] weight cost more than it saved at a few rows (h^T, the B here, is tiny). Measured on the demo's shape
    (d 256, V' 2145, one thread): 4 rows 198 vs 158 us, 32 rows 370 vs 445 us, 128 rows 1646 vs 2290 us; the full
    [d, 8000] projection with its pre-packed constant: 213, 1859, 6463 us. int8's ``MatMulInteger`` keeps its
    layout and is fed the subset of the int8 columns with their scales and zero points: its packing is cheap
    (4 rows 60 us, 32 rows 233 us, 128 rows 623 us against 101, 691, 2785 us for all 8000 columns; an fp32 product
    on the dequantized subset, tried first, was slower than the full int8 projection)."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    tail = _projection_tail(graph)
    columns: dict[str, tuple[np.ndarray, int]] = {}

    def feed(name: str, array: np.ndarray, axis: int) -> str:
        fed = VOCAB_PREFIX + name
        columns[fed] = (array, axis)
        shape: list[int | str] = list(array.shape)
        shape[axis] = "vocab_subset"
        graph.input.append(helper.make_tensor_value_info(fed, helper.np_dtype_to_tensor_dtype(array.dtype), shape))
        return fed

    for node in tail:
        weights = [(i, n) for i, n in enumerate(node.input) if n in initializers and initializers[n].dims]
        for position, name in weights:
            if initializers[name].dims[-1] != vocab:
                continue
            array = numpy_helper.to_array(initializers[name])
            if node.op_type == "MatMul" and position == 1 and array.ndim == 2:  # fp32: the transposed form
                rows = feed(name, np.ascontiguousarray(array.T), 0)
                hidden, out = node.input[0], node.output[0]
                index = list(graph.node).index(node)
                graph.node.remove(node)
                replacement = [
                    helper.make_node("Transpose", [hidden], [f"{out}_hidden_t"], perm=[1, 0], name=f"{out}_t_in"),
                    helper.make_node("MatMul", [rows, f"{out}_hidden_t"], [f"{out}_t"], name=f"{out}_subset"),
                    helper.make_node("Transpose", [f"{out}_t"], [out], perm=[1, 0], name=f"{out}_t_out"),
                ]
                for offset, new in enumerate(replacement):
                    graph.node.insert(index + offset, new)
            else:
                node.input[position] = feed(name, array, array.ndim - 1)
    if not columns:
        raise ExportVerificationError(f"{DECODER_STEP}: the output projection reads no [.., {vocab}] weight")
    for name in {name.removeprefix(VOCAB_PREFIX) for name in columns}:
        if not any(name in n.input for n in graph.node):  # e.g. int8 scales: the projection's alone
            graph.initializer.remove(initializers[name])
    topk = next(n for n in graph.node if n.op_type == "TopK")
    topk.output[1] = "topk_subset_index"
    graph.node.append(helper.make_node("Gather", [VOCAB_IDS, "topk_subset_index"], ["topk_ids"], name="vocab_map"))
    graph.input.append(helper.make_tensor_value_info(VOCAB_IDS, TensorProto.INT64, ["vocab_subset"]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return columns


def _check_full_subset(source_dir: Path, shortlist_dir: Path) -> dict[str, Any]:
    """The rewritten graph with a shortlist of the whole vocabulary against the source export, on real sentences
    (the engine on both directories, beam 4): fp32 must translate identically (the rewrite is exact up to
    summation order); int8 quantizes the projection's input per call, over the same values, so its agreement is
    recorded and the BLEU gate judges it."""
    from nmtserve.engine import DecodingOptions, Engine

    texts = ["The file could not be opened.", "Click here to install the package, then restart the computer."]
    options = DecodingOptions(beam_size=4)
    base = Engine.load(source_dir, threads=1).translate(texts, options)
    engine = Engine.load(shortlist_dir, threads=1)
    assert engine.runtime.shortlist is not None
    engine.runtime.shortlist = engine.runtime.shortlist.covering_everything()
    other = engine.translate(texts, options)
    pairs = [(a, b) for left, right in zip(base, other, strict=True) for a, b in zip(left, right, strict=True)]
    same = sum(a.token_ids == b.token_ids for a, b in pairs)
    difference = max(abs(float(a.log_prob or 0.0) - float(b.log_prob or 0.0)) for a, b in pairs)
    if engine.info.precision == "fp32" and (same < len(pairs) or difference > FP32_TOLERANCE):
        raise ExportVerificationError(
            f"a whole-vocabulary shortlist changed fp32 translations ({same}/{len(pairs)} identical, "
            f"log-prob difference {difference:.3g})"
        )
    return {"whole_vocabulary_identical": f"{same}/{len(pairs)}", "whole_vocabulary_log_prob_max_abs_diff": difference}


def build_shortlist_export(
    source_dir: Path,
    out_dir: Path,
    corpus: Path,
    parameters: ShortlistParameters = ShortlistParameters(),
    *,
    bleu_split: str | None = "dev",
    bleu_tolerance: float = BLEU_TOLERANCE,
    threads: int = 1,
) -> Path:
    """Copy the verified export ``source_dir`` into ``out_dir`` with a shortlist built from ``corpus``'s training
    split; refused (nothing written) if it loses more than ``bleu_tolerance`` BLEU on ``bleu_split`` (None: no
    gate)."""
    source_dir, out_dir = Path(source_dir).resolve(), Path(out_dir).resolve()
    manifest = read_manifest(source_dir)
    if "shortlist" in manifest:
        raise ValueError(f"{source_dir} has a shortlist already: build from the export without one")
    info = load_model_info(source_dir)  # checks every file before anything is built on it
    table = build_table_from_corpus(source_dir, corpus, parameters)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source_dir, staging)
    try:
        (staging / MANIFEST).unlink()
        columns = rewrite_step_graph(staging / DECODER_STEP, info.vocab_size)
        arrays = {"offsets": table.offsets, "targets": table.targets, "always": table.always}
        arrays |= {f"columns/{name}": array for name, (array, _) in columns.items()}
        np.savez(staging / SHORTLIST_FILE, allow_pickle=False, **arrays)
        step_io = manifest["io"][DECODER_STEP]
        step_io["inputs"] = [*step_io["inputs"], *columns, VOCAB_IDS]
        corpus_train = Path(corpus) / "train.en"
        manifest["shortlist"] = {
            "file": SHORTLIST_FILE,
            "inputs": {name: axis for name, (_, axis) in columns.items()},  # graph input -> the axis gathered
            **asdict(parameters),
            "table_entries": len(table.targets),
            "corpus": {"path": str(corpus), "train_en_sha256": sha256_file(corpus_train)},
        }
        write_manifest(staging, manifest)
        verification = _check_full_subset(source_dir, staging)
        if bleu_split is not None:
            verification["bleu"] = _bleu_gate(source_dir, staging, corpus, bleu_split, bleu_tolerance, threads)
        manifest["verification"] = {**manifest.get("verification", {}), "shortlist": verification}
        write_manifest(staging, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir


def _bleu_gate(
    source_dir: Path, shortlist_dir: Path, corpus: Path, split: str, tolerance: float, threads: int
) -> dict[str, Any]:
    from nmtserve.model.scoring import check_bleu_against_fp32

    base, other, ok = check_bleu_against_fp32(source_dir, shortlist_dir, corpus, split, tolerance, threads=threads)
    record = {
        "split": split,
        "sentences": other.sentences,
        "full_vocabulary": round(base.bleu, 2),
        "shortlist": round(other.bleu, 2),
        "tolerance": tolerance,
        "signature": other.signature,
    }
    if not ok:
        raise ExportVerificationError(
            f"the shortlist loses {base.bleu - other.bleu:.2f} BLEU against the full vocabulary on {corpus}/{split} "
            f"(limit {tolerance}): {json.dumps(record)}"
        )
    return record
