"""Type-check every package with mypy, under the import names the code uses (``nmtserve.engine``, ...).

pyproject's package-dir mapping installs the folders ``engine/``, ``server/``, ... as ``nmtserve.engine``,
``nmtserve.server``, ...; a tool that resolves imports by path (mypy, pyright, an editor) finds no ``nmtserve``
folder. This script builds one from the mapping itself: ``.typecheck/nmtserve/<name>`` is a symbolic link to each
folder, and ``.typecheck`` is mypy's ``mypy_path`` (pyproject's [tool.mypy]). Editors take the same folder as an
extra search path (README, "Working on the code").

    python .ci/typecheck.py          # link, then mypy over every package
    python .ci/typecheck.py --links  # only the links (for an editor)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINKS = ROOT / ".typecheck"


def package_dirs() -> dict[str, str]:
    """``{"nmtserve.engine": "engine", ...}``: the top-level folders of pyproject's package-dir mapping."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(config["tool"]["setuptools"]["package-dir"])


def link() -> list[str]:
    """(Re)create the link farm; the dotted names it makes importable."""
    names = []
    for dotted, folder in package_dirs().items():
        target = LINKS.joinpath(*dotted.split("."))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(ROOT / folder, target_is_directory=True)
        names.append(dotted)
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--links", action="store_true", help="only create .typecheck/ (for an editor)")
    args = parser.parse_args()
    names = link()
    if args.links:
        print(f"{LINKS}: {', '.join(names)}")
        return 0
    packages = [arg for name in names for arg in ("-p", name)]
    return subprocess.call([sys.executable, "-m", "mypy", *packages], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
