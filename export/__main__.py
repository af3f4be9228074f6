"""``python -m nmtserve.export``: acceptance checks of an export against the PyTorch reference / the fp32 export.

(Exporting itself is ``nmtserve export``.)

python -m nmtserve.export compare model/demo /tmp/demo-fp32 --corpus data/corpus --limit 200
python -m nmtserve.export bleu /tmp/demo-fp32 /tmp/demo-int8 --corpus data/corpus
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtserve.export", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="token parity and speed of the engine vs model.beam_search")
    compare.add_argument("checkpoint", type=Path)
    compare.add_argument("model_dir", type=Path)
    compare.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    compare.add_argument("--split", default="dev")
    compare.add_argument("--limit", type=int, default=200)
    compare.add_argument("--beam-size", type=int, default=4)
    compare.add_argument("--batch-size", type=int, default=32)
    compare.add_argument("--threads", type=int, default=None)
    bleu = commands.add_parser("bleu", help="BLEU of a reduced-precision export vs the fp32 export")
    bleu.add_argument("fp32_dir", type=Path)
    bleu.add_argument("other_dir", type=Path)
    bleu.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    bleu.add_argument("--split", default="dev")
    bleu.add_argument("--tolerance", type=float, default=0.5)
    args = parser.parse_args(argv)

    if args.command == "compare":
        from nmtserve.export.compare import compare_with_reference
        from nmtserve.model.batching import read_lines
        from nmtserve.server.engine import DecodingOptions

        texts = read_lines(args.corpus / f"{args.split}.en")[: args.limit]
        report = compare_with_reference(
            args.checkpoint,
            args.model_dir,
            texts,
            DecodingOptions(beam_size=args.beam_size),
            args.batch_size,
            args.threads,
        )
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from nmtserve.export.compare import check_bleu_against_fp32

    base, other, ok = check_bleu_against_fp32(args.fp32_dir, args.other_dir, args.corpus, args.split, args.tolerance)
    print(f"fp32: {base}\nother: {other}\nwithin {args.tolerance} BLEU: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
