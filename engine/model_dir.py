"""The exported model directory: file names, graph I/O names, and the manifest that pins every file by sha256.

The exporter writes this layout and the engine refuses any directory that does not match it, so both sides
import the names from here and cannot drift apart. Torch-free on purpose: the serving engine imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from nmtserve.engine.tokenizer import tokenizer_files

FORMAT = "nmtserve-onnx"
FORMAT_VERSION = 3
MANIFEST = "manifest.json"

ENCODER = "encoder.onnx"
DECODER_STEP = "decoder_step.onnx"
GATHER_ROWS = "gather_rows.onnx"
APPEND_ROWS = "append_rows.onnx"
TRIM_CACHE = "trim_cache.onnx"
REORDER_CACHE = "reorder_cache.onnx"
TOKENIZER = "sentencepiece.model"
GRAPH_FILES = (ENCODER, DECODER_STEP, GATHER_ROWS, APPEND_ROWS, TRIM_CACHE, REORDER_CACHE)
REQUIRED_FILES = (*GRAPH_FILES, TOKENIZER)  # with the default (SentencePiece) tokenizer


def demo_export(precision: str = "fp32") -> Path:
    """The shipped export of the demo model: ``export/demo/<precision>`` inside the installed package.

    Located through the import system rather than ``__file__`` arithmetic so it works from a wheel and from an
    editable install alike, and without importing ``nmtserve.export`` (whose exporter needs torch).
    """
    spec = find_spec("nmtserve.export")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nmtserve.export is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "demo" / precision


# Graph signatures. Shapes: H heads, Dh head size, R rows (hypotheses), N sentences, T cache length, S source
# length. K/V tensors are one per decoder layer (``self_keys.0``, ``self_values.0``,
# ``self_keys.1``, ...): stacked [layers, ...] tensors would cost the step graph a Split of the whole cache on the
# way in and a stacking Concat on the way out, two full copies per step on top of the unavoidable append.
SELF_KV = ("self_keys", "self_values")  # float [R, H, T, Dh] in, [R, H, T + 1, Dh] out (left-padded history)
CROSS_KV = ("cross_keys", "cross_values")  # float [N, H, S, Dh]: one per sentence, not per hypothesis


def per_layer(names: Sequence[str], layers: int) -> list[str]:
    """``names`` for every decoder layer, layer-major: ``[keys.0, values.0, keys.1, values.1, ...]``."""
    return [f"{name}.{layer}" for layer in range(layers) for name in names]


def prefixed(prefix: str, names: Sequence[str]) -> list[str]:
    return [prefix + name for name in names]


def io_names(layers: int) -> dict[str, dict[str, list[str]]]:
    """Input and output names of every graph of a model with ``layers`` decoder layers."""
    cache = [*per_layer(SELF_KV, layers), "self_mask"]  # self_mask: bool [R, T], True on valid cache slots
    cross = [*per_layer(CROSS_KV, layers), "source_mask"]  # source_mask: bool [N, S], True on real tokens
    return {
        ENCODER: {"inputs": ["source_ids"], "outputs": cross[:-1]},
        DECODER_STEP: {
            # token_ids, positions (tokens generated before this one): int64 [R]; k: int64 [1]. The cache comes in
            # row-aligned (reorder_cache ran first where rows moved). Cross-attention runs per sentence over W query
            # slots: query_rows [N, W] names the row in each slot (a sentence with fewer than W rows repeats one),
            # row_slots [R] the flat slot (n * W + j) whose output each row takes.
            "inputs": [
                "token_ids",
                "positions",
                "query_rows",
                "row_slots",
                cache[-1],
                cross[-1],
                *cache[:-1],
                *cross[:-1],
                "k",
            ],
            # topk_log_probs float32 [R, k], topk_ids int64 [R, k], then the grown cache
            "outputs": ["topk_log_probs", "topk_ids", *prefixed("new_", cache)],
        },
        GATHER_ROWS: {"inputs": [*cross, "rows", "source_len"], "outputs": prefixed("out_", cross)},
        APPEND_ROWS: {"inputs": [*cross, *prefixed("new_", cross)], "outputs": prefixed("out_", cross)},
        TRIM_CACHE: {"inputs": [*cache, "keep"], "outputs": prefixed("out_", cache)},
        # reorder: int64 [R], the cache row each new row extends (-1: a row with no history yet)
        REORDER_CACHE: {"inputs": [*cache, "reorder"], "outputs": prefixed("out_", cache)},
    }


class ModelDirError(RuntimeError):
    """The model directory is missing, incomplete, or does not match its manifest."""


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about an exported model, read from its manifest."""

    directory: Path
    name: str
    version: str
    precision: str
    cache_dtype: str  # numpy dtype name of the K/V tensors: "float32" or "float16"
    vocab_size: int
    d_model: int
    n_heads: int
    d_head: int
    n_decoder_layers: int
    max_positions: int
    pad_id: int
    bos_id: int
    eos_id: int
    decoder_start_id: int  # the decoder's first input (manifests before it was recorded: bos)
    manifest: dict[str, Any]
    cache_layout: str = "left_padded"  # or "ragged": per-row lengths, written in place (export/ragged.py)

    def path(self, name: str) -> Path:
        return self.directory / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every regular file in ``directory`` except the manifest itself."""
    return {p.name: sha256_file(p) for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != MANIFEST}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` with the digests of the directory's files; written last, it marks the export complete."""
    manifest = {**manifest, "files": file_digests(directory)}
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise ModelDirError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise ModelDirError(f"{path}: {MANIFEST} is missing (incomplete export?)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelDirError(f"{path}: {MANIFEST} is not valid JSON: {error}") from error
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')!r} is not "
            f"{FORMAT!r} v{FORMAT_VERSION}"
        )
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Refuse a directory whose files are absent or differ from the manifest: a half-copied model must not serve."""
    files: dict[str, str] = manifest.get("files", {})
    try:
        required = (*GRAPH_FILES, *tokenizer_files(manifest.get("tokenizer")))
        if "shortlist" in manifest:  # a shortlist export cannot decode without its table (export/shortlist.py)
            required += (manifest["shortlist"]["file"],)
    except ValueError as error:
        raise ModelDirError(f"{Path(directory) / MANIFEST}: {error}") from error
    for name in required:
        if name not in files:
            raise ModelDirError(f"{Path(directory) / MANIFEST}: manifest lists no {name}")
    for name, expected in files.items():
        path = Path(directory) / name
        if not path.is_file():
            raise ModelDirError(f"{path}: file {name} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelDirError(f"{path}: sha256 mismatch for {name} (manifest {expected[:12]}…, file {actual[:12]}…)")


def load_model_info(directory: Path, verify: bool = True) -> ModelInfo:
    """Read the manifest and (by default) check every file's sha256 before anything is loaded."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if verify:
        verify_files(directory, manifest)
    dims, special = manifest["dimensions"], manifest["special_ids"]
    return ModelInfo(
        directory=directory,
        name=manifest["model"]["name"],
        version=manifest["model"]["version"],
        precision=manifest["precision"],
        cache_dtype=manifest["cache_dtype"],
        vocab_size=dims["vocab_size"],
        d_model=dims["d_model"],
        n_heads=dims["n_heads"],
        d_head=dims["d_head"],
        n_decoder_layers=dims["n_decoder_layers"],
        max_positions=dims["max_positions"],
        pad_id=special["pad"],
        bos_id=special["bos"],
        eos_id=special["eos"],
        decoder_start_id=special.get("decoder_start", special["bos"]),
        manifest=manifest,
        cache_layout=manifest.get("cache_layout", "left_padded"),
    )
