"""``nmtserve loadtest`` (open- or closed-loop load on a running server) and ``nmtserve soak``."""

from __future__ import annotations

import argparse
from pathlib import Path


def _load_levels(text: str) -> list[float]:
    try:
        levels = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None
    if not levels or min(levels) <= 0:
        raise argparse.ArgumentTypeError("load levels must be > 0")
    return levels


def cmd_loadtest(args: argparse.Namespace) -> int:
    from nmtserve.loadtest.client import decoding_options
    from nmtserve.loadtest.run import LoadTestSpec, run_loadtest, write_report
    from nmtserve.loadtest.stats import format_level
    from nmtserve.loadtest.workload import read_lines

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
        http=args.http,
    )
    report = run_loadtest(spec, progress=not args.quiet)
    for result in report.results:
        print(format_level(result))
    for path in write_report(report, args.out, args.name):
        print(f"wrote {path}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    loadtest = commands.add_parser("loadtest", help="load-test a running server (latency percentiles, plots)")
    loadtest.add_argument("--server", metavar="HOST:PORT", default="127.0.0.1:50051")
    loadtest.add_argument(
        "--http", action="store_true", help="load the HTTP API (POST /v1/translate); --server is the HTTP HOST:PORT"
    )
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

    soak = commands.add_parser(
        "soak", help="soak test: many mixed requests with cancels, deadlines and a burst; lost/wrong answers, RSS"
    )
    from nmtserve.loadtest import soak as soak_test

    soak_test.add_arguments(soak)
    soak.set_defaults(func=soak_test.run_command)
