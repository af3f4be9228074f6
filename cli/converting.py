"""``nmtserve convert hf SRC --out CKPT``: a Hugging Face model directory to a project checkpoint (then export it).

Bad input (no supported model, missing tokenizer files, sizes that disagree, unreadable weights) is one line on
stderr naming the problem, exit code 2, and nothing written at ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_convert_hf(args: argparse.Namespace) -> int:
    from nmtserve.export.hf_convert import ConversionError, convert_hf

    try:
        out = convert_hf(args.source, args.out)
    except ConversionError as error:
        print(f"nmtserve convert hf: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser("convert", help="convert a model of another toolkit to a checkpoint")
    sources = convert.add_subparsers(dest="convert_command", required=True)
    hf = sources.add_parser(
        "hf",
        help="a Hugging Face model directory (MarianMTModel) to a checkpoint that `nmtserve export` takes",
    )
    hf.add_argument("source", type=Path, help="the directory save_pretrained wrote (config.json, weights, tokenizer)")
    hf.add_argument("--out", type=Path, required=True, help="the checkpoint directory to write")
    hf.set_defaults(func=cmd_convert_hf)
