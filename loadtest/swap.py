"""Latency through a hot swap: closed-loop clients against a server (another process) whose repository gains a new
version of the served model mid-run, then loses it again.

    python -m nmtserve.loadtest.swap --out runs/swap [--seconds 40] [--concurrency 4]

The repository holds the demo fp32 export as ``demo/1``; at 1/3 of the run the int8 export appears as ``demo/2``
(written as ``.tmp-2``, renamed), at 2/3 it is removed (back to 1). Each answer's version comes from the
``nmtserve-model`` trailer. Prints p50/p99 latency per phase (before, while 2 loads and warms, after the switch,
around the removal) and the error count, writes ``swap.json`` and ``swap.png`` (latency over time, coloured by
the version that answered).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from nmtserve.engine.model_dir import demo_export
from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb
from nmtserve.protos.nmtserve.v1 import translator_pb2_grpc as pb_grpc

TEXTS = (
    "The package contains the documentation.",
    "Select the cells that you want to print.",
    "The server is running.",
    "Click the button to start the installation.",
)


@dataclass(frozen=True)
class Answer:
    sent_s: float  # since the start of the run
    latency_s: float
    version: str  # "demo/1", or the status code name of a failure


def client(address: str, start: float, end: float, offset: int, out: list[Answer]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        i = offset
        while time.monotonic() < end:
            sent = time.monotonic()
            try:
                _, call = stub.Translate.with_call(pb.TranslateRequest(texts=[TEXTS[i % len(TEXTS)]]), timeout=60)
                version = dict(call.trailing_metadata()).get("nmtserve-model", "?")
            except grpc.RpcError as error:
                version = error.code().name
            out.append(Answer(sent - start, time.monotonic() - sent, version))
            i += 1


def phase_stats(answers: list[Answer], since: float, until: float) -> dict[str, float]:
    latencies = np.array([a.latency_s for a in answers if since <= a.sent_s < until]) * 1000
    if not len(latencies):
        return {"requests": 0}
    return {
        "requests": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def plot(answers: list[Answer], marks: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for version in sorted({a.version for a in answers}):
        chosen = [a for a in answers if a.version == version]
        ax.scatter([a.sent_s for a in chosen], [a.latency_s * 1000 for a in chosen], s=4, label=version)
    for name, at in marks.items():
        ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
        ax.text(at, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=8, va="top")
    ax.set_xlabel("request sent (s since start)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Hot swap under load: each answer by the version that gave it")
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(out: Path, seconds: float, concurrency: int, threads: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    repository = Path(tempfile.mkdtemp(prefix="nmtserve-swap-"))
    (repository / "demo").mkdir()
    os.symlink(demo_export("fp32"), repository / "demo" / "1")
    flags = ("--model-repository", str(repository), "--repository-poll-s", "0.5", "--threads", str(threads))
    answers: list[Answer] = []
    marks: dict[str, float] = {}
    with ServerProcess(None, *flags) as server:
        start = time.monotonic()
        end = start + seconds
        workers = [
            threading.Thread(target=client, args=(server.address, start, end, i, answers)) for i in range(concurrency)
        ]
        for worker in workers:
            worker.start()
        time.sleep(seconds / 3)
        os.symlink(demo_export("int8"), repository / "demo" / ".tmp-2")
        os.rename(repository / "demo" / ".tmp-2", repository / "demo" / "2")
        marks["2 appears"] = time.monotonic() - start
        time.sleep(seconds / 3)
        (repository / "demo" / "2").unlink()
        marks["2 removed"] = time.monotonic() - start
        for worker in workers:
            worker.join()
    first_2 = min((a.sent_s for a in answers if a.version == "demo/2"), default=seconds)
    back_to_1 = min(
        (a.sent_s for a in answers if a.version == "demo/1" and a.sent_s > marks["2 removed"]), default=seconds
    )
    phases = {
        "before (1)": phase_stats(answers, 0, marks["2 appears"]),
        "2 loading, 1 serving": phase_stats(answers, marks["2 appears"], first_2),
        "after the switch (2)": phase_stats(answers, first_2, marks["2 removed"]),
        "1 reloading, 2 serving": phase_stats(answers, marks["2 removed"], back_to_1),
        "after the removal (1)": phase_stats(answers, back_to_1, seconds),
    }
    errors = sum(1 for a in answers if not a.version.startswith("demo/"))
    report = {"concurrency": concurrency, "seconds": seconds, "threads": threads, "errors": errors, "phases": phases}
    (out / "swap.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(answers, marks, out / "swap.png")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/swap"))
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="the server's onnxruntime threads")
    args = parser.parse_args()
    report = run(args.out, args.seconds, args.concurrency, args.threads)
    for name, stats in report["phases"].items():
        figures = f"p50 {stats['p50_ms']:.0f} ms  p99 {stats['p99_ms']:.0f} ms" if stats["requests"] else "-"
        print(f"{name:<26} {stats['requests']:>5} requests  {figures}")
    print(f"errors: {report['errors']}; {args.out / 'swap.png'}")


if __name__ == "__main__":
    main()
