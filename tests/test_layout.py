"""The house's floors, checked: the engine is the bottom floor and imports nothing above it, nor torch.

A fresh interpreter is the honest check: this test process has long imported torch and every package (conftest).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import nmtserve.engine
from nmtserve.model.train_config import PRESET_NAMES
from nmtserve.model.transformer import PRESETS

FORBIDDEN = ("torch", "nmtserve.model", "nmtserve.export", "nmtserve.server", "nmtserve.bench", "nmtserve.loadtest")
FORBIDDEN += ("nmtserve.cli",)

PROBE = """
import importlib, json, pkgutil, sys
import nmtserve.engine as engine
names = [f"nmtserve.engine.{m.name}" for m in pkgutil.iter_modules(engine.__path__)]
for name in names:
    importlib.import_module(name)
for name in engine.__all__:  # the lazy names too
    getattr(engine, name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def test_engine_imports_nothing_above_it() -> None:
    """Every engine module, and every lazy name of the package, loads without torch or an upper floor."""
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(result.stdout)
    expected = {f"nmtserve.engine.{m.name}" for m in pkgutil.iter_modules(nmtserve.engine.__path__)}
    assert set(report["imported"]) == expected and {"nmtserve.engine.beam", "nmtserve.engine.model_dir"} <= expected
    leaked = [m for m in report["modules"] if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert leaked == []


def test_train_config_presets_match_the_model() -> None:
    """TrainConfig is torch-free, so it names the presets itself; they must be the model's."""
    assert sorted(PRESET_NAMES) == sorted(PRESETS) and len(PRESET_NAMES) == len(set(PRESET_NAMES))
