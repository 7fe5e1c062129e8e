"""What dead volkeep processes left behind is removed beside the operation asked for, never in
front of it (issue 22): a slow or impossible removal neither delays nor fails a backup."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import ROOT, mountpoint
from tests.support.own_host import on_a_host_of_its_own, own_host_name, pinned_host

pytestmark = pytest.mark.e2e

SLOW_REMOVAL = 10  # seconds: far longer than the backup of a file takes


@contextmanager
def owner_that_dies(host: str | None = None) -> Iterator[str]:
    """Yield the owner label of a process of `host` (default: this machine's name) that
    lives for the block and has ended after it (any volkeep process of that host removes
    what a dead owner left: this one's leftover is built first)."""
    process = subprocess.Popen(["sleep", "3600"])
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        # volkeep's owner label (daemon.system.owner): host, pid, start time after boot
        yield f"{host or socket.gethostname()}:{process.pid}:{stat[19].decode()}"
    finally:
        process.kill()
        process.wait()


def scratch_labels(owner: str) -> dict[str, str]:
    return {"volkeep.role": "scratch", "volkeep.owner": owner}


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def volume_exists(api: docker.APIClient, name: str) -> bool:
    try:
        api.inspect_volume(name)
    except docker.errors.NotFound:
        return False
    return True


def test_a_slow_removal_of_a_dead_process_leftover_runs_beside_the_backup(api, volumes, workspace):
    source = volumes("data")
    (mountpoint(api, source) / "file").write_text("data")
    # a leftover of a host of its own: other suites' volkeep processes on this machine would
    # remove it before this backup could (tests/support/own_host.py)
    host = own_host_name()
    with owner_that_dies(host) as owner:
        leftover = volumes("scratch", labels=scratch_labels(owner))
    workspace.write_config({"app": {"volumes": [source]}}, daemon=pinned_host())

    # the engine takes SLOW_REMOVAL seconds to remove a volume, as for a million files
    command = workspace.command("backup", "app")
    command[1:3] = ["-m", "tests.support.slow_engine", str(SLOW_REMOVAL)]
    backup = subprocess.run(
        on_a_host_of_its_own(host, command), capture_output=True, text=True, timeout=120, cwd=ROOT
    )

    assert backup.returncode == 0, backup.stderr
    names = [entry["event"] for entry in events(backup.stderr)]
    assert names.index("backup published") < names.index("removed a leftover scratch volume")
    assert not volume_exists(api, leftover), "the command ended before its cleanup"


def test_a_leftover_that_cannot_be_removed_does_not_fail_the_backup(
    api, volumes, workspace, helper_image
):
    source = volumes("data")
    (mountpoint(api, source) / "file").write_text("data")
    with owner_that_dies() as owner:
        leftover = volumes("busy", labels=scratch_labels(owner))
        # an application container (named after the volume: the fixture removes it) holds it
        holder = api.create_container(
            helper_image,
            ["sleep", "3600"],
            name=f"{leftover}_holder",
            host_config=api.create_host_config(binds={leftover: {"bind": "/data", "mode": "rw"}}),
        )
        api.start(holder["Id"])
    workspace.write_config({"app": {"volumes": [source]}})

    backup = workspace.run("backup", "app")

    assert backup.returncode == 0, backup.stderr
    (warning,) = [e for e in events(backup.stderr) if e["event"].startswith("cannot remove")]
    assert warning["scratch_volume"] == leftover and warning["level"] == "warning"
    assert volume_exists(api, leftover)
    assert len(list(workspace.archive_dir("app", source).glob("*.manifest.json"))) == 1
