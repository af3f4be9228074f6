"""Torch-free ONNX Runtime translation engine: load an exported model directory, beam-search on the device.

Nothing in this package may import torch, directly or through another module: the serving image has none.
"""

from nmtserve.model.decoding import DecodingOptions, Hypothesis
from nmtserve.server.engine.batch import DecodingBatch, Finished
from nmtserve.server.engine.engine import Engine
from nmtserve.server.engine.model_dir import ModelDirError, ModelInfo
from nmtserve.server.engine.runtime import EngineError, RuntimeConfig

__all__ = [
    "DecodingBatch",
    "DecodingOptions",
    "Engine",
    "EngineError",
    "Finished",
    "Hypothesis",
    "ModelDirError",
    "ModelInfo",
    "RuntimeConfig",
]
