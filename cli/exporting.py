"""``nmtserve export`` (a checkpoint to a verified ONNX model directory) and its acceptance checks,
``nmtserve export compare`` (token parity with the PyTorch reference) and ``nmtserve export bleu``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nmtserve.cli.common import DEFAULT_CORPUS
from nmtserve.engine.int8_kernels import INT8_KERNELS


def cmd_export(args: argparse.Namespace) -> int:
    if args.out is None:
        args.parser.error("the following arguments are required: --out")
    from nmtserve.export.exporter import export_model

    checkpoint = args.checkpoint
    if checkpoint is None:
        from nmtserve.model.checkpoint import DEMO_CHECKPOINT as checkpoint
    corpus = None if args.no_bleu_check else args.bleu_corpus
    if args.precision != "fp32" and corpus is not None and not (corpus / f"{args.bleu_split}.en").is_file():
        print(
            f"warning: no {args.bleu_split} split under {corpus} (nmtserve data build makes one): the {args.precision} "
            "export is checked against PyTorch only, not by BLEU",
            file=sys.stderr,
        )
        corpus = None
    out = export_model(
        checkpoint,
        args.out,
        args.precision,
        fuse=args.fuse,
        ragged=args.ragged,
        bleu_corpus=corpus,
        bleu_split=args.bleu_split,
        languages=(args.source_language, args.target_language),
    )
    print(out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from nmtserve.engine import DecodingOptions
    from nmtserve.export.compare import compare_with_reference
    from nmtserve.model.batching import read_lines

    texts = read_lines(args.corpus / f"{args.split}.en")[: args.limit]
    options = DecodingOptions(beam_size=args.beam_size)
    report = compare_with_reference(args.checkpoint, args.model_dir, texts, options, args.batch_size, args.threads)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def cmd_bleu(args: argparse.Namespace) -> int:
    from nmtserve.model.scoring import check_bleu_against_fp32

    base, other, ok = check_bleu_against_fp32(
        args.fp32_dir, args.other_dir, args.corpus, args.split, args.tolerance, int8_kernels=args.int8_kernels
    )
    print(f"fp32: {base}\nother: {other}\nwithin {args.tolerance} BLEU: {ok}")
    return 0 if ok else 1


def cmd_shortlist(args: argparse.Namespace) -> int:
    from nmtserve.engine.model_dir import ModelDirError
    from nmtserve.export.shortlist import ShortlistParameters, build_shortlist_export
    from nmtserve.export.verify import ExportVerificationError

    given = {"per_source": args.per_source, "frequent": args.frequent, "min_count": args.min_count}
    parameters = ShortlistParameters(**{key: value for key, value in given.items() if value is not None})
    try:
        out = build_shortlist_export(
            args.model_dir,
            args.out,
            args.corpus,
            parameters,
            bleu_split=None if args.no_bleu_check else args.bleu_split,
            bleu_tolerance=args.tolerance,
        )
    except (ExportVerificationError, ModelDirError, ValueError) as error:
        print(f"nmtserve export shortlist: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="export a checkpoint to a verified, self-contained ONNX model dir (or check one: compare, bleu)",
    )
    export.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped demo model")
    export.add_argument("--out", type=Path, default=None, help="the model directory to write (required)")
    export.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    export.add_argument(
        "--source-language",
        default=None,
        help="recorded in the manifest; GetModelInfo reports it (default: the pair a converted model names, else en)",
    )
    export.add_argument(
        "--target-language", default=None, help="requests may name only this target (or none; default as above: de)"
    )
    export.add_argument("--fuse", action="store_true", help="try onnxruntime's transformer fusion; kept if faster")
    export.add_argument(
        "--ragged", action="store_true", help="per-row self-attention cache lengths (CPU): joining rows pay no padding"
    )
    export.add_argument(
        "--bleu-corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="int8/fp16: refuse the export if it scores over 0.5 BLEU below fp32 on this corpus's --bleu-split",
    )
    export.add_argument("--bleu-split", default="dev")
    export.add_argument("--no-bleu-check", action="store_true", help="int8/fp16: skip the BLEU check")
    export.set_defaults(func=cmd_export, parser=export)

    checks = export.add_subparsers(dest="export_command", required=False, metavar="{compare,bleu,shortlist}")
    compare = checks.add_parser("compare", help="token parity and speed of the engine vs the PyTorch reference")
    compare.add_argument("checkpoint", type=Path)
    compare.add_argument("model_dir", type=Path)
    compare.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    compare.add_argument("--split", default="dev")
    compare.add_argument("--limit", type=int, default=200)
    compare.add_argument("--beam-size", type=int, default=4)
    compare.add_argument("--batch-size", type=int, default=32)
    compare.add_argument("--threads", type=int, default=None)
    compare.set_defaults(func=cmd_compare)
    bleu = checks.add_parser("bleu", help="BLEU of a reduced-precision export vs the fp32 export")
    bleu.add_argument("fp32_dir", type=Path)
    bleu.add_argument("other_dir", type=Path)
    bleu.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    bleu.add_argument("--split", default="dev")
    bleu.add_argument("--tolerance", type=float, default=0.5)
    bleu.add_argument(
        "--int8-kernels",
        default="auto",
        choices=INT8_KERNELS,
        help="the int8 format to score in (engine/int8_kernels.py): e.g. u8s7 before serving with it",
    )
    bleu.set_defaults(func=cmd_bleu)
    shortlist = checks.add_parser(
        "shortlist", help="a copy of an export whose output projection covers only likely target tokens (gated)"
    )
    shortlist.add_argument("model_dir", type=Path, help="a verified export without a shortlist (fp32 or int8)")
    shortlist.add_argument("--out", type=Path, required=True, help="the shortlist export to write")
    shortlist.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="its train split builds the table")
    shortlist.add_argument("--per-source", type=int, help="target candidates per source token (default 20)")
    shortlist.add_argument("--frequent", type=int, help="most frequent target tokens, always kept (default 300)")
    shortlist.add_argument("--min-count", type=int, help="co-occurrences below this are dropped (default 2)")
    shortlist.add_argument("--bleu-split", default="dev", help="refuse the export if it loses over --tolerance BLEU")
    shortlist.add_argument("--tolerance", type=float, default=0.3)
    shortlist.add_argument("--no-bleu-check", action="store_true")
    shortlist.set_defaults(func=cmd_shortlist)
