"""The ``nmtserve`` command: one way in to every tool. Each command group is its own module under ``nmtserve.cli``
and imports its implementation only when it runs, so that ``nmtserve --help`` works in an install with neither
torch nor onnxruntime, and a command whose extra is missing says which one in a line."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata

import nmtserve.engine  # noqa: F401 (its import sets onnxruntime's telemetry default before any tool loads it)
from nmtserve.cli import benchmarks, converting, exporting, load, serving, training, translating
from nmtserve.cli.common import SERVING_EXTRAS, missing_extra, missing_file

EPILOG = f"Serving needs onnxruntime: {SERVING_EXTRAS}; training and export need 'nmtserve[train]'."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmtserve", description=__doc__.split("\n")[0], epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('nmtserve')}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (training, converting, translating, exporting, serving, load, benchmarks):
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except ModuleNotFoundError as error:
        explained = missing_extra(error, args.command)
        if explained is None:
            raise
        print(explained, file=sys.stderr)
        return 2
    except FileNotFoundError as error:  # a path given (or defaulted) on the command line: one line, not a traceback
        print(missing_file(error, args.command), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
