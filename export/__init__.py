"""PyTorch checkpoint -> self-contained ONNX model directory for the torch-free engine (``nmtserve.engine``).

``export_model`` is imported lazily: importing this package alone must not pull in torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_model"]


def __getattr__(name: str) -> Any:
    if name == "export_model":
        from nmtserve.export.exporter import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
