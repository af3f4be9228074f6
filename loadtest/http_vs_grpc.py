"""HTTP (``POST /v1/translate``) against gRPC (``Translate``) on one server process and the same sentences.

``python -m nmtserve.loadtest.http_vs_grpc --out docs/benchmarks/http``: one ``nmtserve serve`` child with both ports,
the demo model by default; closed-loop saturation (``--concurrency`` in flight) for each protocol in turn, twice,
and the latency of one request at a time (concurrency 1), which is what the HTTP layer adds per request; medians
of ``--runs`` runs. The protocols take turns so that a change in the machine's load spreads over both.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
from pathlib import Path

from nmtserve.loadtest.client import decoding_options
from nmtserve.loadtest.run import LoadTestSpec, run_loadtest
from nmtserve.loadtest.serverproc import ServerProcess

SENTENCES = [
    "The package contains the documentation.",
    "Select the cells that you want to print.",
    "Open the File menu and choose Print.",
    "The server is running.",
    "This file was removed from the system.",
    "Click the button to save your changes.",
    "The driver is installed, but the device does not respond.",
    "You can change the settings at any time.",
    "The window closes when you press Escape.",
    "Enter your password and click OK.",
    "The library provides functions for reading and writing files.",
    "An error occurred while the program was updating the database.",
    "Restart the computer to complete the installation.",
    "The menu shows the most recently opened documents.",
    "Use the search box to find a file by name.",
    "The user account has been locked after three failed attempts.",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(target: str, http: bool, concurrency: int, duration: float) -> dict:
    spec = LoadTestSpec(
        target=target,
        lines=SENTENCES * 8,
        mode="concurrency",
        levels=[concurrency],
        duration=duration,
        options=decoding_options(4, None, 0),
        http=http,
    )
    return run_loadtest(spec, progress=False).results[0].as_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/http"))
    args = parser.parse_args(argv)
    http_port = free_port()
    with ServerProcess(args.model, "--threads", str(args.threads), "--http-port", str(http_port)) as server:
        host = server.address.rsplit(":", 1)[0]
        targets = {"grpc": (server.address, False), "http": (f"{host}:{http_port}", True)}
        runs: dict[str, list[dict]] = {"grpc": [], "http": []}
        single: dict[str, list[dict]] = {"grpc": [], "http": []}
        for _ in range(args.runs):
            for name, (target, http) in targets.items():
                runs[name].append(measure(target, http, args.concurrency, args.duration))
            for name, (target, http) in targets.items():
                single[name].append(measure(target, http, 1, args.duration))
    saturation = {name: statistics.median(r["sentences_per_s"] for r in results) for name, results in runs.items()}
    p50 = {name: statistics.median(r["latency_ms"]["p50"] for r in results) for name, results in single.items()}
    summary = {
        "saturation_sentences_s": saturation,
        "http_over_grpc": saturation["http"] / saturation["grpc"],
        "p50_ms_one_in_flight": p50,
        "added_p50_ms": p50["http"] - p50["grpc"],
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "threads": args.threads,
        "runs": runs,
        "one_in_flight": single,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http_vs_grpc.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "one_in_flight")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
