"""Export the two Transformer graphs with the dynamo-based ``torch.onnx.export`` (opset 18, one file each).

Every axis that varies at serving time is a named dynamic dimension; the cache length may be 0 (first step).
The example inputs use sizes >= 2 everywhere so that torch.export does not specialise an axis to 0 or 1.
TopK is not exported from torch (its ``k`` would be baked in as a constant): ``graph_edit`` appends it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch.export import Dim

from nmtserve.export.wrappers import DecoderStepGraph, EncoderGraph
from nmtserve.model.transformer import Transformer
from nmtserve.server.engine.model_dir import DECODER_STEP, ENCODER, IO_NAMES

OPSET = 18
MAX_ROWS = 1 << 16
STEP_LOG_PROBS = "log_probs"  # the full-vocabulary output that graph_edit replaces by TopK


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], shapes) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and axis-renaming chatter
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=True,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )
    return path


def export_encoder(model: Transformer, directory: Path) -> Path:
    config = model.config
    batch, source_len = Dim("batch", min=1, max=MAX_ROWS), Dim("source_len", min=1, max=config.max_positions)
    source_ids = torch.randint(4, config.vocab_size, (3, 9))
    source_ids[0, 6:] = config.pad_id
    names = IO_NAMES[ENCODER]
    return _export(
        EncoderGraph(model),
        (source_ids,),
        Path(directory) / ENCODER,
        names["inputs"],
        names["outputs"],
        {"source_ids": {0: batch, 1: source_len}},
    )


def export_decoder_step(model: Transformer, directory: Path) -> Path:
    """Exports the step without TopK: outputs are log_probs [R, V] and the grown cache and mask."""
    config = model.config
    layers, heads, d_head = config.n_decoder_layers, config.n_heads, config.d_head
    rows, cache_rows, cache_len, source_len = 3, 2, 5, 7
    example = (
        torch.randint(4, config.vocab_size, (rows,)),
        torch.full((rows,), cache_len),
        torch.tensor([0, 1, -1]),
        torch.randn(layers, cache_rows, heads, cache_len, d_head),
        torch.randn(layers, cache_rows, heads, cache_len, d_head),
        torch.ones(cache_rows, cache_len, dtype=torch.bool),
        torch.randn(layers, rows, heads, source_len, d_head),
        torch.randn(layers, rows, heads, source_len, d_head),
        torch.ones(rows, source_len, dtype=torch.bool),
        torch.zeros(rows, dtype=torch.bool),
    )
    r, c = Dim("rows", min=1, max=MAX_ROWS), Dim("cache_rows", min=1, max=MAX_ROWS)
    t, s = Dim("cache_len", min=0, max=config.max_positions), Dim("source_len", min=1, max=config.max_positions)
    shapes = {
        "token_ids": {0: r},
        "positions": {0: r},
        "reorder": {0: r},
        "self_keys": {1: c, 3: t},
        "self_values": {1: c, 3: t},
        "self_mask": {0: c, 1: t},
        "cross_keys": {1: r, 3: s},
        "cross_values": {1: r, 3: s},
        "source_mask": {0: r, 1: s},
        "forbid_eos": {0: r},
    }
    inputs = [name for name in IO_NAMES[DECODER_STEP]["inputs"] if name != "k"]
    outputs = [STEP_LOG_PROBS, "new_self_keys", "new_self_values", "new_self_mask"]
    return _export(DecoderStepGraph(model), example, Path(directory) / DECODER_STEP, inputs, outputs, shapes)
