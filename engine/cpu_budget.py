"""How many CPUs this process may really use: its affinity mask, and the container's CPU quota.

Why the quota matters: in a Kubernetes pod with ``limits.cpu: 2`` on a 32-core node, the affinity mask still
lists all 32 cores, because a CPU limit is a CFS quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1),
not a cpuset. An onnxruntime pool sized from the mask then runs 8 threads on 2 CPUs' worth of time, and the
kernel throttles the whole process for the rest of each period. The quota is rounded up: 1.5 CPUs can keep
two threads busy part of the time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota(quota_text: str | None, period_text: str | None) -> float | None:
    """CPUs of a quota and period in microseconds; None for "max" / -1 (no limit) or an unreadable file."""
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup path per hierarchy: "" for cgroup v2, the controller list (e.g. "cpu,cpuacct") for v1."""
    paths = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            paths[fields[1]] = fields[2]
    return paths


def _ancestry(root: Path, path: str) -> list[Path]:
    """``root/path`` and each parent up to ``root``: a quota set on an ancestor binds this cgroup too."""
    directory = root / path.lstrip("/")
    chain = [directory]
    while directory != root and root in directory.parents:
        directory = directory.parent
        chain.append(directory)
    return chain


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, in CPUs (e.g. 2.0); None: no quota.

    cgroup v2 writes ``cpu.max`` as ``"<quota> <period>"`` or ``"max <period>"``. v1 has ``cpu.cfs_quota_us``
    (-1: no limit) and ``cpu.cfs_period_us`` in the ``cpu`` (or ``cpu,cpuacct``) hierarchy. Inside a container
    the process's own cgroup is usually the namespace's root, "/"."""
    own = _own_cgroups(proc_cgroup)
    limits: list[float] = []
    if (root / "cgroup.controllers").exists():  # the unified (v2) hierarchy is mounted at root
        for directory in _ancestry(root, own.get("", "/")):
            fields = (_read(directory / "cpu.max") or "").split()
            if len(fields) == 2 and (limit := _quota(*fields)) is not None:
                limits.append(limit)
    else:
        controller = next((name for name in own if "cpu" in name.split(",")), "cpu")
        mount = next((root / name for name in (controller, "cpu", "cpu,cpuacct") if (root / name).is_dir()), None)
        for directory in _ancestry(mount, own.get(controller, "/")) if mount else []:
            limit = _quota(_read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us"))
            if limit is not None:
                limits.append(limit)
    return min(limits, default=None)


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process can keep busy: the affinity mask's size, lowered to the cgroup quota (rounded up)."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)
