"""A local monitoring stack without Docker: nmtserve and Debian's Prometheus on 127.0.0.1, with some traffic.

    python deploy/tools/local_stack.py --duration 90 --render docs/img   # regenerate the docs' dashboard plots
    python deploy/tools/local_stack.py --duration 300 --keep             # look around: prints the URLs, Ctrl-C ends

Prometheus runs the shipped configuration (deploy/prometheus/prometheus.yml: its nmtserve job, pointed at the local
server, scraping every second instead of every 15) and the shipped rules. The server runs with a deliberately small
queue so that bursts of traffic get some requests refused (RESOURCE_EXHAUSTED) next to invalid ones
(INVALID_ARGUMENT): every panel of the dashboard, the error ones included, then has something to show. The traffic is
bounded in time and in requests in flight, and goes to 127.0.0.1 only.

The live-Prometheus test (tests/test_deploy_prometheus_live.py) builds the same stack from these functions, so the
pictures in docs/deploy.md come from exactly what the test checks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from debian_tools import PrometheusTools, find_prometheus
from promqueries import PrometheusAPI

from nmtserve.loadtest.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
JOB = "nmtserve"
# Labels a Kubernetes scrape would attach (the Prometheus adapter's rules select on them).
POD_LABELS = {"namespace": "nmtserve-local", "pod": "nmtserve-local-0"}
# The server of the stack: small batches and a small queue, so that bursts overflow it (RESOURCE_EXHAUSTED).
STACK_SERVER_ENV = {
    "NMTSERVE_THREADS": "1",
    "NMTSERVE_MAX_BATCH_SIZE": "8",
    "NMTSERVE_MAX_QUEUE_SIZE": "16",
    "NMTSERVE_MAX_TEXTS_PER_REQUEST": "16",
}
SENTENCES = (
    "The package contains the documentation.",
    "Select the cells that you want to print.",
    "This program is free software.",
    "Open the File menu and choose Save As.",
    "The server could not be reached.",
    "Click the button to insert a new row above the current row.",
    "This package provides the development files for the library.",
    "Restart the computer to complete the installation.",
    "Hello.",
    "The file was saved in the documents folder.",
)


# ---------------------------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot report a port-0 bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(extra_env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> ServerProcess:
    """This checkout's ``nmtserve serve`` (the demo model unless ``args`` say otherwise) on free loopback ports."""
    env = {**os.environ, **STACK_SERVER_ENV, **(extra_env or {})}
    flags = ("--host", "127.0.0.1", "--metrics-host", "127.0.0.1", *args)
    return ServerProcess(None, *flags, env=env, wait_serving=False, fail_on_error=True).start()


def prometheus_config(
    target: str, scrape_interval: str = "1s", labels: Mapping[str, str] | None = None, rules_dir: Path = RULES_DIR
) -> dict[str, Any]:
    """The shipped Prometheus configuration, its nmtserve job pointed at ``target`` (host:port), scraping and
    evaluating rules every ``scrape_interval``, the rule files read from ``rules_dir``."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "evaluation_interval": scrape_interval,
    }
    config["rule_files"] = [str(rules_dir / "*.yml")]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    if len(jobs) != 1:
        raise ValueError(f"{PROMETHEUS_CONFIG} must have exactly one {JOB!r} scrape job")
    jobs[0]["static_configs"] = [{"targets": [target], "labels": dict(labels or {})}]
    config["scrape_configs"] = jobs
    return config


@dataclass
class PrometheusProcess:
    process: subprocess.Popen
    api: PrometheusAPI
    url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_prometheus(tools: PrometheusTools, config: Mapping[str, Any], workdir: Path) -> PrometheusProcess:
    """Check ``config`` with promtool, then run Prometheus on a free loopback port until it reports ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    check = subprocess.run([str(tools.promtool), "check", "config", str(config_path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"promtool check config failed: {check.stdout}{check.stderr}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    argv = [
        str(tools.prometheus),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    api = PrometheusAPI(url)
    end = time.monotonic() + 60
    while not api.ready():
        if process.poll() is not None or time.monotonic() > end:
            process.kill()
            raise RuntimeError(f"Prometheus did not get ready: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    return PrometheusProcess(process, api, url, log_path)


# ---------------------------------------------------------------------------------------------------------------------
# Traffic


@dataclass
class TrafficReport:
    """What the traffic got back: gRPC status code names and their counts, overall and by (method, code), and when
    it ran (Unix seconds)."""

    codes: Counter[str] = field(default_factory=Counter)
    by_method: Counter[tuple[str, str]] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, method: str, code: str) -> None:
        with self.lock:
            self.codes[code] += 1
            self.by_method[method, code] += 1


def send_traffic(
    address: str, duration: float, workers: int = 2, bursts: int = 3, ramp: bool = False, seed: int = 0
) -> TrafficReport:
    """About ``duration`` seconds of mixed traffic to ``address`` from a bounded number of threads: ``workers``
    closed loops of small Translate requests (every fourth one a TranslateStream), one invalid request a second
    (INVALID_ARGUMENT), and ``bursts`` bursts of four 16-text requests at once that overflow a small queue. With
    ``ramp`` the loops start one after another over the first half, so the load visibly steps up."""
    import grpc

    from nmtserve.loadtest.client import TranslatorClient, decoding_options
    from nmtserve.protos.nmtserve.v1 import translator_pb2 as pb

    report = TrafficReport(started=time.time())
    deadline = time.monotonic() + duration
    rng = random.Random(seed)
    lock = threading.Lock()

    def texts(n: int) -> list[str]:
        with lock:
            return [rng.choice(SENTENCES) for _ in range(n)]

    def call(client: TranslatorClient, kind: str) -> None:
        try:
            if kind == "stream":
                requests = [pb.TranslateRequest(texts=texts(1), request_id=f"r{i}") for i in range(2)]
                for event in client.stream(requests):
                    if event.error is not None:
                        report.count("TranslateStream", event.error[0].name)
                    elif event.final:
                        report.count("TranslateStream", "OK")
            elif kind == "invalid":
                client.translate(texts(1), decoding_options(beam_size=99))
                report.count("Translate", "OK")
            else:
                client.translate(texts(16 if kind == "burst" else rng.randint(1, 3)))
                report.count("Translate", "OK")
        except grpc.RpcError as error:
            report.count("TranslateStream" if kind == "stream" else "Translate", error.code().name)

    def loop(index: int) -> None:
        if ramp:
            time.sleep(duration / 2 * index / workers)
        with TranslatorClient(address, timeout=30) as client:
            n = 0
            while time.monotonic() < deadline:
                call(client, "stream" if n % 4 == 3 else "translate")
                n += 1

    def invalid() -> None:
        with TranslatorClient(address, timeout=30) as client:
            while time.monotonic() < deadline:
                call(client, "invalid")
                time.sleep(1.0)

    def burst_at(fraction: float) -> None:
        time.sleep(max(0.0, duration * fraction))
        with TranslatorClient(address, timeout=60) as client, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: call(client, "burst"), range(4)))

    with ThreadPoolExecutor(workers + 1 + bursts) as pool:
        jobs = [pool.submit(loop, i) for i in range(workers)] + [pool.submit(invalid)]
        jobs += [pool.submit(burst_at, (k + 1) / (bursts + 1)) for k in range(bursts)]
        for job in jobs:
            job.result()
    report.ended = time.time()
    return report


# ---------------------------------------------------------------------------------------------------------------------
# The stack


@dataclass
class Stack:
    server: ServerProcess
    prometheus: PrometheusProcess
    workdir: Path

    @property
    def metrics_target(self) -> str:
        return self.server.metrics_url.split("//", 1)[1].split("/", 1)[0]


def wait_for_first_scrape(api: PrometheusAPI, timeout: float = 30.0) -> None:
    """Block until Prometheus has scraped the server once, so that traffic is measured from its first request."""
    end = time.monotonic() + timeout
    while not api.query(f'up{{job="{JOB}"}} == 1'):
        if time.monotonic() > end:
            raise RuntimeError(f"Prometheus did not scrape the server within {timeout} s: {api.targets()}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_stack(workdir: Path, tools: PrometheusTools | None = None, server_env: Mapping[str, str] | None = None):
    """Server, then Prometheus scraping it; both stopped on exit (the server by SIGTERM, as a pod would be)."""
    tools = tools or find_prometheus()
    server = start_server(server_env)
    prometheus = None
    try:
        server.wait_for("serving", timeout=180)
        target = server.metrics_url.split("//", 1)[1].split("/", 1)[0]
        config = prometheus_config(target, labels=POD_LABELS)
        prometheus = start_prometheus(tools, config, workdir / "prometheus")
        wait_for_first_scrape(prometheus.api)
        yield Stack(server, prometheus, workdir)
    finally:
        if prometheus is not None:
            prometheus.stop()
        if server.process.poll() is None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--workers", type=int, default=4, help="closed-loop clients, started one after another")
    parser.add_argument("--render", type=Path, default=None, help="write the dashboard plots (PNG) to this folder")
    parser.add_argument("--keep", action="store_true", help="keep the stack running after the traffic, until Ctrl-C")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nmtserve-stack-") as tmp, running_stack(Path(tmp)) as stack:
        print(f"server {stack.server.address}, metrics {stack.server.metrics_url}, prometheus {stack.prometheus.url}")
        report = send_traffic(stack.server.address, args.duration, workers=args.workers, ramp=True)
        print(f"traffic: {dict(report.codes)}")
        time.sleep(3)  # a few more scrapes and rule evaluations
        if args.render is not None:
            from render_dashboard import render_dashboard

            rendered = render_dashboard(stack.prometheus.api, report.started, time.time(), args.render)
            for path in rendered.paths:
                print(f"wrote {path}")
        if args.keep:
            print("running; Ctrl-C stops")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
