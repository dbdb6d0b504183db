"""Usable CPUs (affinity and cgroup CPU limits) and what follows them: decode workers, torch threads."""

from __future__ import annotations

import os

import pytest
import torch

import app.engine
import app.service
from app.cpus import cgroup_cpu_limit, usable_cpus
from app.engine import configure_torch_threads
from app.service import decode_workers


def fake_cgroup(tmp_path, proc: str, files: dict[str, str]):
    """A /sys/fs/cgroup tree (files relative to it) and a /proc/self/cgroup that points into it."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(proc + "\n")
    return root, self_cgroup


@pytest.fixture
def affinity(monkeypatch):
    """Sets the CPUs the process may run on, as taskset or a cpuset would."""

    def set_cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    set_cpus(64)
    return set_cpus


def test_cgroup_v2_container_quota_rounds_up(tmp_path, affinity):
    # docker run --cpus 1.5 / a pod's limits.cpu: 1500m, on a 64-core node
    root, proc = fake_cgroup(tmp_path, "0::/", {"cpu.max": "150000 100000"})
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert usable_cpus(root, proc) == 2


def test_cgroup_v2_without_limit_leaves_the_affinity(tmp_path, affinity):
    root, proc = fake_cgroup(tmp_path, "0::/", {"cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(root, proc) == 64


def test_cgroup_v2_tightest_limit_up_the_hierarchy(tmp_path, affinity):
    # no cgroup namespace: the process's own path, under a pod-level limit
    root, proc = fake_cgroup(
        tmp_path,
        "0::/kubepods.slice/pod1/ctr",
        {
            "kubepods.slice/cpu.max": "max 100000",
            "kubepods.slice/pod1/cpu.max": "300000 100000",
            "kubepods.slice/pod1/ctr/cpu.max": "max 100000",
        },
    )
    assert cgroup_cpu_limit(root, proc) == 3
    assert usable_cpus(root, proc) == 3


def test_cgroup_v1_cfs_quota(tmp_path, affinity):
    # Docker on cgroup v1 mounts the container's own cpu cgroup at the controller's root
    root, proc = fake_cgroup(
        tmp_path,
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/",
        {"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert usable_cpus(root, proc) == 1  # never 0


def test_cgroup_v1_unlimited(tmp_path, affinity):
    root, proc = fake_cgroup(
        tmp_path,
        "4:cpu,cpuacct:/",
        {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(root, proc) == 64


def test_affinity_below_the_quota_wins(tmp_path, affinity):
    affinity(2)  # taskset -c 0,1 inside a container allowed 4 CPUs
    root, proc = fake_cgroup(tmp_path, "0::/", {"cpu.max": "400000 100000"})
    assert usable_cpus(root, proc) == 2


def test_no_cgroup_files_at_all(tmp_path, affinity):
    affinity(6)
    assert usable_cpus(tmp_path / "nothing", tmp_path / "no_self_cgroup") == 6


def test_this_machine():
    n = usable_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_decode_workers_follow_the_usable_cpus(monkeypatch, cpus, workers):
    monkeypatch.setattr(app.service, "usable_cpus", lambda: cpus)
    assert decode_workers(0, torch.device("cpu")) == workers
    assert decode_workers(3, torch.device("cpu")) == 3  # a setting is taken as it is
    assert decode_workers(0, torch.device("cuda")) == 1


def test_torch_threads_capped_by_the_usable_cpus(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(app.engine, "usable_cpus", lambda: 1)
        configure_torch_threads(0)
        assert torch.get_num_threads() == 1
        configure_torch_threads(2)  # an explicit CHARRNN_TORCH_THREADS is taken as it is
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
