"""The CPUs a backup compresses on follow the cgroup's quota, v2 and v1, not the host's count."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.system.cpus import available_cpus, cgroup_quota


def cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(membership)
    return proc, root


def test_v2_takes_the_tightest_quota_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    proc, root = cgroup(
        tmp_path,
        "0::/system.slice/volkeep.service\n",
        {
            "cpu.max": "max 100000\n",
            "system.slice/cpu.max": "300000 100000\n",
            "system.slice/volkeep.service/cpu.max": "150000 100000\n",
        },
    )
    assert cgroup_quota(proc, root) == 1.5


def test_v2_without_a_limit_is_no_quota(tmp_path: Path) -> None:
    proc, root = cgroup(tmp_path, "0::/app\n", {"app/cpu.max": "max 100000\n"})
    assert cgroup_quota(proc, root) is None


def test_v1_reads_the_cpu_controllers_mount(tmp_path: Path) -> None:
    proc, root = cgroup(
        tmp_path,
        "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_quota(proc, root) == 0.5


def test_an_unreadable_membership_is_no_quota(tmp_path: Path) -> None:
    assert cgroup_quota(tmp_path / "absent", tmp_path) is None


def test_this_process_has_at_least_one_cpu_and_no_more_than_its_affinity() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
