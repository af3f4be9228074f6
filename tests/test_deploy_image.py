"""deploy/tools/image_test.py, the podman build-and-run test of the serving image (``make image-test``).

The image test itself builds an image (about a minute of pip downloads) and is run by ``make image-test`` and
``.ci/run``, not by pytest. What is checked here, in a second: that it fails with one line saying why on a machine
where podman cannot run (never a silent skip), and that the container settings it runs with are the manifests'.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from deploy_support import DEPLOY, ROOT, image_test

SCRIPT = DEPLOY / "tools" / "image_test.py"


def test_a_machine_without_podman_fails_with_one_line_that_says_why(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "cpu", "--out", str(tmp_path / "out")],
        env={"PATH": str(empty), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("image-test: FAILED: podman cannot run here: podman, runc, mmdebstrap, newuidmap")
    assert "apt-get install podman runc mmdebstrap uidmap" in lines[0]


def test_the_container_runs_with_the_manifests_limits_grace_period_and_config() -> None:
    base = yaml.safe_load((DEPLOY / "k8s" / "base" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    (container,) = base["containers"]
    pod = image_test.pod_settings("cpu")
    assert pod.grace_period_s == base["terminationGracePeriodSeconds"]
    assert pod.memory_limit == container["resources"]["limits"]["memory"].replace("Gi", "g")
    (tmp,) = [v for v in base["volumes"] if v["name"] == "tmp"]
    assert pod.tmp_size == tmp["emptyDir"]["sizeLimit"].replace("Mi", "m")
    assert pod.config == DEPLOY / "k8s" / "overlays" / "cpu" / "config.toml"
    # The security context that the podman flags stand for.
    context = container["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert base["securityContext"]["runAsUser"] == 10001 and base["securityContext"]["runAsGroup"] == 10001
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/nmtserve"]["readOnly"] and "/tmp" in mounts


def test_the_base_image_is_the_dockerfiles_and_the_containers_conf_keeps_to_the_hosts_limits() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert image_test.base_image_name() == "docker.io/library/python:3.11-slim-bookworm"
    conf = tomllib.loads(image_test.containers_conf())
    assert conf["engine"] == {"runtime": "runc", "cgroup_manager": "cgroupfs", "events_logger": "file"}
    hard = {
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[1],
    }
    for limit in conf["containers"]["default_ulimits"]:
        name, _, values = limit.partition("=")
        assert all(hard[name] == resource.RLIM_INFINITY or int(v) <= hard[name] for v in values.split(":")), limit


def test_the_stop_counts_a_request_as_lost_unless_it_was_answered_or_never_started() -> None:
    drain = 1000.0
    refusal = "UNAVAILABLE: the server is draining (shutting down); retry on another replica"
    gone = "UNAVAILABLE: failed to connect to all addresses; last error: Connection refused"
    records = [
        (998.0, 999.0, "OK"),  # answered before the drain
        (999.0, 1001.5, "OK"),  # in flight at SIGTERM, answered
        (999.9, 1000.1, refusal),  # sent just before, arrived after: refused on arrival
        (1000.2, 1000.3, gone),  # after the drain: no server to connect to
        (1000.4, 1000.41, "CANCELLED: CANCELLED"),  # after the drain: gRPC's shutdown
        (999.5, 1000.5, "CANCELLED: CANCELLED"),  # in flight and cancelled: lost
        (999.6, 1000.6, gone),  # in flight and cut off: lost
    ]
    load = image_test.classify(records, drain)
    assert (load.ok_otherwise, load.in_flight_ok, load.refused_by_drain) == (1, 1, 1)
    assert (load.gone_after_drain, load.cancelled_after_drain) == (1, 1)
    assert len(load.lost) == 2
    assert load.lost[0].startswith("CANCELLED") and "sent -0.500 s" in load.lost[0]
    assert load.lost[1].startswith("UNAVAILABLE: failed to connect")
