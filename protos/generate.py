"""Generate (or check) the Python stubs of the gRPC API from ``nmtserve/v1/*.proto``.

The stubs are committed so that the serving install needs no protoc; ``--check`` (run by the test suite) fails
when they no longer match the .proto. grpcio-tools is therefore a development dependency only.

protoc writes ``from nmtserve.v1 import translator_pb2`` into the gRPC module, an import path that only exists if
``protos/`` is on ``sys.path``; the package installs as ``nmtserve.protos.nmtserve.v1``, so that one line is
rewritten to a relative import. The descriptors keep the clean file name ``nmtserve/v1/translator.proto``, which
is what server reflection shows.

    python -m nmtserve.protos.generate          # rewrite the stubs
    python -m nmtserve.protos.generate --check  # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent  # the include root: proto files live under nmtserve/v1/
PROTO_PACKAGE_DIR = ROOT / "nmtserve" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")  # the .pyi: message types for the type checker
_ABSOLUTE_IMPORT = re.compile(r"^from nmtserve\.v1 import (\w+_pb2)", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(PROTO_PACKAGE_DIR.glob("*.proto"))


def generate_into(out: Path) -> dict[str, str]:
    """Run protoc (from grpcio-tools) on every .proto into ``out``; return {file name: text} of the stubs."""
    import grpc_tools  # lazy: a development dependency only
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    relative = [str(p.relative_to(ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *relative,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {relative}")
    stubs = {}
    for path in sorted((out / "nmtserve" / "v1").iterdir()):
        if path.name.endswith(GENERATED_SUFFIXES):
            stubs[path.name] = _ABSOLUTE_IMPORT.sub(r"from . import \1", path.read_text())
    return stubs


def stale_files() -> list[str]:
    """Names of committed stubs that differ from freshly generated ones (or are missing or extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate_into(Path(tmp))
    committed = {p.name: p.read_text() for p in PROTO_PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
    return sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))


def write_stubs() -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate_into(Path(tmp))
    written = []
    for name, text in fresh.items():
        path = PROTO_PACKAGE_DIR / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the stubs are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale gRPC stubs: {', '.join(stale)}; run python -m nmtserve.protos.generate", file=sys.stderr)
            return 1
        print("gRPC stubs are up to date")
        return 0
    for path in write_stubs():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
