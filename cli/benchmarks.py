"""``nmtserve bench engine`` (the engine vs PyTorch and CTranslate2 on the same weights) and ``nmtserve bench
server`` (the server under load: batching modes, latency, the engine as the yardstick)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nmtserve.cli.common import DEFAULT_CORPUS, int_at_least
from nmtserve.engine.int8_kernels import INT8_KERNELS


def cmd_bench_engine(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from nmtserve.bench.engine_bench import PARTS, EngineBenchConfig, run

    parts = tuple(args.parts.split(",")) if args.parts else PARTS
    config = EngineBenchConfig(
        model_dirs=tuple(args.model_dir or ()),
        precisions=tuple(args.precisions.split(",")) if args.precisions else None,
        device=args.device,
        threads=args.threads,
        int8_kernels=args.int8_kernels,
        out=args.out,
        source_file=args.source,
        sentences=args.sentences,
        batch_sentences=args.batch_sentences,
        batch_size=args.batch_size,
        batch_tokens=tuple(tokens or None for tokens in args.batch_tokens or [0]),
        repeats=args.repeats,
        parts=parts,
        profile=args.profile,
        work_dir=args.work_dir,
        quick=args.quick,
    )
    if args.checkpoint is not None:
        config = replace(config, checkpoint=args.checkpoint)
    run(config)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="run benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    engine = bench_commands.add_parser(
        "engine", help="ONNX engine: decode cost vs length, throughput vs batch, side by side with CTranslate2"
    )
    engine.add_argument("--model-dir", type=Path, action="append", help="exported model dir (repeatable)")
    engine.add_argument("--checkpoint", type=Path, default=None, help="weights of every engine (default: demo model)")
    engine.add_argument(
        "--precisions",
        default="",
        help="exports to use when no --model-dir is given (default: fp32,int8 on CPU, fp16,fp32 on CUDA)",
    )
    engine.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both engines run")
    engine.add_argument("--threads", type=int, default=1, help="threads of every engine (the same for all)")
    engine.add_argument(
        "--int8-kernels",
        default="auto",
        choices=INT8_KERNELS,
        help="our int8 format on CPU (auto: u8u8 where u8s8 would saturate; CTranslate2 computes u8s8 there)",
    )
    engine.add_argument("--out", type=Path, default=Path("runs/bench/engine"), help="JSON and PNG results")
    engine.add_argument("--source", type=Path, default=DEFAULT_CORPUS / "dev.en", help="sentences to translate")
    engine.add_argument("--sentences", type=int, default=500, help="first N non-empty lines of --source")
    engine.add_argument("--batch-sentences", type=int, default=200, help="sentences per point of the batch sweep")
    engine.add_argument("--batch-size", type=int, default=32, help="max batch of both engines vs CTranslate2")
    engine.add_argument(
        "--batch-tokens",
        type=int_at_least(0),
        action="append",
        help="vs CTranslate2, bound both engines' cohorts by this many padded source tokens too (repeatable; 0: none)",
    )
    engine.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is reported)")
    engine.add_argument("--parts", default="", help="comma list of decode,batch,ctranslate2 (default: all)")
    engine.add_argument("--profile", default="auto", choices=["auto", "always", "never"])
    engine.add_argument("--work-dir", type=Path, default=None, help="cache exports/conversions here (default: tmp)")
    engine.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    engine.set_defaults(func=cmd_bench_engine)

    server = bench_commands.add_parser(
        "server", help="servers under load: batching speedup, latency at 25-90 %% load, server vs engine"
    )
    from nmtserve.loadtest import bench as server_bench

    server_bench.add_arguments(server)
    server.set_defaults(func=server_bench.run_command)
