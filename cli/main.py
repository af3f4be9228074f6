"""The ``nmtserve`` command. Each subcommand imports its implementation lazily, so that serving commands never
import torch and ``nmtserve --help`` stays instant."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_CORPUS = Path("data/corpus")


def _add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256, help="absolute cap on output tokens")


def _decoding_options(args: argparse.Namespace):
    from nmtserve.model.beam_search import DecodingOptions

    return DecodingOptions(beam_size=args.beam_size, length_penalty=args.length_penalty, max_length=args.max_length)


def cmd_data_build(args: argparse.Namespace) -> int:
    import json

    from nmtserve.model.data.build import build_corpus

    manifest = build_corpus(args.out.resolve(), args.cache.resolve())
    print(json.dumps({k: manifest[k] for k in ("sources", "splits") if k in manifest}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nmtserve.model.train import TrainConfig, Trainer

    config = TrainConfig(
        corpus=args.corpus,
        out=args.out,
        preset=args.preset,
        vocab_size=args.vocab_size,
        max_tokens=args.max_tokens,
        accumulate=args.accumulate,
        warmup_steps=args.warmup_steps,
        lr_factor=args.lr_factor,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        eval_every=args.eval_every,
        threads=args.threads,
        bf16=not args.no_bf16,
    )
    print(Trainer(config).train())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nmtserve.model.evaluate import evaluate_checkpoint

    print(evaluate_checkpoint(args.checkpoint, args.corpus, args.split, _decoding_options(args), args.limit))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    lines = [line.rstrip("\n") for line in sys.stdin]
    if args.backend != "torch":
        print(f"nmtserve translate: backend {args.backend!r} is not available yet", file=sys.stderr)
        return 2
    from nmtserve.model.checkpoint import load_checkpoint
    from nmtserve.model.evaluate import translate_texts

    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    texts = [line for line in lines if line.strip()]
    translations = iter(translate_texts(model, tokenizer, texts, _decoding_options(args), args.batch_size))
    for line in lines:  # blank lines stay blank, so output lines match input lines one to one
        print(next(translations) if line.strip() else "", flush=False)
    return 0


def cmd_not_yet(args: argparse.Namespace) -> int:
    print(f"nmtserve {args.command}: not implemented in this release", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmtserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build the EN-DE corpus from Debian packages")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    build = data_commands.add_parser("build", help="download (apt) and align the corpus")
    build.add_argument("--out", type=Path, default=DEFAULT_CORPUS)
    build.add_argument("--cache", type=Path, default=Path("data/cache"))
    build.set_defaults(func=cmd_data_build)

    train = commands.add_parser("train", help="train a Transformer (resumes from OUT/state if present)")
    train.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    train.add_argument("--out", type=Path, default=Path("runs/demo"))
    train.add_argument("--preset", default="small", choices=["tiny", "small", "base", "big"])
    train.add_argument("--vocab-size", type=int, default=8000)
    train.add_argument("--max-tokens", type=int, default=6000, help="tokens per batch, padding included")
    train.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    train.add_argument("--warmup-steps", type=int, default=1200)
    train.add_argument("--lr-factor", type=float, default=0.8)
    train.add_argument("--max-steps", type=int, default=100_000)
    train.add_argument("--max-minutes", type=float, default=float("inf"), help="stop (resumably) after this long")
    train.add_argument("--eval-every", type=int, default=400)
    train.add_argument("--threads", type=int, default=0)
    train.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="sacreBLEU and chrF of a checkpoint on a corpus split")
    evaluate.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped demo model")
    evaluate.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    evaluate.add_argument("--split", default="test", choices=["dev", "test"])
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    _add_decoding_flags(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    translate = commands.add_parser("translate", help="translate stdin lines to stdout, one per line")
    translate.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    translate.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped demo model")
    translate.add_argument("--batch-size", type=int, default=32)
    _add_decoding_flags(translate)
    translate.set_defaults(func=cmd_translate)

    for name, text in [
        ("export", "export a checkpoint to ONNX"),
        ("serve", "run the gRPC translation server"),
        ("bench", "run benchmarks"),
        ("loadtest", "load-test a running server"),
    ]:
        commands.add_parser(name, help=f"{text} (later release)").set_defaults(func=cmd_not_yet)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
