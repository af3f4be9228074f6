"""The house's floors, checked: the engine is the bottom floor and imports nothing above it, nor torch.

A fresh interpreter is the honest check: this test process has long imported torch and every package (conftest).
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

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


# The floors of docs/architecture.md, bottom first; a package may import only from floors below its own, except
# cli, the way in, which also reaches its floor-mates bench and loadtest.
FLOORS = [("protos", "engine"), ("model", "server"), ("export", "loadtest"), ("bench", "cli")]
ROOT = Path(__file__).resolve().parent.parent


def imported_packages(source: Path) -> set[str]:
    """The ``nmtserve.<package>`` names a module imports (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {n.split(".")[1] for n in names if n.startswith("nmtserve.") and n.count(".") >= 1}
    return found


def test_no_arrow_runs_up_or_across_a_floor() -> None:
    """Read from the sources (no imports run), so it covers torch-only and optional-extra modules too."""
    floor_of = {package: level for level, packages in enumerate(FLOORS) for package in packages}
    wrong = []
    for package, level in floor_of.items():
        for source in sorted((ROOT / package).rglob("*.py")):
            for target in imported_packages(source) - {package}:
                if target in floor_of and floor_of[target] >= level and package != "cli":
                    wrong.append(f"{source.relative_to(ROOT)} imports nmtserve.{target}")
    assert wrong == []
