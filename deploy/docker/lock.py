"""Write the image's pinned, hash-checked requirement locks: ``requirements-{cpu,gpu,build}.lock``.

    python deploy/docker/lock.py          # resolve against PyPI and rewrite the three locks

Why pip's own resolver (``pip install --dry-run --report``) and not another lock tool: it is the installer the image
uses, it needs nothing beyond pip, and with ``--platform``/``--python-version`` it resolves for the image's target
(CPython 3.11 on Debian bookworm, x86_64) whatever machine runs it, reading wheel metadata only, so the multi-GB
CUDA wheels of the GPU lock are never downloaded. Each pin carries the sha256 of the one wheel that target installs,
and the image installs with ``--require-hashes --no-deps``: nothing unpinned or unverified gets in.

Versions: the requirements come from ``pyproject.toml`` (the core dependencies plus the ``cpu`` or ``gpu`` extra),
and every package that is installed in the environment running this script (the dev virtualenv, where the test
suite passed) is pinned to that installed version, so the image runs what the tests ran. onnxruntime-gpu is pinned
to the installed onnxruntime's version; the CUDA/cuDNN wheels are whatever onnxruntime-gpu's own ``cuda``/``cudnn``
extras accept (CUDA 13, cuDNN 9 for onnxruntime-gpu 1.31), at their newest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
INDEX_URL = "https://pypi.org/simple"
# The image's interpreter and C library: python:3.11-slim-bookworm (glibc 2.36). Keep in step with the Dockerfile's
# PYTHON_IMAGE (a test checks it).
PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36
MACHINE = "x86_64"
VARIANTS = ("cpu", "gpu", "build")


@dataclass(frozen=True)
class Pin:
    """One locked package: a name, an exact version and the sha256 of the wheel the target installs."""

    name: str
    version: str
    sha256: str


def platform_args() -> list[str]:
    """pip's --platform list for a manylinux target: every manylinux tag the target's glibc accepts."""
    tags = [f"manylinux_2_{minor}_{MACHINE}" for minor in range(GLIBC_MINOR, 4, -1)]
    tags += [f"manylinux2014_{MACHINE}", f"manylinux2010_{MACHINE}", f"manylinux1_{MACHINE}"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def target_args() -> list[str]:
    abi = "cp" + PYTHON_VERSION.replace(".", "")
    return [
        "--only-binary=:all:",
        *platform_args(),
        "--python-version", PYTHON_VERSION,
        "--implementation", "cp",
        "--abi", abi, "--abi", "abi3", "--abi", "none",
    ]  # fmt: skip


def project_requirements(variant: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The requirement strings a variant installs, read from ``pyproject.toml`` so the lock cannot drift from it."""
    data = tomllib.loads(pyproject.read_text())
    if variant == "build":
        return list(data["build-system"]["requires"])
    return list(data["project"]["dependencies"]) + list(data["project"]["optional-dependencies"][variant])


def installed_pins(requirements: list[str]) -> list[str]:
    """``name==version`` constraints for everything installed here (the tested versions), plus onnxruntime-gpu at
    the installed onnxruntime's version."""
    pins: dict[str, str] = {}
    for dist in metadata.distributions():
        name, version = canonicalize_name(dist.metadata["Name"]), dist.version
        if name == "nmtserve" or "+" in version:  # the project itself; local builds such as torch's +cpu
            continue
        pins[name] = version
    if "onnxruntime" in pins:
        pins["onnxruntime-gpu"] = pins["onnxruntime"]
    wanted = {canonicalize_name(Requirement(r).name) for r in requirements}
    if "onnxruntime" in wanted or "onnxruntime-gpu" in wanted:
        assert "onnxruntime" in pins, "run this with the dev virtualenv, where onnxruntime is installed and tested"
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def clean_pip_env() -> dict[str, str]:
    """The environment of a pip that reads no machine-specific configuration (local wheel folders, caps): the
    image's pip sees PyPI only, and so must the resolver that writes its lock."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve(requirements: list[str], constraints: list[str]) -> list[Pin]:
    """Resolve ``requirements`` for the image's target with pip and return the pins (sorted by name)."""
    with tempfile.TemporaryDirectory() as tmp:
        req, cons, report = Path(tmp, "requirements.in"), Path(tmp, "constraints.txt"), Path(tmp, "report.json")
        req.write_text("\n".join(requirements) + "\n")
        cons.write_text("\n".join(constraints) + "\n")
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        command += ["--report", str(report), "--index-url", INDEX_URL, *target_args(), "-r", str(req), "-c", str(cons)]
        subprocess.run(command, check=True, env=clean_pip_env())
        installs = json.loads(report.read_text())["install"]
    pins = []
    for item in installs:
        info = item["download_info"]
        sha256 = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if not sha256:
            raise RuntimeError(f"pip reported no sha256 for {info['url']}")
        pins.append(Pin(canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"], sha256))
    return sorted(pins, key=lambda pin: pin.name)


def render(variant: str, requirements: list[str], pins: list[Pin]) -> str:
    """The lock file's text: a header that says what it is for, then ``name==version --hash=sha256:...`` lines."""
    target = f"CPython {PYTHON_VERSION}, Linux {MACHINE}, glibc >= 2.{GLIBC_MINOR} wheels (python:3.11-slim-bookworm)"
    lines = [
        f"# nmtserve image lock, variant {variant}: generated by deploy/docker/lock.py; do not edit by hand.",
        f"# target: {target}",
        f"# requirements: {'; '.join(requirements)}",
        "# install: pip install --require-hashes --no-deps --only-binary=:all: -r THIS_FILE",
    ]
    for pin in pins:
        lines.append(f"{pin.name}=={pin.version} \\\n    --hash=sha256:{pin.sha256}")
    return "\n".join(lines) + "\n"


def lock(variant: str) -> Path:
    requirements = project_requirements(variant)
    pins = resolve(requirements, installed_pins(requirements))
    path = HERE / f"requirements-{variant}.lock"
    path.write_text(render(variant, requirements, pins))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}")
    for variant in args.variants or VARIANTS:
        print(f"wrote {lock(variant).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
