"""The CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

`os.cpu_count()` counts the host's CPUs; under a systemd `CPUQuota=` or a container's
`--cpus` fewer are ours, and threads beyond the quota only queue behind each other. The
quota is rounded up (1.5 CPUs: 2 threads), as the JVM and Go's runtime do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus() -> int:
    """Return how many CPUs this process may keep busy: at least 1."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_quota(Path("/proc/self/cgroup"), CGROUP_ROOT)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_quota(membership: Path, root: Path) -> float | None:
    """Return the CPU quota (in CPUs) of the cgroup in `membership` (a /proc/PID/cgroup)
    and its ancestors, the tightest of them, for cgroup v2 and v1; None when unlimited or
    unreadable."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if number == "0" and controllers == "":  # v2: one unified hierarchy
            quotas += _along(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            for mount in (root / "cpu", root / "cpu,cpuacct"):
                if mount.is_dir():
                    quotas += _along(mount, path, _v1_quota)
                    break
    return min(quotas, default=None)


def _along(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """Return the quotas `read` finds in the cgroup at `path` under `mount` and in each of
    its ancestors up to the mount."""
    found = []
    directory = mount / path.lstrip("/")
    while True:
        quota = read(directory)
        if quota is not None:
            found.append(quota)
        if directory == mount or mount not in directory.parents:
            return found
        directory = directory.parent


def _v2_quota(directory: Path) -> float | None:
    """`cpu.max` holds "QUOTA PERIOD" in microseconds, or "max PERIOD"."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    """`cpu.cfs_quota_us` is -1 when unlimited."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
