"""Export the encoder graph with the dynamo-based ``torch.onnx.export`` (opset 18, one file).

Batch and source length are named dynamic dimensions; the example input uses sizes >= 2 so that torch.export
does not specialise an axis to 1. (The decoder step is written directly in ONNX: see ``step_graph``.)
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch.export import Dim

from nmtserve.engine.model_dir import ENCODER, io_names
from nmtserve.export.wrappers import EncoderGraph
from nmtserve.model.transformer import Transformer

OPSET = 18
MAX_ROWS = 1 << 16


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
    names = io_names(config.n_decoder_layers)[ENCODER]
    return _export(
        EncoderGraph(model),
        (source_ids,),
        Path(directory) / ENCODER,
        names["inputs"],
        names["outputs"],
        {"source_ids": {0: batch, 1: source_len}},
    )
