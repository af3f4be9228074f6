"""The CPU budget read from cgroup files laid out as the kernel writes them (v2 and v1), and its use by the engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nmtserve.engine.cpu_budget import cgroup_cpu_limit, usable_cpus
from nmtserve.engine.runtime import RuntimeConfig


def v2_tree(root: Path, own: str, limits: dict[str, str]) -> Path:
    """A unified hierarchy at ``root`` with ``cpu.max`` contents per cgroup path; returns a /proc/self/cgroup."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for path, text in limits.items():
        directory = root / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(text + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


def test_v2_quota_of_the_process_cgroup(tmp_path: Path) -> None:
    proc = v2_tree(tmp_path / "cg", "/kubepods/pod1/ctr", {"/kubepods/pod1/ctr": "150000 100000"})
    assert cgroup_cpu_limit(tmp_path / "cg", proc) == pytest.approx(1.5)
    assert usable_cpus(tmp_path / "cg", proc) == min(2, len(os.sched_getaffinity(0)))  # 1.5 CPUs: two threads


def test_v2_tightest_quota_of_the_ancestors_and_no_limit(tmp_path: Path) -> None:
    limits = {"/": "max 100000", "/kubepods": "400000 100000", "/kubepods/pod1": "100000 100000"}
    proc = v2_tree(tmp_path / "cg", "/kubepods/pod1/ctr", limits | {"/kubepods/pod1/ctr": "max 100000"})
    assert cgroup_cpu_limit(tmp_path / "cg", proc) == pytest.approx(1.0)
    assert usable_cpus(tmp_path / "cg", proc) == 1
    unlimited = v2_tree(tmp_path / "free", "/", {"/": "max 100000"})
    assert cgroup_cpu_limit(tmp_path / "free", unlimited) is None
    assert usable_cpus(tmp_path / "free", unlimited) == len(os.sched_getaffinity(0))


def test_v1_quota_in_a_container_whose_cgroup_path_is_the_hosts(tmp_path: Path) -> None:
    """Without a cgroup namespace /proc/self/cgroup names the host's path, but the mount is the container's own
    cgroup: the quota at the mount's root still counts."""
    mount = tmp_path / "cg" / "cpu,cpuacct"
    mount.mkdir(parents=True)
    (mount / "cpu.cfs_quota_us").write_text("200000\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("12:memory:/kubepods/pod1/ctr\n3:cpu,cpuacct:/kubepods/pod1/ctr\n0::/\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) == pytest.approx(2.0)
    (mount / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) is None


def test_unreadable_or_missing_files_mean_no_limit(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n")
    assert cgroup_cpu_limit(tmp_path / "nothing", proc) is None
    broken = v2_tree(tmp_path / "cg", "/", {"/": "garbage"})
    assert cgroup_cpu_limit(tmp_path / "cg", broken) is None


def test_the_engine_sizes_its_pool_from_the_budget() -> None:
    assert RuntimeConfig(threads=3).intra_op_threads() == 3
    assert RuntimeConfig(threads=None).intra_op_threads() == min(8, usable_cpus())
