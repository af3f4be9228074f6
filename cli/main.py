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


def _add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch"], help="onnx: the serving engine")
    parser.add_argument("--checkpoint", type=Path, default=None, help="torch backend: default the demo model")
    parser.add_argument("--model", type=Path, default=None, help="onnx backend: exported model dir")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="onnx: which demo export")
    parser.add_argument("--threads", type=int, default=None, help="onnx: intra-op threads")


def _demo_export(precision: str) -> Path:
    from nmtserve.server.engine.model_dir import demo_export

    return demo_export(precision)


def _decoding_options(args: argparse.Namespace):
    from nmtserve.model.decoding import DecodingOptions

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
        init_from=args.init_from,
    )
    print(Trainer(config).train())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.backend == "torch":
        from nmtserve.model.evaluate import evaluate_checkpoint

        print(evaluate_checkpoint(args.checkpoint, args.corpus, args.split, _decoding_options(args), args.limit))
        return 0
    from nmtserve.export.compare import bleu_of

    model_dir = args.model or _demo_export(args.precision)
    print(bleu_of(model_dir, args.corpus, args.split, args.limit, _decoding_options(args), threads=args.threads))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    if args.server:
        return _translate_remote(args)
    lines = [line.rstrip("\n") for line in sys.stdin]
    texts = [line for line in lines if line.strip()]
    if args.backend == "torch":
        from nmtserve.model.checkpoint import load_checkpoint
        from nmtserve.model.evaluate import translate_texts

        model, tokenizer, _ = load_checkpoint(args.checkpoint)
        translated = translate_texts(model, tokenizer, texts, _decoding_options(args), args.batch_size)
    else:
        from nmtserve.server.engine import Engine

        engine = Engine.load(args.model or _demo_export(args.precision), threads=args.threads)
        translated = [nbest[0].text for nbest in engine.translate(texts, _decoding_options(args))]
    translations = iter(translated)
    for line in lines:  # blank lines stay blank, so output lines match input lines one to one
        print(next(translations) if line.strip() else "")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
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
        checkpoint, args.out, args.precision, fuse=args.fuse, bleu_corpus=corpus, bleu_split=args.bleu_split
    )
    print(out)
    return 0


def cmd_bench_engine(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from nmtserve.bench.engine_bench import PARTS, EngineBenchConfig, run

    parts = tuple(args.parts.split(",")) if args.parts else PARTS
    config = EngineBenchConfig(
        model_dirs=tuple(args.model_dir or ()),
        precisions=tuple(args.precisions.split(",")) if args.precisions else None,
        device=args.device,
        threads=args.threads,
        out=args.out,
        source_file=args.source,
        sentences=args.sentences,
        batch_sentences=args.batch_sentences,
        batch_size=args.batch_size,
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


def _add_bench_parser(commands) -> None:
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
    engine.add_argument("--out", type=Path, default=Path("runs/bench/engine"), help="JSON and PNG results")
    engine.add_argument("--source", type=Path, default=DEFAULT_CORPUS / "dev.en", help="sentences to translate")
    engine.add_argument("--sentences", type=int, default=500, help="first N non-empty lines of --source")
    engine.add_argument("--batch-sentences", type=int, default=200, help="sentences per point of the batch sweep")
    engine.add_argument("--batch-size", type=int, default=32, help="max batch of both engines vs CTranslate2")
    engine.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is reported)")
    engine.add_argument("--parts", default="", help="comma list of decode,batch,ctranslate2 (default: all)")
    engine.add_argument("--profile", default="auto", choices=["auto", "always", "never"])
    engine.add_argument("--work-dir", type=Path, default=None, help="cache exports/conversions here (default: tmp)")
    engine.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    engine.set_defaults(func=cmd_bench_engine)


def _client_security(args: argparse.Namespace) -> dict:
    """TranslatorClient's TLS and token arguments from ``translate --server`` flags (the token from a file or
    $NMTSERVE_TOKEN, never from a flag, which would show in the process list)."""
    import os

    token = os.environ.get("NMTSERVE_TOKEN") or None
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip().splitlines()[0].strip()
    return {
        "tls": args.tls,
        "tls_ca": args.tls_ca,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "server_name": args.tls_server_name,
        "token": token,
    }


def _translate_remote(args: argparse.Namespace) -> int:
    """``translate --server``: stdin lines in chunks to a running server (a few chunks in flight), stdout in order."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from nmtserve.server.client import TranslatorClient, decoding_options

    lines = [line.rstrip("\n") for line in sys.stdin]
    options = decoding_options(args.beam_size, args.length_penalty, args.max_length)
    chunks = [lines[i : i + args.batch_size] for i in range(0, len(lines), args.batch_size)]
    try:
        client = TranslatorClient(args.server, timeout=args.timeout, **_client_security(args))
    except (OSError, ValueError) as error:  # unreadable certificate or token files
        print(f"nmtserve translate: {error}", file=sys.stderr)
        return 2
    with client, ThreadPoolExecutor(4) as pool:
        try:
            for translations in pool.map(lambda chunk: client.translate_texts(chunk, options), chunks):
                print("\n".join(translations))
        except grpc.RpcError as error:
            print(f"nmtserve translate: {args.server}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from nmtserve.server.app import serve
    from nmtserve.server.config import ConfigError, load_config
    from nmtserve.server.logs import setup_logging

    try:
        loaded = load_config(vars(args), config_file=args.config)
    except ConfigError as error:
        print(f"nmtserve serve: {error}", file=sys.stderr)
        return 2
    config = loaded.config
    setup_logging(config.log_format, "debug" if args.verbose else config.log_level)
    log = logging.getLogger("nmtserve.serve")
    for warning in loaded.warnings:
        log.warning(warning)
    log.info("configuration", extra={"fields": {"config": config.as_dict(), "set_by": loaded.sources}})
    return asyncio.run(serve(config))


def _add_serve_parser(commands) -> None:
    from nmtserve.server.config import add_flags

    serve = commands.add_parser(
        "serve",
        help="run the gRPC translation server",
        description="Serve an exported model over gRPC (Translator, health, reflection) with Prometheus metrics. "
        "Settings: defaults < --config TOML < NMTSERVE_* environment variables < flags.",
    )
    add_flags(serve)
    serve.set_defaults(func=cmd_serve)


def _load_levels(text: str) -> list[float]:
    try:
        levels = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None
    if not levels or min(levels) <= 0:
        raise argparse.ArgumentTypeError("load levels must be > 0")
    return levels


def cmd_loadtest(args: argparse.Namespace) -> int:
    from nmtserve.server.client import decoding_options
    from nmtserve.server.loadtest.run import LoadTestSpec, run_loadtest, write_report
    from nmtserve.server.loadtest.stats import format_level
    from nmtserve.server.loadtest.workload import read_lines

    mode, levels = ("rate", args.rate) if args.rate else ("concurrency", args.concurrency)
    spec = LoadTestSpec(
        target=args.server,
        lines=read_lines(args.input, args.limit),
        mode=mode,
        levels=levels,
        duration=args.duration,
        texts_per_request=args.texts_per_request,
        options=decoding_options(args.beam_size, args.length_penalty, args.max_length),
        timeout=args.timeout,
        max_inflight=args.max_inflight,
        once=args.once,
        seed=args.seed,
    )
    report = run_loadtest(spec, progress=not args.quiet)
    for result in report.results:
        print(format_level(result))
    for path in write_report(report, args.out, args.name):
        print(f"wrote {path}")
    return 0


def _add_loadtest_parser(commands) -> None:
    loadtest = commands.add_parser("loadtest", help="load-test a running server (latency percentiles, plots)")
    loadtest.add_argument("--server", metavar="HOST:PORT", default="127.0.0.1:50051")
    loadtest.add_argument("--input", type=Path, required=True, help="text file, one sentence per line")
    load = loadtest.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=_load_levels, help="open loop: Poisson arrivals, requests/s (R or R1,R2,...)")
    load.add_argument("--concurrency", type=_load_levels, help="closed loop: requests in flight (C or C1,C2,...)")
    loadtest.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    loadtest.add_argument("--texts-per-request", type=int, default=1)
    loadtest.add_argument("--limit", type=int, default=None, help="use only the first N lines of --input")
    loadtest.add_argument("--once", action="store_true", help="send each line once, in order, then stop")
    loadtest.add_argument("--timeout", type=float, default=30.0, help="deadline of each request, seconds")
    loadtest.add_argument("--max-inflight", type=int, default=1024, help="open loop: cap on requests in flight")
    loadtest.add_argument("--seed", type=int, default=0)
    loadtest.add_argument("--out", type=Path, default=Path("runs/loadtest"), help="directory for the JSON and PNGs")
    loadtest.add_argument("--name", default="loadtest", help="file name stem of the outputs")
    loadtest.add_argument("--quiet", action="store_true", help="no progress bar")
    loadtest.add_argument("--beam-size", type=int, default=0, help="0: the server's default")
    loadtest.add_argument("--length-penalty", type=float, default=None, help="default: the server's")
    loadtest.add_argument("--max-length", type=int, default=0, help="0: the server's default")
    loadtest.set_defaults(func=cmd_loadtest)


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
    train.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's weights+tokenizer")
    train.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="sacreBLEU and chrF of a checkpoint on a corpus split")
    _add_backend_flags(evaluate)
    evaluate.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    evaluate.add_argument("--split", default="test", choices=["dev", "test"])
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    _add_decoding_flags(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    translate = commands.add_parser("translate", help="translate stdin lines to stdout, one per line")
    _add_backend_flags(translate)
    translate.add_argument("--batch-size", type=int, default=32)
    translate.add_argument("--server", metavar="HOST:PORT", default=None, help="translate with a running server")
    translate.add_argument("--timeout", type=float, default=300.0, help="with --server: seconds per request")
    translate.add_argument("--tls", action="store_true", help="with --server: connect over TLS (system CA roots)")
    translate.add_argument("--tls-ca", type=Path, default=None, metavar="FILE", help="with --server: TLS, server CA")
    translate.add_argument("--tls-cert", type=Path, default=None, metavar="FILE", help="client certificate (mTLS)")
    translate.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="client key (mTLS)")
    translate.add_argument("--tls-server-name", default=None, help="name to verify in the server's certificate")
    translate.add_argument(
        "--token-file", type=Path, default=None, metavar="FILE", help="bearer token (first line; or $NMTSERVE_TOKEN)"
    )
    _add_decoding_flags(translate)
    translate.set_defaults(func=cmd_translate)

    _add_bench_parser(commands)
    _add_serve_parser(commands)
    _add_loadtest_parser(commands)
    export = commands.add_parser("export", help="export a checkpoint to a verified, self-contained ONNX model dir")
    export.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped demo model")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    export.add_argument("--fuse", action="store_true", help="try onnxruntime's transformer fusion; kept if faster")
    export.add_argument(
        "--bleu-corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="int8/fp16: refuse the export if it scores over 0.5 BLEU below fp32 on this corpus's --bleu-split",
    )
    export.add_argument("--bleu-split", default="dev")
    export.add_argument("--no-bleu-check", action="store_true", help="int8/fp16: skip the BLEU check")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
