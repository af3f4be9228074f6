"""Build the serving image from the unchanged Dockerfile with podman and run it the way the Kubernetes manifests do.

``make image-test`` (CPU target) and ``make image-gpu`` (GPU target, about 3 GB, only when asked) run this. It:

1. checks that podman can run here at all, and otherwise fails with one line that says why (never a silent skip);
2. makes the base image locally (no registry is reachable from our machines): ``mmdebstrap`` writes a Debian
   bookworm root filesystem with Debian's ``python3`` (3.11), which ``podman import`` tags under the Dockerfile's
   base name. It stands in for the official ``python:3.11-slim-bookworm`` image and is not identical to it
   (Python 3.11.2 in /usr/bin instead of a source-built one in /usr/local);
3. builds the target with the host's CA bundle bind-mounted into each RUN step, so pip can verify the re-signing
   HTTPS proxy, without baking it into any layer;
4. runs the container as ``deploy/k8s`` does: read-only root, tmpfs /tmp, every capability dropped,
   no-new-privileges, uid 10001, the memory limit, the overlay's config.toml mounted, ports on 127.0.0.1 only;
5. CPU: under ``--cpus 1`` the engine sizes its thread pool to one CPU (``engine/cpu_budget.py``); then through
   the published ports, health SERVING, a translation equal to ``nmtserve translate`` on the host,
   /metrics scraped, then ``podman stop`` with a bounded load running: every in-flight request answered, exit code
   0, within the manifest's grace period. GPU: the image's onnxruntime lists the CUDA provider and, without a GPU,
   the server's health stays NOT_SERVING with the engine's log line.

It writes ``report.json`` (image size, build, start and stop times) and the container's log under ``--out``.
Podman 4.3 on Debian 12 needs a ``containers.conf`` (see ``containers_conf``); this script writes its own and
points ``CONTAINERS_CONF`` at it, leaving the machine's configuration alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
IGNOREFILE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
K8S = ROOT / "deploy" / "k8s"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the base image needs: the Dockerfile's stages call `python -m venv`, groupadd/useradd (passwd is in minbase)
# and pip over HTTPS (CA certificates, /etc/services and /etc/protocols from netbase); tzdata for log timestamps.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "netbase", "tzdata")
# Podman 4.3 on Debian 12, on these machines: its default ulimits (nofile 1048576) exceed the host's hard limits and
# are refused, crun refuses the host's mixed cgroup layout, and there is no systemd to log events to or manage cgroups.
ULIMITS = {"nofile": (resource.RLIMIT_NOFILE, 20000), "nproc": (resource.RLIMIT_NPROC, 32768)}
SENTENCES = (
    "The package contains the documentation.",
    "The server is running.",
    "Please read the manual before you install the software.",
)
CONTAINER = "nmtserve-image-test"


def containers_conf() -> str:
    """containers.conf for podman here: default ulimits within this host's hard limits, runc, cgroupfs, file events."""
    ulimits = []
    for name, (which, wanted) in ULIMITS.items():
        hard = resource.getrlimit(which)[1]
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        ulimits.append(f'"{name}={value}:{value}"')
    return (
        f"[containers]\ndefault_ulimits = [{', '.join(ulimits)}]\n\n"
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )


class ImageTestError(RuntimeError):
    """One step failed; the message is the one line the step prints."""


def say(message: str) -> None:
    print(f"image-test: {message}", flush=True)


def run(
    argv: list[str], *, timeout: float, env: dict | None = None, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    """A command with a timeout; on failure the error names the command and the end of its output."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    except subprocess.TimeoutExpired as error:
        raise ImageTestError(f"{' '.join(argv[:3])} ran past {timeout:.0f} s") from error
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ImageTestError(f"{' '.join(argv[:3])} exited {done.returncode}: {' | '.join(tail)}")
    return done


@dataclass
class Podman:
    """podman with this script's containers.conf."""

    conf: Path
    env: dict = field(init=False)

    def __post_init__(self) -> None:
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(containers_conf())
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(["podman", *args], timeout=timeout, env=self.env, check=check, **kw)


def preflight(podman: Podman) -> None:
    """podman, runc and mmdebstrap are installed and podman can start a container; else one line says why."""
    missing = [tool for tool in ("podman", "runc", "mmdebstrap", "newuidmap") if shutil.which(tool) is None]
    if missing:
        raise ImageTestError(
            f"podman cannot run here: {', '.join(missing)} not installed"
            " (apt-get install podman runc mmdebstrap uidmap)"
        )
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}", check=False, timeout=60)
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines() or ["no output"]
        raise ImageTestError(f"podman cannot run here: podman info failed: {lines[-1]}")


def base_image_name() -> str:
    """The Dockerfile's ``ARG PYTHON_IMAGE`` default, fully qualified as podman stores it."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(), re.M)
    if not match:
        raise ImageTestError(f"{DOCKERFILE} has no ARG PYTHON_IMAGE default")
    name = match.group(1)
    return name if "/" in name else f"docker.io/library/{name}"


def make_base(podman: Podman, name: str, rebuild: bool) -> float | None:
    """The stand-in base image (mmdebstrap | podman import); seconds taken, or None when it was already there."""
    if not rebuild and podman("image", "exists", name, check=False).returncode == 0:
        return None
    started = time.monotonic()
    packages = ",".join(BASE_PACKAGES)
    debstrap = subprocess.Popen(
        ["mmdebstrap", "--variant=minbase", f"--include={packages}", "bookworm", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    importer = podman(
        "import", "--change", 'CMD ["python3"]', "-", name, stdin=debstrap.stdout, timeout=600, check=False
    )
    debstrap.stdout.close()
    err = debstrap.stderr.read().decode(errors="replace")
    if debstrap.wait(timeout=60) != 0:
        raise ImageTestError(f"mmdebstrap failed: {(err.strip().splitlines() or ['no output'])[-1]}")
    if importer.returncode != 0:
        raise ImageTestError(f"podman import failed: {importer.stderr.strip().splitlines()[-1:]}")
    return time.monotonic() - started


def build(podman: Podman, target: str, tag: str) -> float:
    """The Dockerfile's target, unchanged; the host CA bundle is mounted into RUN steps only, never copied."""
    started = time.monotonic()
    args = ["build", "-f", str(DOCKERFILE), "--ignorefile", str(IGNOREFILE), "--target", target, "-t", tag]
    args += ["--pull=never", "--layers"]
    if HOST_CA_BUNDLE.is_file():
        args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    podman(*args, str(ROOT), timeout=1800)
    return time.monotonic() - started


def ca_bundle_kept_out(podman: Podman, tag: str, base: str) -> None:
    """The image's CA bundle is the base image's: the host's (mounted for the build's pip) left no trace."""
    digest = [
        podman("run", "--rm", "--entrypoint", "sha256sum", image, str(HOST_CA_BUNDLE)).stdout.split()[0]
        for image in (tag, base)
    ]
    check(digest[0] == digest[1], f"{tag}'s {HOST_CA_BUNDLE} differs from the base image's: the host's was baked in")


def image_size(podman: Podman, tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


@dataclass(frozen=True)
class PodSettings:
    """What the manifests ask of the container, read from deploy/k8s so that this test follows them."""

    memory_limit: str
    grace_period_s: int
    tmp_size: str
    config: Path


def pod_settings(variant: str) -> PodSettings:
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    limits = deployment["containers"][0]["resources"]["limits"]
    patch = yaml.safe_load((K8S / "overlays" / variant / f"deployment-{variant}.yaml").read_text())
    patched = patch["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    tmp = next(v for v in deployment["volumes"] if v["name"] == "tmp")
    memory = patched.get("memory", limits["memory"])
    return PodSettings(
        memory_limit=memory.replace("Gi", "g").replace("Mi", "m"),
        grace_period_s=int(deployment["terminationGracePeriodSeconds"]),
        tmp_size=tmp["emptyDir"]["sizeLimit"].replace("Mi", "m").replace("Gi", "g"),
        config=K8S / "overlays" / variant / "config.toml",
    )


def run_hardened(podman: Podman, tag: str, pod: PodSettings, extra: tuple[str, ...] = ()) -> None:
    """``podman run -d`` with the pod's security context, limits, mounts and 127.0.0.1-only ports."""
    podman("rm", "--force", "--ignore", CONTAINER, check=False)
    podman(
        "run", "--detach", "--name", CONTAINER,
        "--read-only", "--tmpfs", f"/tmp:rw,size={pod.tmp_size},mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", "10001:10001", "--memory", pod.memory_limit,
        "--volume", f"{pod.config}:/etc/nmtserve/config.toml:ro",
        "--env", "NMTSERVE_CONFIG=/etc/nmtserve/config.toml",
        "--publish", "127.0.0.1::50051", "--publish", "127.0.0.1::9090",
        *extra, tag,
    )  # fmt: skip


def published(podman: Podman, port: int) -> str:
    """host:port that the container's ``port`` is published on (127.0.0.1 and a free port podman picked)."""
    lines = podman("port", CONTAINER, f"{port}/tcp", check=False).stdout.strip().splitlines()
    if not lines:
        last = (container_log(podman).strip().splitlines() or ["no log"])[-1]
        raise ImageTestError(f"port {port} is not published (has the container exited?): {last[:300]}")
    line = lines[0]
    host, _, number = line.rpartition(":")
    if host not in ("127.0.0.1",):
        raise ImageTestError(f"port {port} is published on {line}, not on 127.0.0.1 only")
    return f"127.0.0.1:{number}"


def container_state(podman: Podman) -> dict:
    return json.loads(podman("inspect", "--format", "{{json .State}}", CONTAINER).stdout)


def wait_serving(podman: Podman, client, timeout: float) -> None:
    """Health SERVING within ``timeout``; a container that exits or never gets there fails with its last log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.wait_until_serving(timeout=2)
            return
        except TimeoutError:
            state = container_state(podman)
        if not state.get("Running"):
            last = (container_log(podman).strip().splitlines() or ["no log"])[-1]
            raise ImageTestError(f"the container exited {state.get('ExitCode')} before SERVING: {last[:300]}")
    last = (container_log(podman).strip().splitlines() or ["no log"])[-1]
    raise ImageTestError(f"health not SERVING within {timeout:.0f} s: {last[:300]}")


def logged_start_to_serving(podman: Podman) -> float | None:
    """Seconds from the container's start (podman's StartedAt) to the server's "serving" log line: the start time
    without the client's gRPC reconnect back-off, which adds up to a few seconds to ``start_to_serving_s``."""
    started = container_state(podman)["StartedAt"]  # RFC 3339 with nanoseconds
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", started)
    if not match:
        return None
    fraction = (match.group(2) or ".0")[:7]
    begin = datetime.fromisoformat(match.group(1) + fraction + "+00:00")
    for line in container_log(podman).splitlines():
        if line.startswith("{") and '"message": "serving"' in line:
            return round((datetime.fromisoformat(json.loads(line)["time"]) - begin).total_seconds(), 2)
    return None


def host_translations(texts: tuple[str, ...], beam_size: int) -> list[str]:
    """``nmtserve translate`` on the host (the engine in-process, the same demo export)."""
    nmtserve = Path(sys.executable).with_name("nmtserve")
    done = run([str(nmtserve), "translate", "--beam-size", str(beam_size)], input="\n".join(texts) + "\n", timeout=300)
    return done.stdout.splitlines()


DRAIN_REFUSAL = "draining"  # in the UNAVAILABLE message the server answers new requests with while it drains


@dataclass
class LoadResult:
    """Each request of the bounded load, placed against the moment the server began its drain (its "shutdown
    requested" log line; the container shares the host's clock)."""

    in_flight_ok: int = 0  # sent before the drain began, answered OK after it
    ok_otherwise: int = 0  # answered OK before the drain began
    refused_by_drain: int = 0  # UNAVAILABLE with the drain's message: refused on arrival, never started
    gone_after_drain: int = 0  # sent after the drain began; the server had stopped listening
    cancelled_after_drain: int = 0  # sent after the drain began; CANCELLED by gRPC's shutdown before it started
    lost: list[str] = field(default_factory=list)  # anything else, with its times from the drain's start


def server_log_time(podman: Podman, message: str) -> float | None:
    """The POSIX time of the server's first JSON log line with ``message``."""
    for line in container_log(podman).splitlines():
        if line.startswith("{") and f'"message": "{message}"' in line:
            return datetime.fromisoformat(json.loads(line)["time"]).timestamp()
    return None


def classify(records: list[tuple[float, float, str]], drain_began: float) -> LoadResult:
    """(sent, answered, outcome) of each request, in POSIX time, against the drain's start.

    A request sent before the drain began was accepted (or is refused with the drain's message, having arrived
    after it): anything else than OK or that refusal is a lost request. One sent after the drain began cannot have
    started; UNAVAILABLE is its right answer (the drain's refusal, or no server left to connect to), and CANCELLED,
    which gRPC's own shutdown gives a request arriving during its last milliseconds, is counted apart.
    """
    result = LoadResult()
    for sent, answered, outcome in records:
        if outcome == "OK":
            if sent < drain_began < answered:
                result.in_flight_ok += 1
            else:
                result.ok_otherwise += 1
        elif outcome.startswith("UNAVAILABLE") and DRAIN_REFUSAL in outcome:
            result.refused_by_drain += 1
        elif outcome.startswith("UNAVAILABLE") and sent > drain_began:
            result.gone_after_drain += 1
        elif outcome.startswith("CANCELLED") and sent > drain_began:
            # gRPC's own shutdown (after the drain) cancels RPCs that arrive while it closes: not started, so not
            # lost, but not the retryable UNAVAILABLE either; reported (docs/deploy.md).
            result.cancelled_after_drain += 1
        else:
            result.lost.append(
                f"{outcome} (sent {sent - drain_began:+.3f} s, answered {answered - drain_began:+.3f} s)"
            )
    return result


def stop_under_load(
    podman: Podman, address: str, pod: PodSettings, workers: int, per_worker: int
) -> tuple[float, LoadResult]:
    """Keep ``workers`` requests in flight, ``podman stop``, then classify every request (see ``classify``).

    A worker stops sending at its first error: a bounded load of at most ``workers * per_worker`` requests.
    """
    import grpc

    from nmtserve.loadtest.client import TranslatorClient

    text = " ".join(SENTENCES)
    records: list[tuple[float, float, str]] = []
    lock = threading.Lock()
    go = threading.Barrier(workers + 1)

    def worker() -> None:
        with TranslatorClient(address, timeout=120) as client:
            go.wait()
            for _ in range(per_worker):
                sent = time.time()
                try:
                    client.translate_texts([text] * 8)
                    outcome = "OK"
                except grpc.RpcError as error:
                    outcome = f"{error.code().name}: {error.details()}"
                with lock:
                    records.append((sent, time.time(), outcome))
                if outcome != "OK":
                    return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    go.wait()
    time.sleep(1.5)  # the workers' first requests are in the server's batches
    stopped = time.monotonic()
    podman("stop", "--time", str(pod.grace_period_s), CONTAINER, timeout=pod.grace_period_s + 30)
    stop_s = time.monotonic() - stopped
    for thread in threads:
        thread.join(timeout=180)
    drain_began = server_log_time(podman, "shutdown requested")
    check(drain_began is not None, "the container's log has no 'shutdown requested' line: SIGTERM never arrived")
    return stop_s, classify(records, drain_began)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ImageTestError(message)


def cpu_quota_seen(podman: Podman, tag: str, report: dict) -> None:
    """Under ``--cpus 1`` (a CFS quota, which leaves the affinity mask at every host core) the engine sizes its
    thread pool to one CPU: ``threads = 0`` must not mean all the host's cores in a CPU-limited container."""
    probe = "from nmtserve.engine.cpu_budget import usable_cpus; print(usable_cpus())"
    seen = podman("run", "--rm", "--cpus", "1", "--entrypoint", "python", tag, "-c", probe).stdout.strip()
    report["usable_cpus_under_cpus_1"] = seen
    check(seen == "1", f"under --cpus 1 the engine would use {seen} threads, not 1")
    say("under --cpus 1 the engine sizes its pool to 1 CPU")


def test_cpu(podman: Podman, tag: str, out: Path, report: dict, workers: int, per_worker: int) -> None:
    from nmtserve.loadtest.client import TranslatorClient
    from nmtserve.server.app import HEALTH_SERVICES

    cpu_quota_seen(podman, tag, report)
    pod = pod_settings("cpu")
    beam_size = tomllib.loads(pod.config.read_text())["beam_size"]
    started = time.monotonic()
    run_hardened(podman, tag, pod)
    try:
        address, metrics = published(podman, 50051), published(podman, 9090)
        with TranslatorClient(address, timeout=60) as client:
            wait_serving(podman, client, timeout=180)
            report["start_to_serving_s"] = round(time.monotonic() - started, 2)
            report["process_start_to_serving_logged_s"] = logged_start_to_serving(podman)
            say(
                f"SERVING {report['start_to_serving_s']} s after podman run, on {address} (the server logged"
                f" serving {report['process_start_to_serving_logged_s']} s after the container started)"
            )
            for service in HEALTH_SERVICES:
                status = client.health(service)
                check(status == "SERVING", f"health of {service or 'the server'!r} is {status}, not SERVING")
            served = client.translate_texts(list(SENTENCES))
        expected = host_translations(SENTENCES, beam_size)
        check(served == expected, f"the container translates {served!r}, the host's nmtserve translate {expected!r}")
        report["translation"] = {"source": SENTENCES[0], "target": served[0]}
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
            text = response.read().decode()
        check('device="cpu"' in text and "nmtserve_model_info{" in text, "/metrics has no nmtserve_model_info on cpu")
        requests = re.search(r'^nmtserve_requests_total\{[^}]*code="OK"[^}]*\} (\S+)', text, re.M)
        check(requests is not None and float(requests.group(1)) >= 1, "/metrics counts no OK request")
        say(f"translation equal to the host's, /metrics scraped from {metrics}")

        stop_s, load = stop_under_load(podman, address, pod, workers, per_worker)
        state = container_state(podman)
        report["stop"] = {
            "seconds": round(stop_s, 2),
            "grace_period_s": pod.grace_period_s,
            "exit_code": state["ExitCode"],
            "in_flight_ok": load.in_flight_ok,
            "ok_otherwise": load.ok_otherwise,
            "refused_by_drain": load.refused_by_drain,
            "gone_after_drain": load.gone_after_drain,
            "cancelled_after_drain": load.cancelled_after_drain,
            "lost": load.lost,
        }
        say(f"podman stop: {json.dumps(report['stop'])}")
        check(load.in_flight_ok >= 1, "no request was in flight when the drain began: the load proves nothing")
        check(not load.lost, f"{len(load.lost)} requests lost in the stop: {load.lost[:3]}")
        check(state["ExitCode"] == 0, f"the container exited {state['ExitCode']}, not 0")
        check(
            stop_s < pod.grace_period_s, f"podman stop took {stop_s:.1f} s, the grace period is {pod.grace_period_s} s"
        )
        check('"message": "draining"' in container_log(podman), "the container's log has no drain line")
    finally:
        save_logs(podman, out)
        podman("rm", "--force", "--ignore", CONTAINER, check=False)


def test_gpu(podman: Podman, tag: str, out: Path, report: dict) -> None:
    from nmtserve.loadtest.client import TranslatorClient

    probe = "import onnxruntime as o; print(' '.join(o.get_available_providers()))"
    listed = podman("run", "--rm", "--entrypoint", "python", tag, "-c", probe).stdout.split()
    report["providers"] = listed
    check("CUDAExecutionProvider" in listed, f"the GPU image's onnxruntime lists {listed}, no CUDAExecutionProvider")
    say(f"onnxruntime providers in the image: {' '.join(listed)}")
    pod = pod_settings("gpu")
    run_hardened(podman, tag, pod)  # no --device: no GPU reaches the container
    try:
        address = published(podman, 50051)
        deadline, errors = time.monotonic() + 180, []
        while time.monotonic() < deadline and not any("the model failed to load" in line for line in errors):
            time.sleep(1)
            errors = [line for line in container_log(podman).splitlines() if '"level": "error"' in line]
        check(
            any("the model failed to load" in line and "NOT_SERVING" in line for line in errors),
            f"the GPU image without a GPU did not log that the model failed to load within 180 s: {errors[:2]}",
        )
        report["no_gpu_log_lines"] = errors
        with TranslatorClient(address, timeout=10) as client:
            status = client.health("")
        check(status == "NOT_SERVING", f"without a GPU the health is {status}, not NOT_SERVING")
        say(f"without a GPU: health NOT_SERVING, log: {errors[0][:400]}")
    finally:
        save_logs(podman, out)
        podman("rm", "--force", "--ignore", CONTAINER, check=False)


def container_log(podman: Podman) -> str:
    logs = podman("logs", CONTAINER, check=False)
    return logs.stdout + logs.stderr


def save_logs(podman: Podman, out: Path) -> None:
    (out / "container.log").write_text(container_log(podman))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=("cpu", "gpu"))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "image-test")
    parser.add_argument("--tag", help="image tag (default nmtserve:<version>-<target>)")
    parser.add_argument("--rebuild-base", action="store_true", help="remake the base image even if it exists")
    parser.add_argument("--workers", type=int, default=6, help="concurrent requests during podman stop")
    parser.add_argument("--per-worker", type=int, default=20, help="at most this many requests per worker")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    out = args.out / args.target
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"nmtserve:{version('nmtserve')}-{args.target}"
    podman = Podman(out / "containers.conf")
    report: dict = {"target": args.target, "tag": tag}
    try:
        preflight(podman)
        base = base_image_name()
        base_s = make_base(podman, base, args.rebuild_base)
        report["base"] = {
            "image": base,
            "seconds": None if base_s is None else round(base_s, 1),
            "reused": base_s is None,
        }
        say(f"base {base}: " + ("reused" if base_s is None else f"made in {base_s:.0f} s"))
        report["build_s"] = round(build(podman, args.target, tag), 1)
        report["size_bytes"] = image_size(podman, tag)
        say(f"built {tag} in {report['build_s']} s, {report['size_bytes'] / 1e6:.0f} MB")
        ca_bundle_kept_out(podman, tag, base)
        if args.target == "cpu":
            test_cpu(podman, tag, out, report, args.workers, args.per_worker)
        else:
            test_gpu(podman, tag, out, report)
    except ImageTestError as error:
        report["error"] = str(error)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"image-test: FAILED: {error}", file=sys.stderr)
        return 1
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"passed; report in {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
