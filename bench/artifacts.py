"""The model directories a benchmark runs on, all derived from one checkpoint so every engine has its weights.

ONNX exports are taken, in order, from ``--model-dir`` arguments, from a shipped export of the checkpoint
(found by its manifest, which records the sha256 of the checkpoint weights it came from), or exported here.
The CTranslate2 model is converted from the same checkpoint. Anything made here is cached under ``work_dir``
by the weights' sha256, so a second run skips the export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nmtserve.engine.model_dir import MANIFEST, ModelDirError, demo_export, read_manifest, sha256_file
from nmtserve.model.checkpoint import WEIGHTS

# Where shipped exports of the demo model live (export/demo/<precision>); searched two levels deep for manifests.
SHIPPED_ROOTS = (demo_export().parent,)


@dataclass(frozen=True)
class Artifacts:
    checkpoint: Path
    weights_sha256: str
    onnx: dict[str, Path]  # precision -> exported model directory
    ctranslate2: Path  # fp32 weights; int8 is quantized at load time (compute_type), as CTranslate2 users do


def _export_of(directory: Path) -> tuple[str, str] | None:
    """(precision, checkpoint weights sha256) of an export directory, or None if it is not one."""
    try:
        manifest = read_manifest(directory)
    except ModelDirError:
        return None
    return manifest["precision"], manifest.get("model", {}).get("checkpoint", {}).get("weights_sha256", "")


def find_shipped_export(weights_sha256: str, precision: str, roots: tuple[Path, ...] = SHIPPED_ROOTS) -> Path | None:
    """A complete export of these exact weights at ``precision`` under ``roots``, if one ships."""
    for root in roots:
        if not root.is_dir():
            continue
        for manifest in sorted([*root.glob(f"*/{MANIFEST}"), *root.glob(f"*/*/{MANIFEST}")]):
            if _export_of(manifest.parent) == (precision, weights_sha256):
                return manifest.parent
    return None


def _cached_export(checkpoint: Path, weights_sha256: str, precision: str, work_dir: Path, threads: int) -> Path:
    from nmtserve.export.exporter import export_model  # torch and onnx: only when an export is needed

    out = work_dir / f"onnx-{precision}-{weights_sha256[:12]}"
    if _export_of(out) == (precision, weights_sha256):
        return out
    return export_model(checkpoint, out, precision, threads=threads)


def _cached_ctranslate2(checkpoint: Path, weights_sha256: str, work_dir: Path) -> Path:
    from nmtserve.bench.ctranslate2_convert import SOURCE_FILE, convert_checkpoint

    out = work_dir / f"ctranslate2-{weights_sha256[:12]}"
    source = out / SOURCE_FILE
    if source.is_file() and json.loads(source.read_text()).get("weights_sha256") == weights_sha256:
        return out
    return convert_checkpoint(checkpoint, out)


def prepare(
    checkpoint: Path,
    model_dirs: list[Path],
    precisions: list[str],
    work_dir: Path,
    threads: int = 1,
) -> Artifacts:
    """Resolve or build every model directory; refuse an export made from other weights than ``checkpoint``."""
    checkpoint = Path(checkpoint).resolve()
    weights_sha256 = sha256_file(checkpoint / WEIGHTS)
    onnx: dict[str, Path] = {}
    for directory in model_dirs:
        found = _export_of(Path(directory))
        if found is None:
            raise ModelDirError(f"{directory} is not an exported model directory (no valid {MANIFEST})")
        precision, sha = found
        if sha != weights_sha256:
            raise ValueError(
                f"{directory} was exported from weights {sha[:12]}…, not {checkpoint} ({weights_sha256[:12]}…): "
                "the comparison with CTranslate2 needs the same weights"
            )
        onnx[precision] = Path(directory).resolve()
    wanted = precisions if not model_dirs else []
    for precision in wanted:
        if precision not in onnx:
            shipped = find_shipped_export(weights_sha256, precision)
            onnx[precision] = shipped or _cached_export(checkpoint, weights_sha256, precision, work_dir, threads)
    ctranslate2 = _cached_ctranslate2(checkpoint, weights_sha256, work_dir)
    return Artifacts(checkpoint, weights_sha256, onnx, ctranslate2)
