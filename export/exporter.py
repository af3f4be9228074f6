"""``export_model``: checkpoint directory -> self-contained ONNX model directory that the engine loads without torch.

The directory is assembled in a sibling staging folder, verified against PyTorch, and only then renamed into
place with its manifest written last: a directory with a manifest is a complete, checked export.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from nmtserve.engine.model_dir import (
    DECODER_STEP,
    ENCODER,
    FORMAT,
    FORMAT_VERSION,
    io_names,
    sha256_file,
    write_manifest,
)
from nmtserve.engine.tokenizer import tokenizer_files
from nmtserve.export.fusion import maybe_fuse
from nmtserve.export.precision import PRECISIONS, cache_element_type, convert_fp16, quantize_int8
from nmtserve.export.ragged import check_ragged, make_ragged
from nmtserve.export.row_ops import build_row_ops
from nmtserve.export.step_graph import build_decoder_step
from nmtserve.export.torch_export import OPSET, export_encoder
from nmtserve.export.verify import FP32_TOLERANCE, ExportVerificationError, verify_export
from nmtserve.model.checkpoint import WEIGHTS, load_checkpoint, read_tokenizer_spec
from nmtserve.model.transformer import Transformer

log = logging.getLogger(__name__)
BLEU_TOLERANCE = 0.5  # an int8/fp16 export may score at most this much below fp32 on the BLEU split
DEFAULT_LANGUAGES = ("en", "de")  # the project's own EN->DE models; a converted model records its own pair


def _version(name: str) -> str | None:
    try:
        return package_metadata.version(name)
    except package_metadata.PackageNotFoundError:
        return None


def _encoder_feeds(model: Transformer) -> dict[str, np.ndarray]:
    """A typical serving batch (8 sentences of 30 tokens) for timing the fusion."""
    rng = np.random.default_rng(0)
    return {"source_ids": rng.integers(4, model.config.vocab_size, (8, 30))}


def _family_options(config) -> dict[str, Any]:
    """The options a converted model sets, recorded so that a reader of the manifest sees what it serves."""
    keys: tuple[str, ...] = ("activation", "positions", "position_offset", "scale_embedding", "final_logits_bias")
    keys += ("pre_norm", "layernorm_embedding")
    return {key: getattr(config, key) for key in keys}


def _manifest(
    model: Transformer,
    checkpoint_dir: Path,
    checkpoint_metadata: dict,
    precision: str,
    name: str | None,
    version: str | None,
    languages: tuple[str, str],
    verification: dict[str, Any],
    fusion: dict[str, Any],
    tokenizer_spec: dict[str, Any] | None = None,
    ragged: bool = False,
) -> dict[str, Any]:
    tokenizer_spec = tokenizer_spec or {"kind": "sentencepiece"}
    io = io_names(model.config.n_decoder_layers)
    if ragged:  # export/ragged.py: no self_mask in or new_self_mask out
        step = io[DECODER_STEP]
        step["inputs"] = [n for n in step["inputs"] if n != "self_mask"]
        step["outputs"] = [n for n in step["outputs"] if n != "new_self_mask"]
    config = model.config
    weights_sha = sha256_file(checkpoint_dir / WEIGHTS)
    steps = checkpoint_metadata.get("steps")
    default_version = (f"step{steps}-" if steps is not None else "") + weights_sha[:12]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "name": name or f"nmtserve-{languages[0]}-{languages[1]}-{checkpoint_dir.name}",
            "version": version or str(checkpoint_metadata.get("version", default_version)),
            "architecture": checkpoint_metadata.get(
                "architecture", "transformer-2017" + ("-prenorm" if config.pre_norm else "")
            ),
            "checkpoint": {
                "path": str(checkpoint_dir),
                "weights_sha256": weights_sha,
                "steps": steps,
                "epochs": checkpoint_metadata.get("epochs"),
            },
        },
        "languages": {"source": languages[0], "target": languages[1]},
        "dimensions": {
            "vocab_size": config.vocab_size,
            "d_model": config.d_model,
            "n_heads": config.n_heads,
            "d_head": config.d_head,
            "d_ff": config.d_ff,
            "n_encoder_layers": config.n_encoder_layers,
            "n_decoder_layers": config.n_decoder_layers,
            "max_positions": config.max_positions,
        },
        "special_ids": {
            "pad": config.pad_id,
            "unk": config.unk_id,
            "bos": config.bos_id,
            "eos": config.eos_id,
            # only where the decoder does not start from bos (M2M-100/NLLB start from EOS): older readers see bos
            **({"decoder_start": config.start_id} if config.start_id != config.bos_id else {}),
        },
        **({"family": _family_options(config)} if checkpoint_metadata.get("converted_from") else {}),
        **({"tokenizer": tokenizer_spec} if tokenizer_spec.get("kind", "sentencepiece") != "sentencepiece" else {}),
        "opset": OPSET,
        "precision": precision,
        "cache_dtype": "float16" if precision == "fp16" else "float32",
        **({"cache_layout": "ragged"} if ragged else {}),
        "exporter": {
            "method": "torch.onnx.export(dynamo=True) + onnx.helper graph edits",
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": _version("onnxscript"),
            "onnxruntime": ort.__version__,
            "nmtserve": _version("nmtserve"),
        },
        "io": io,
        "verification": verification,
        "fusion": fusion,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def resolve_languages(
    given: tuple[str | None, str | None] | None, checkpoint_metadata: dict[str, Any]
) -> tuple[str, str]:
    """The manifest's (source, target): each code given, else the one a converted Hugging Face model's tokenizer
    config named (``hf_convert.recorded_languages``: a zh->en OPUS-MT model is zh->en without flags), else
    ``DEFAULT_LANGUAGES``."""
    recorded = checkpoint_metadata.get("languages") or {}
    source, target = given or (None, None)
    return (
        source or recorded.get("source") or DEFAULT_LANGUAGES[0],
        target or recorded.get("target") or DEFAULT_LANGUAGES[1],
    )


def export_model(
    checkpoint_dir: Path,
    out_dir: Path,
    precision: str = "fp32",
    *,
    name: str | None = None,
    version: str | None = None,
    languages: tuple[str | None, str | None] | None = None,
    fuse: bool = False,
    threads: int = 1,
    progress: bool = True,
    bleu_corpus: Path | None = None,
    bleu_split: str = "dev",
    bleu_tolerance: float = BLEU_TOLERANCE,
    ragged: bool = False,
) -> Path:
    """Export, verify and write ``out_dir`` (replacing an older export there); returns ``out_dir``.

    fp32 graphs must match PyTorch within 1e-4 or nothing is written. int8/fp16 are derived from the verified
    fp32 graphs; their differences are measured and recorded in the manifest. With ``bleu_corpus``, an int8/fp16
    export must also score within ``bleu_tolerance`` BLEU of the fp32 graphs on ``bleu_split`` (both decoded by
    the serving engine) or nothing is written: log-prob differences say little about translations.
    ``ragged``: once verified, the decoder step is rewritten with per-row cache lengths (``export/ragged.py``,
    CPU only) and checked against the verified graph. ``languages`` (source, target) go into the manifest; a None
    (or no pair) is filled by ``resolve_languages``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if ragged and precision == "fp16":
        raise ValueError("ragged exports run on CPU only and fp16 exports are for CUDA: use fp32 or int8")
    checkpoint_dir, out_dir = Path(checkpoint_dir).resolve(), Path(out_dir).resolve()
    stages = ["load", "export encoder", "export decoder step", "row graphs", "verify fp32"]
    stages += [] if precision == "fp32" else [f"convert {precision}", f"verify {precision}"]
    gate = precision != "fp32" and bleu_corpus is not None
    stages += ["fuse"] if fuse else []
    stages += ["ragged rows"] if ragged else []
    stages += [f"BLEU vs fp32 on {bleu_split}"] if gate else []
    stages += ["manifest"]
    bar = tqdm(stages, desc=f"export {precision}", unit="stage", disable=not progress)
    stage = iter(bar)

    next(stage)
    model, _, checkpoint_metadata = load_checkpoint(checkpoint_dir)
    pair = resolve_languages(languages, checkpoint_metadata)
    tokenizer_spec = read_tokenizer_spec(checkpoint_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        bar.set_postfix_str(next(stage))
        export_encoder(model, staging)
        bar.set_postfix_str(next(stage))
        build_decoder_step(model, staging / DECODER_STEP)
        bar.set_postfix_str(next(stage))
        layers = model.config.n_decoder_layers
        build_row_ops(staging, cache_element_type("fp32"), layers)  # what the fp32 verification runs
        for file_name in tokenizer_files(tokenizer_spec):
            shutil.copyfile(checkpoint_dir / file_name, staging / file_name)
        bar.set_postfix_str(next(stage))
        verification = {"fp32": verify_export(model, staging, "fp32", threads).to_dict()}
        fp32_reference = staging.parent / f".{out_dir.name}.fp32-reference"
        if gate:  # the verified fp32 graphs, kept as a complete model directory to decode the BLEU split with
            reference = _manifest(
                model,
                checkpoint_dir,
                checkpoint_metadata,
                "fp32",
                name,
                version,
                pair,
                verification,
                {},
                tokenizer_spec,
            )
            write_manifest(staging, reference)
            shutil.rmtree(fp32_reference, ignore_errors=True)
            shutil.copytree(staging, fp32_reference)
        if precision != "fp32":
            bar.set_postfix_str(next(stage))
            if precision == "int8":
                quantize_int8(staging / ENCODER)
                quantize_int8(staging / DECODER_STEP)
            else:
                convert_fp16(staging / ENCODER, keep_fp32_outputs=[])
                convert_fp16(staging / DECODER_STEP, keep_fp32_outputs=["topk_log_probs"])
            build_row_ops(staging, cache_element_type(precision), layers)  # they move the converted cache
            bar.set_postfix_str(next(stage))
            verification[precision] = _verify_reduced(model, staging, precision, threads)
        fusion: dict[str, Any] = {"requested": fuse}
        if fuse:
            bar.set_postfix_str(next(stage))
            fusion.update(_fuse(model, staging, precision))
        if ragged:
            bar.set_postfix_str(next(stage))
            verification["ragged"] = _make_ragged(model, staging, precision)
        bar.set_postfix_str(next(stage))
        manifest = _manifest(
            model,
            checkpoint_dir,
            checkpoint_metadata,
            precision,
            name,
            version,
            pair,
            verification,
            fusion,
            tokenizer_spec,
            ragged,
        )
        write_manifest(staging, manifest)
        if gate:
            bar.set_postfix_str(next(stage))
            verification[precision]["bleu"] = _bleu_gate(
                fp32_reference, staging, precision, Path(cast(Path, bleu_corpus)), bleu_split, bleu_tolerance, threads
            )
            manifest["verification"] = verification
            write_manifest(staging, manifest)
        for _ in stage:
            pass
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
        if gate:
            shutil.rmtree(fp32_reference, ignore_errors=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir


def _bleu_gate(
    fp32_dir: Path, reduced_dir: Path, precision: str, corpus: Path, split: str, tolerance: float, threads: int
) -> dict[str, Any]:
    """Decode ``split`` with both exports; refuse the reduced one if it loses more than ``tolerance`` BLEU."""
    from nmtserve.model.scoring import check_bleu_against_fp32

    base, reduced, ok = check_bleu_against_fp32(fp32_dir, reduced_dir, corpus, split, tolerance, threads=threads)
    record = {
        "split": split,
        "sentences": reduced.sentences,
        "fp32": round(base.bleu, 2),
        precision: round(reduced.bleu, 2),
        "tolerance": tolerance,
        "signature": reduced.signature,
    }
    if not ok:
        raise ExportVerificationError(
            f"{precision} export loses {base.bleu - reduced.bleu:.2f} BLEU against fp32 on {corpus}/{split} "
            f"(tolerance {tolerance}): {record}"
        )
    return record


def _verify_reduced(model: Transformer, directory: Path, precision: str, threads: int) -> dict[str, Any]:
    """Measured, not enforced: int8/fp16 are judged by BLEU. A graph that cannot run on CPU is recorded as such."""
    try:
        return verify_export(model, directory, precision, threads).to_dict()
    except ort.capi.onnxruntime_pybind11_state.NotImplemented as error:  # e.g. fp16 kernels missing on CPU
        return {"unverified": f"onnxruntime CPU cannot run the {precision} graphs: {error}"}


def _make_ragged(model: Transformer, directory: Path, precision: str) -> dict[str, Any]:
    """Rewrite the verified decoder step into its ragged form; fp32 must match the verified graph within the
    fp32 tolerance (the other precisions are recorded, and judged by BLEU)."""
    config = model.config
    path = directory / DECODER_STEP
    standard = directory.parent / f".{directory.name}.standard_step.onnx"  # outside the directory's manifest
    shutil.copyfile(path, standard)
    try:
        make_ragged(path, config.n_decoder_layers)
        dtype = np.dtype(np.float16 if precision == "fp16" else np.float32)
        try:
            diff = check_ragged(
                standard,
                path,
                layers=config.n_decoder_layers,
                heads=config.n_heads,
                d_head=config.d_head,
                vocab=config.vocab_size,
                dtype=dtype,
            )
        except ort.capi.onnxruntime_pybind11_state.NotImplemented as error:
            return {"unverified": f"onnxruntime CPU cannot run the {precision} graphs: {error}"}
    finally:
        standard.unlink(missing_ok=True)
    if precision == "fp32" and diff > FP32_TOLERANCE:
        raise ExportVerificationError(f"ragged decoder step differs from the verified one by {diff:.3g}")
    return {"log_prob_max_abs_diff_vs_left_padded": diff}


def _fuse(model: Transformer, directory: Path, precision: str) -> dict[str, Any]:
    """Only the encoder is a candidate: the decoder step is written around onnxruntime's fused attention already."""
    if precision != "fp32":
        return {"skipped": "fusion is only measured on fp32 graphs"}
    config = model.config
    result = {ENCODER: maybe_fuse(directory / ENCODER, config.n_heads, config.d_model, _encoder_feeds(model))}
    if result[ENCODER]["kept"]:
        verify_export(model, directory, "fp32")  # a kept fusion must still pass the full fp32 check
    return result
