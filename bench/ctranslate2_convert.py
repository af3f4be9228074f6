"""Convert an nmtserve checkpoint into a CTranslate2 model directory holding the same weights.

CTranslate2 is the bar the ONNX engine is measured against, so the conversion must be exact: the weight layout
follows CTranslate2's own OpenNMT-py/fairseq converters (fused QKV for self-attention, fused KV for cross-
attention; post-norm puts each residual's LayerNorm on the sublayer it follows and has no final norm), and the
two places where CTranslate2's defaults differ from the paper are overridden:
- its built-in sinusoidal table concatenates sin|cos; we store our interleaved table (PE[pos, 2i] = sin,
  PE[pos, 2i+1] = cos), which CTranslate2 indexes from position 0 as our model does;
- its LayerNorm epsilon defaults to 1e-6; ours (torch's default) is 1e-5.
The vocabulary is the SentencePiece pieces in id order, so token ids map to pieces and back one to one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from nmtserve.engine.model_dir import sha256_file
from nmtserve.model.checkpoint import TOKENIZER, WEIGHTS, read_config
from nmtserve.model.transformer import TransformerConfig

LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which model/transformer.py uses
QUANTIZATIONS = (None, "float32", "int8", "int8_float32")
SOURCE_FILE = "nmtserve_source.json"  # records which checkpoint a CTranslate2 directory was converted from


def sinusoidal_table(max_positions: int, d_model: int) -> np.ndarray:
    """Section 3.5 of the paper, interleaved as in ``model.transformer.sinusoidal_positions`` (positions from 0).

    Rebuilt in numpy (float64, then float32) so the conversion does not need torch; the test checks it equals
    the model's buffer.
    """
    position = np.arange(max_positions, dtype=np.float64)[:, None]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
    angle = position / np.power(10000.0, two_i / d_model)
    table = np.zeros((max_positions, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle)
    return table.astype(np.float32)


def vocabulary(tokenizer_path: Path) -> list[str]:
    """SentencePiece pieces in id order: CTranslate2 token i is our id i."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    if len(set(pieces)) != len(pieces):
        raise ValueError(f"{tokenizer_path}: duplicate pieces; ids could not be mapped one to one")
    return pieces


def _set_linear(spec, weights: dict[str, np.ndarray], *names: str) -> None:
    """Set a LinearSpec from one or more of our nn.Linear modules (several: fused along the output axis)."""
    spec.weight = np.concatenate([weights[f"{name}.weight"] for name in names], axis=0)
    spec.bias = np.concatenate([weights[f"{name}.bias"] for name in names], axis=0)


def _set_norm(spec, weights: dict[str, np.ndarray], name: str) -> None:
    spec.gamma = weights[f"{name}.weight"]
    spec.beta = weights[f"{name}.bias"]


def _set_self_attention(spec, weights: dict[str, np.ndarray], scope: str, norm: str) -> None:
    _set_linear(spec.linear[0], weights, f"{scope}.query", f"{scope}.key", f"{scope}.value")
    _set_linear(spec.linear[-1], weights, f"{scope}.output")
    _set_norm(spec.layer_norm, weights, norm)


def _set_ffn(spec, weights: dict[str, np.ndarray], scope: str, norm: str) -> None:
    _set_linear(spec.linear_0, weights, f"{scope}.inner")
    _set_linear(spec.linear_1, weights, f"{scope}.outer")
    _set_norm(spec.layer_norm, weights, norm)


def build_spec(config: TransformerConfig, weights: dict[str, np.ndarray], pieces: list[str]):
    """A validated ``TransformerSpec`` holding ``weights`` (our state dict as numpy arrays).

    The arrays are copied first: CTranslate2's spec optimisation edits weights in place, and callers often pass
    views of a live model's parameters (``tensor.numpy()``), which it would otherwise corrupt.
    """
    from ctranslate2.specs import TransformerSpec

    weights = {name: np.array(value, copy=True) for name, value in weights.items()}

    if config.pre_norm:
        raise NotImplementedError("only the paper's post-norm layout is mapped (pre_norm=False)")
    layers = (config.n_encoder_layers, config.n_decoder_layers)
    spec = TransformerSpec.from_config(layers, config.n_heads, pre_norm=False)
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    specials = {"unk_token": config.unk_id, "bos_token": config.bos_id, "eos_token": config.eos_id}
    for attribute, token_id in specials.items():
        setattr(spec.config, attribute, pieces[token_id])
    spec.config.decoder_start_token = pieces[config.bos_id]

    embedding = weights["embedding.weight"]
    positions = sinusoidal_table(config.max_positions, config.d_model)
    for stack in (spec.encoder, spec.decoder):
        stack.scale_embeddings = True  # x * sqrt(d_model), Section 3.4
        stack.position_encodings.encodings = positions
    spec.encoder.embeddings[0].weight = embedding
    spec.decoder.embeddings.weight = embedding
    spec.decoder.projection.weight = embedding  # shared output projection, no bias

    for i, layer in enumerate(spec.encoder.layer):
        scope = f"encoder_layers.{i}"
        attention, norm = f"{scope}.self_attention", f"{scope}.attention_residual.norm"
        _set_self_attention(layer.self_attention, weights, attention, norm)
        _set_ffn(layer.ffn, weights, f"{scope}.feed_forward", f"{scope}.feed_forward_residual.norm")
    for i, layer in enumerate(spec.decoder.layer):
        scope = f"decoder_layers.{i}"
        _set_self_attention(layer.self_attention, weights, f"{scope}.self_attention", f"{scope}.self_residual.norm")
        cross = layer.attention
        _set_linear(cross.linear[0], weights, f"{scope}.cross_attention.query")
        _set_linear(cross.linear[1], weights, f"{scope}.cross_attention.key", f"{scope}.cross_attention.value")
        _set_linear(cross.linear[-1], weights, f"{scope}.cross_attention.output")
        _set_norm(cross.layer_norm, weights, f"{scope}.cross_residual.norm")
        _set_ffn(layer.ffn, weights, f"{scope}.feed_forward", f"{scope}.feed_forward_residual.norm")

    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.validate()
    return spec


def save_spec(spec, out_dir: Path, quantization: str | None, source: dict) -> Path:
    """Quantize (optionally) and write ``spec`` to ``out_dir`` via a staging folder, so a half-written directory
    never looks complete; ``source`` is recorded beside the model."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
    out_dir = Path(out_dir)
    spec.optimize(quantization=quantization)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    spec.save(str(staging))
    (staging / SOURCE_FILE).write_text(json.dumps({**source, "quantization": quantization}, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir


def convert_checkpoint(checkpoint_dir: Path, out_dir: Path, quantization: str | None = None) -> Path:
    """Write a CTranslate2 model for ``checkpoint_dir`` to ``out_dir`` (replaced if present); returns ``out_dir``.

    ``quantization`` (e.g. "int8") quantizes the stored weights; an fp32 directory can also be loaded with
    ``compute_type="int8"``, which quantizes the same way at load time.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config, _ = read_config(checkpoint_dir)
    spec = build_spec(config, load_file(checkpoint_dir / WEIGHTS), vocabulary(checkpoint_dir / TOKENIZER))
    source = {
        "checkpoint": str(checkpoint_dir.resolve()),
        "weights_sha256": sha256_file(checkpoint_dir / WEIGHTS),
        "config": config.to_dict(),
    }
    return save_spec(spec, out_dir, quantization, source)
