"""The serving image (deploy/docker/): its Dockerfile's contract, its pinned locks, and a smoke test of the CPU lock.

The image is built and run for real by ``make image-test`` (deploy/tools/image_test.py, with podman; a step of
.ci/run), not by pytest, which would spend a minute and a half on it. What is tested here, without a container engine:

* the Dockerfile, parsed by BuildKit's own parser: targets, base image, user, ports, stop signal, entrypoint and the
  environment the entrypoint runs with;
* the locks: exact pins with hashes, in step with pyproject.toml and with the onnxruntime the test suite ran;
* the smoke test: the CPU lock installed into a fresh virtual environment exactly as the Dockerfile installs it
  (``--require-hashes --no-deps --only-binary=:all:``, no machine-specific pip configuration), the project wheel
  built from the files the Dockerfile COPYs, then the server started the way the entrypoint starts it, with the
  image's environment, and checked: health, a translation, /metrics, the compose health check, the SIGTERM drain.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
import urllib.request
import warnings
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from deploy_support import DEPLOY, ROOT, ToolUnavailable, image_lock, require
from deploy_support import dockerfile_model as dm
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from nmtserve.loadtest.serverproc import ServerProcess
from nmtserve.server.app import HEALTH_SERVICES
from nmtserve.server.config import read_env
from nmtserve.server.service import SERVICE_NAME

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
LOCKS = {variant: DEPLOY / "docker" / f"requirements-{variant}.lock" for variant in ("cpu", "gpu", "build")}
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
FINAL_TARGETS = ("cpu", "gpu")
# What must never be in the serving image: the training stack and build toolchains.
FORBIDDEN_PACKAGES = {"torch", "torchvision", "onnxscript", "ctranslate2", "sacrebleu"}
COMPILERS = ("gcc", "g++", "clang", "build-essential", "cmake", "nvcc", "cuda-toolkit", "-devel")


def free_port() -> int:
    """A port nothing listens on now (the image's HTTP port 8080 may be taken on a shared machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def image() -> dm.DockerfileModel:
    return dm.parse(DOCKERFILE)


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a ``--require-hashes`` requirements file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        name, _, version = spec.partition("==")
        assert version, f"{path.name}: {spec} is not pinned with =="
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=sha256:")]
        assert hashes and all(len(h) == 64 for h in hashes), f"{path.name}: {spec} has no sha256 hash"
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


# ---------------------------------------------------------------------------------------------------------------------
# The Dockerfile


def test_dockerfile_targets_base_and_python_match_the_lock(image: dm.DockerfileModel) -> None:
    lock = image_lock
    assert set(FINAL_TARGETS) <= set(image.stages), "the image needs a gpu and a cpu target"
    assert image.default_target.name == "gpu", "a plain `docker build` must give the GPU image"
    base = image.args["PYTHON_IMAGE"]
    assert base.startswith(f"python:{lock.PYTHON_VERSION}-slim-"), (base, lock.PYTHON_VERSION)
    assert "bookworm" in base, "the locks target glibc 2.36 wheels: Debian bookworm"
    for target in FINAL_TARGETS:
        stage = image.stages[target]
        assert stage.root_image == base, f"{target} must build on the slim base, not on {stage.root_image}"
        # The venvs are copied from builder stages: the final stages themselves install nothing.
        assert not [c.original for c in stage.all("RUN") if "pip install" in c.original or "apt-get" in c.original]
    for command in (c for stage in image.stages.values() for c in stage.own("COPY")):
        for flag in command.flags:
            if flag.startswith("--from="):
                assert flag.removeprefix("--from=") in image.stages, command.original


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_image_runs_the_server_unprivileged_with_the_drain_contract(image, target: str) -> None:
    stage = image.stages[target]
    uid, _, gid = stage.user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER (Kubernetes' runAsNonRoot can verify it)"
    assert gid.isdigit() and int(gid) != 0
    assert stage.exec_form("ENTRYPOINT") == ["nmtserve", "serve"]
    assert stage.stopsignal == "SIGTERM", "SIGTERM is what starts the server's drain"
    env = stage.env
    settings, unknown = read_env(env)  # the server's own parser: every NMTSERVE_* variable must be a valid setting
    assert not unknown
    assert settings["host"] == "0.0.0.0" and settings["metrics_host"] == "0.0.0.0", "reachable from outside"
    assert stage.exposed == {settings["port"], settings["metrics_port"], settings["http_port"]}
    assert settings["http_port"] == 8080, "HTTP beside gRPC (the Kubernetes Services publish it)"
    assert settings["log_format"] == "json"
    assert settings["device"] == ("cuda" if target == "gpu" else "cpu")
    assert env["PATH"].split(":")[0] == "/opt/nmtserve/bin"
    assert "NMTSERVE_MODEL" not in env, "the baked-in demo model is the default; NMTSERVE_MODEL is for mounts"


def test_dockerfile_has_no_torch_or_compilers_and_builds_from_the_locks(image: dm.DockerfileModel) -> None:
    runs = " ".join(c.original for stage in image.stages.values() for c in stage.own("RUN"))
    for word in COMPILERS:
        assert word not in runs, f"{word} in a RUN instruction"
    for variant in ("cpu", "gpu"):
        stage = image.stages[f"venv-{variant}"]
        copies = dm.context_copies(stage)
        assert (f"deploy/docker/requirements-{variant}.lock", "/tmp/requirements.lock") in copies
        install = " ".join(c.original for c in stage.own("RUN"))
        assert "--require-hashes --no-deps --only-binary=:all: -r /tmp/requirements.lock" in install
        assert "pip check" in install
    gpu_runs = " ".join(c.original for c in image.stages["gpu"].own("RUN"))
    assert "ldconfig" in gpu_runs, "the CUDA/cuDNN wheels' libraries must be known to the dynamic loader"


def test_context_copies_exist_and_are_not_ignored(image: dm.DockerfileModel) -> None:
    patterns = dm.ignore_patterns(DOCKERIGNORE)
    assert not [p for p in patterns if p.startswith("!")], "the tests' .dockerignore matcher has no ! exceptions"
    for stage in image.stages.values():
        for source, _ in dm.context_copies(stage):
            assert list(ROOT.glob(source.rstrip("/"))), f"COPY {source}: not in the repository"
            assert not dm.ignored(source.rstrip("/"), patterns), f"COPY {source} is excluded by the .dockerignore"
    # Every package of pyproject.toml must reach the wheel stage, or the image's nmtserve is incomplete.
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    copied = {source.strip("/") for source, _ in dm.context_copies(image.stages["wheel"])}
    assert set(package_dirs.values()) <= copied, set(package_dirs.values()) - copied
    assert dm.ignored("model/demo/model.safetensors", patterns), "the PyTorch weights stay out of the image"
    assert not dm.ignored("export/demo/fp32/encoder.onnx", patterns), "the demo ONNX export is baked in"


# ---------------------------------------------------------------------------------------------------------------------
# The locks


def test_locks_are_exact_hashed_and_follow_pyproject() -> None:
    lock = image_lock
    for variant, path in LOCKS.items():
        entries = read_lock(path)
        header = next(line for line in path.read_text().splitlines() if line.startswith("# requirements: "))
        wanted = lock.project_requirements(variant)
        assert header == "# requirements: " + "; ".join(wanted), (
            f"{path.name} was locked from other requirements than pyproject.toml's: run python deploy/docker/lock.py"
        )
        for text in wanted:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            assert name in entries, f"{path.name} lacks {name}"
            assert requirement.specifier.contains(entries[name][0], prereleases=True), (text, entries[name][0])
        assert not FORBIDDEN_PACKAGES & set(entries), FORBIDDEN_PACKAGES & set(entries)


def test_gpu_lock_is_the_cpu_lock_plus_cuda_13_and_cudnn_9() -> None:
    cpu, gpu = read_lock(LOCKS["cpu"]), read_lock(LOCKS["gpu"])
    assert gpu["onnxruntime-gpu"][0] == cpu["onnxruntime"][0], "the same onnxruntime release in both images"
    installed = metadata.version("onnxruntime")
    if cpu["onnxruntime"][0] != installed:  # a new onnxruntime release reached the dev venv: not an error, a cue
        warnings.warn(
            f"the image locks onnxruntime {cpu['onnxruntime'][0]} but the tests ran {installed}: "
            "regenerate the locks (python deploy/docker/lock.py) once the suite passes with it",
            stacklevel=1,
        )
    assert "onnxruntime" not in gpu and "onnxruntime-gpu" not in cpu, "never both onnxruntime builds in one env"
    for name in set(cpu) & set(gpu):
        assert cpu[name][0] == gpu[name][0], f"{name}: {cpu[name][0]} (cpu) vs {gpu[name][0]} (gpu)"
    assert set(cpu) - {"onnxruntime"} <= set(gpu)
    assert gpu["nvidia-cuda-runtime"][0].split(".")[0] == "13", "onnxruntime-gpu 1.31 is built for CUDA 13"
    assert gpu["nvidia-cudnn-cu13"][0].split(".")[0] == "9", "and cuDNN 9"
    assert {"nvidia-cublas", "nvidia-cufft", "nvidia-curand"} <= set(gpu)


# ---------------------------------------------------------------------------------------------------------------------
# The smoke test


def clean_pip_env() -> dict[str, str]:
    """What pip sees inside the image build: PyPI, no machine config (local wheel folders, version caps)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def python_for_the_image(version: str) -> str:
    """An interpreter of the image's Python version (the locks hold cp311 wheels): this one, or pythonX.Y on PATH."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        raise ToolUnavailable(f"no Python {version} (the image's) to install its lock with")
    return found


@pytest.mark.slow
def test_cpu_lock_installs_in_a_fresh_venv_and_serves_as_the_entrypoint(image, tmp_path: Path) -> None:
    from nmtserve.loadtest.client import TranslatorClient

    python = require(lambda: python_for_the_image(image_lock.PYTHON_VERSION), f"Python {image_lock.PYTHON_VERSION}")
    # 1. The wheel, built from exactly the files the Dockerfile's wheel stage COPYs (the .dockerignore applied).
    source = tmp_path / "src"
    copied = dm.copy_context(ROOT, image.stages["wheel"], dm.ignore_patterns(DOCKERIGNORE), source)
    assert copied and (source / "pyproject.toml").is_file()
    (source / "model" / "demo").mkdir(exist_ok=True)  # as the wheel stage's RUN does (the checkpoint stays out)
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, env=clean_pip_env(), timeout=300)
    (wheel,) = dist.glob("nmtserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nmtserve/export/demo/fp32/manifest.json" in names, "the demo model must be baked into the image"
    assert not [n for n in names if n.startswith("nmtserve/model/demo/")], "no PyTorch weights in the image"

    # 2. One fresh virtual environment with exactly the CPU lock, installed as the Dockerfile installs it.
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    install = [*pip, "install", "--quiet", "--require-hashes", "--no-deps", "--only-binary=:all:"]
    env = clean_pip_env()
    subprocess.run([*install, "-r", str(LOCKS["cpu"])], check=True, env=env, timeout=600)
    subprocess.run([*pip, "install", "--quiet", "--no-deps", str(wheel)], check=True, env=env, timeout=300)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, env=env, timeout=120)
    assert check.returncode == 0, f"the lock is incomplete or inconsistent: {check.stdout}{check.stderr}"
    listed = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True, env=env, check=True)
    installed = {canonicalize_name(p["name"]) for p in json.loads(listed.stdout)}
    assert not FORBIDDEN_PACKAGES & installed
    assert installed - {"pip", "setuptools", "nmtserve"} == set(read_lock(LOCKS["cpu"])), "exactly the lock"

    # 3. The entrypoint, with the image's environment. Only the listen addresses differ: loopback and free ports
    #    instead of 0.0.0.0:50051/9090, which a shared test machine may have taken.
    stage = image.stages["cpu"]
    entry = stage.exec_form("ENTRYPOINT") + stage.exec_form("CMD")
    image_env = {k: v for k, v in stage.env.items() if k != "PATH"}
    run_env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        **image_env,
        "NMTSERVE_HOST": "127.0.0.1",
        "NMTSERVE_METRICS_HOST": "127.0.0.1",
        "NMTSERVE_PORT": "0",
        "NMTSERVE_METRICS_PORT": "0",
        "NMTSERVE_HTTP_PORT": str(free_port()),
        "NMTSERVE_THREADS": "1",
    }
    server = ServerProcess(
        argv=[str(venv / "bin" / entry[0]), *entry[1:]],
        env=run_env,
        cwd=tmp_path,
        wait_serving=False,
        fail_on_error=True,
    ).start()
    try:
        loading = server.wait_for("loading model", timeout=60)
        assert Path(loading["model"]).is_relative_to(venv), "the baked-in demo model, from the installed package"
        server.wait_for("serving", timeout=180)
        address = server.address
        with TranslatorClient(address, timeout=60) as client:
            for service in HEALTH_SERVICES:
                assert client.health(service) == "SERVING"
            (german,) = client.translate_texts(["The package contains the documentation."])
            assert german.strip() and german != "The package contains the documentation."
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            metrics = response.read().decode()
        assert 'device="cpu"' in metrics and "nmtserve_model_info{" in metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{run_env['NMTSERVE_HTTP_PORT']}/health", timeout=10) as answer:
            assert answer.status == 200, "the image serves HTTP beside gRPC"
        # The compose stack's health check, run with the image's python against this server.
        health = yaml.safe_load(COMPOSE.read_text())["services"]["nmtserve"]["healthcheck"]["test"]
        assert health[:3] == ["CMD", "python", "-c"] and SERVICE_NAME in health[3]
        code = health[3].replace("127.0.0.1:50051", address)
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", code], env=run_env, timeout=60)
        assert probe.returncode == 0, "the compose health check does not pass against a serving server"
        # SIGTERM: the drain, then exit 0 well within the grace period the deployment gives.
        assert server.stop(timeout=40) == 0
        assert server.wait_for("draining", timeout=1)
    finally:
        server.kill()
