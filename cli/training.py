"""``nmtserve data build`` and ``nmtserve train``: the corpus and the model (the ``train`` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nmtserve.cli.common import DEFAULT_CORPUS, add_dataclass_flags, dataclass_from_flags


def cmd_data_build(args: argparse.Namespace) -> int:
    from nmtserve.model.data.build import build_corpus

    manifest = build_corpus(args.out.resolve(), args.cache.resolve())
    print(json.dumps({k: manifest[k] for k in ("sources", "splits") if k in manifest}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nmtserve.model.train import Trainer
    from nmtserve.model.train_config import TrainConfig

    print(Trainer(dataclass_from_flags(TrainConfig, args)).train())
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from nmtserve.model.train_config import TrainConfig

    data = commands.add_parser("data", help="build the EN-DE corpus from Debian packages")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    build = data_commands.add_parser("build", help="download (apt) and align the corpus")
    build.add_argument("--out", type=Path, default=DEFAULT_CORPUS)
    build.add_argument("--cache", type=Path, default=Path("data/cache"))
    build.set_defaults(func=cmd_data_build)

    train = commands.add_parser("train", help="train a Transformer (resumes from OUT/state if present)")
    add_dataclass_flags(train, TrainConfig)
    train.set_defaults(func=cmd_train)
