"""How many CPUs this process may use: its affinity and its cgroup's CPU limit, not the node's cores."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """The CPUs this process may run on (sched_getaffinity: taskset, cpusets, Kubernetes' static CPU
    manager), capped by its cgroup's CPU quota rounded up (a container's `cpus: 1.5` or a pod's
    `limits.cpu: 1500m` -> 2). A container sees every core of its node in os.cpu_count()."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_limit(cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None if unlimited.

    cgroup v2: `cpu.max` holds "QUOTA PERIOD" or "max PERIOD". cgroup v1: `cpu.cfs_quota_us` (-1 when
    unlimited) and `cpu.cfs_period_us` in the cpu controller's hierarchy. Inside a container (its own
    cgroup namespace) the process's cgroup is "/", the files sit at the root of the mount."""
    limits = []
    for directory in _cgroup_dirs(cgroup_root, proc_self_cgroup):
        v2 = _read(directory / "cpu.max")
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota != "max":
                limits.append(_ratio(quota, period))
            continue
        quota_us, period_us = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
        if quota_us is not None and period_us is not None and not quota_us.startswith("-"):
            limits.append(_ratio(quota_us, period_us))
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _cgroup_dirs(root: Path, proc_self_cgroup: Path) -> list[Path]:
    """The directories that may hold this process's CPU limits, from its own cgroup up to the root."""
    text = _read(proc_self_cgroup) or ""
    bases = []
    for line in text.splitlines():  # "ID:CONTROLLERS:PATH"; v2 is "0::PATH"
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            bases.append((root, path))
        elif "cpu" in controllers.split(","):
            mount = next((root / d for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / d).is_dir()), root)
            bases.append((mount, path))
    if not bases:
        bases = [(root, "/"), (root / "cpu", "/"), (root / "cpu,cpuacct", "/")]
    dirs: list[Path] = []
    for mount, path in bases:
        parts = [p for p in path.strip("/").split("/") if p and p != ".."]
        for depth in range(len(parts), -1, -1):
            directory = mount.joinpath(*parts[:depth])
            if directory not in dirs:
                dirs.append(directory)
    return dirs


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
