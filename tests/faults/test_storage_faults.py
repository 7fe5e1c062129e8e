"""The storage fails under a backup (issue 13): it fills up, or it turns read-only.

The storage is a small file system of its own: an 8 MiB tmpfs that a backup overflows, or an
ext4 image that goes read-only in the middle of a backup the way a failing disk does
(`errors=remount-ro`: ext4 marks itself read-only on an error, here raised through its
`trigger_fs_error` switch; `mount -o remount,ro` cannot do it while volkeep holds the partial
archive open for writing, it answers "busy"). In both cases the backup fails in one clear
line, the service runs again, nothing is left behind, and the older archive restores; once
the storage has room (or is repaired), the next backup succeeds.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Workspace, mountpoint
from tests.faults.conftest import (
    Ledger,
    Things,
    Volkeep,
    check_the_promises,
    one_clean_error,
)
from tests.support.daemon_process import wait_until

pytestmark = pytest.mark.faults


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a file system for the storage here: {result.stderr.strip()}")


@pytest.fixture
def small_storage(workspace: Workspace) -> Iterator[Path]:
    workspace.storage.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(workspace.storage))
    yield workspace.storage
    subprocess.run(["umount", "-l", str(workspace.storage)], check=True)


@pytest.fixture
def ext4_storage(workspace: Workspace, tmp_path: Path) -> Iterator[Path]:
    image = tmp_path / "storage.ext4"
    with open(image, "wb") as file:
        file.truncate(96 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    workspace.storage.mkdir()
    mount("-o", "loop,errors=remount-ro", str(image), str(workspace.storage))
    yield image
    subprocess.run(["umount", "-l", str(workspace.storage)], check=False)


def partial_files(storage: Path) -> list[Path]:
    return sorted(storage.rglob(".*.partial"))


def fill(volume_root: Path, megabytes: int) -> None:
    (volume_root / "data.bin").write_bytes(os.urandom(megabytes << 20))


def test_a_full_storage_fails_the_backup_cleanly_and_after_clean_up_the_next_one_succeeds(
    things: Things, volkeep: Volkeep, ledger: Ledger, small_storage: Path, helper_image: str
):
    volume = things.volume("data")
    root = mountpoint(things.api, volume)
    fill(root, 1)
    service = things.service(helper_image, volume, "service")
    volkeep.workspace.write_config({"app": {"volumes": [volume], "stop_containers": True}})
    volkeep.ok("backup", "app")
    ledger.claim({volume: ledger.tree(volume)})
    (older,) = ledger.prove_all()

    fill(root, 12)  # more than the storage can take
    failed = volkeep.run("backup", "app")

    line = one_clean_error(failed)
    assert "No space left on device" in line and "storage 'local'" in line, line
    assert partial_files(small_storage) == []  # the room it took is free again
    check_the_promises(ledger, [service], still_listed=[older])

    fill(root, 2)
    volkeep.ok("backup", "app")
    ledger.claim({volume: ledger.tree(volume)})
    assert len(check_the_promises(ledger, [service], still_listed=[older])) == 2


def test_a_storage_turning_read_only_mid_backup_fails_it_cleanly_and_after_repair_the_next_succeeds(
    things: Things, volkeep: Volkeep, ledger: Ledger, ext4_storage: Path, helper_image: str
):
    storage = volkeep.workspace.storage
    volume = things.volume("data")
    root = mountpoint(things.api, volume)
    fill(root, 1)
    service = things.service(helper_image, volume, "service")
    policy = {"volumes": [volume], "stop_containers": True}
    volkeep.workspace.write_config({"app": policy})
    volkeep.ok("backup", "app")
    ledger.claim({volume: ledger.tree(volume)})
    (older,) = ledger.prove_all()
    fill(root, 24)
    # zstd at level 17 takes seconds over random data: time to act while it runs
    slow = {"algorithm": "zstd", "level": 17}
    volkeep.workspace.write_config({"app": policy | {"compression": slow}})

    backup = volkeep.start("backup", "app")
    wait_until(
        lambda: [p for p in partial_files(storage) if p.stat().st_size > 1 << 20],
        "the backup writing its archive",
    )
    device = Path(os.path.realpath(findmnt_source(storage))).name
    Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("volkeep fault suite\n")
    failed = backup.wait()

    line = one_clean_error(failed)
    assert "Read-only file system" in line and "storage 'local'" in line, line
    assert things.running(service)
    assert things.leftovers() == []
    # a read-only storage still restores what it holds
    ledger.restores(older, things.fresh_name("while_read_only"))

    subprocess.run(["umount", str(storage)], check=True)
    subprocess.run(["e2fsck", "-f", "-y", str(ext4_storage)], capture_output=True)
    mount("-o", "loop,errors=remount-ro", str(ext4_storage), str(storage))
    volkeep.workspace.write_config({"app": policy})
    volkeep.ok("backup", "app")

    assert partial_files(storage) == []
    ledger.claim({volume: ledger.tree(volume)})
    assert len(check_the_promises(ledger, [service], still_listed=[older])) == 2


def findmnt_source(path: Path) -> str:
    return subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
