"""Torch-free ONNX Runtime translation engine: load an exported model directory, beam-search on the device.

Nothing in this package imports torch, nor anything of ``nmtserve.model``, ``export``, ``server`` or ``bench``
(``tests/test_layout.py`` checks it): the serving image has no torch, and the engine is the bottom floor.

The names below load lazily, so that importing the model-directory contract (``nmtserve.engine.model_dir``) or
the decoding vocabulary does not import onnxruntime: ``nmtserve --help`` works in an install without it.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

# onnxruntime (1.2x, Linux) sends usage telemetry, and when it cannot persist a device id under $HOME (a read-only
# HOME, as in the container image) it prints a plain-text warning at import, before logging is set up: the one
# line of a JSON log that is not JSON. A translation server has no business phoning home, so telemetry is off by
# default; ORT_DISABLE_TELEMETRY=0 in the environment turns it back on. Set here, the package's first code, because
# every engine module that imports onnxruntime runs after it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:
    from nmtserve.engine.batch import DecodingBatch, Finished
    from nmtserve.engine.decoding import DecodingOptions, Hypothesis
    from nmtserve.engine.engine import Engine
    from nmtserve.engine.model_dir import ModelDirError, ModelInfo
    from nmtserve.engine.runtime import EngineError, RuntimeConfig

_HOMES = {
    "DecodingBatch": "batch",
    "Finished": "batch",
    "DecodingOptions": "decoding",
    "Hypothesis": "decoding",
    "Engine": "engine",
    "ModelDirError": "model_dir",
    "ModelInfo": "model_dir",
    "EngineError": "runtime",
    "RuntimeConfig": "runtime",
}
__all__ = [  # noqa: RUF022 (the order of _HOMES)
    "DecodingBatch",
    "Finished",
    "DecodingOptions",
    "Hypothesis",
    "Engine",
    "ModelDirError",
    "ModelInfo",
    "EngineError",
    "RuntimeConfig",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
