"""kill -9 of volkeep at twenty points of backup, restore, drill and prune (issue 13).

One operator's long session with one volume and the service that uses it (volkeep stops it
for each backup): at each point volkeep dies, the operator runs the same command again, and
the four promises of tests/faults/conftest.py are checked. Most points are places at
volkeep's edges chosen by a test-only launcher (tests/faults/killpoints.py); four are
seeded random times within the command's usual duration, sent from outside.

The cases run in order and build on each other's archives (a prune needs some to delete);
each one first makes sure what it needs is there. The policy is of format tar, whose write
path the points are in; dedup's crash cases are in tests/e2e/test_dedup.py,
test_dedup_gc.py and test_dedup_repack.py.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import Workspace, mountpoint
from tests.faults.conftest import (
    AgeKey,
    Ledger,
    Listed,
    LogBook,
    Things,
    Tree,
    Volkeep,
    check_the_promises,
)
from tests.support.tree import differences

pytestmark = pytest.mark.faults

RANDOM = "a seeded random time"
SEED = 13  # the number
MEGABYTES = 14  # the kill points at half an archive need more than 8 MiB to pass


@dataclass(frozen=True)
class Point:
    command: str  # backup | restore | restore --force | drill | prune
    at: str  # a point of tests.faults.killpoints.POINTS, or RANDOM

    def __str__(self) -> str:
        return f"{self.command}: {self.at}"


POINTS = [
    Point("backup", "after the service container was stopped"),
    Point("restore", "volume created"),
    Point("drill", "volume created"),
    Point("backup", "half of the archive written"),
    Point("restore", "half of the archive extracted"),
    Point("drill", "half of the archive extracted"),
    Point("backup", "archive complete, not yet synced"),
    Point("prune", "first manifest deleted"),
    Point("backup", "archive file published, manifest not written"),
    Point("restore --force", "safety archive published"),
    Point("drill", "extracted, not yet compared"),
    Point("backup", "manifest written, retention not yet run"),
    Point("backup", "first manifest deleted"),  # by the retention that ends a backup
    Point("prune", "second manifest deleted"),
    Point("restore", RANDOM),
    Point("drill", "verdict being written"),
    Point("restore --force", "target emptied, extraction not begun"),
    Point("backup", RANDOM),
    Point("prune", "first archive file deleted"),
    Point("drill", RANDOM),
]


def garbage(directory: Path) -> list[str]:
    """Return the files of a volume's archive directory that are not part of a committed
    archive: partial files, and archive files or records without a manifest."""
    names = sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []
    committed = {name.removesuffix(".manifest.json") for name in names
                 if name.endswith(".manifest.json")}  # fmt: skip
    return [
        name for name in names
        if name.startswith(".") or not any(name.startswith(f"{c}.") for c in committed)
    ]  # fmt: skip


class Session:
    """The operator's session: the volume, its service, a restored copy, the policy."""

    def __init__(
        self,
        workspace: Workspace,
        volkeep: Volkeep,
        things: Things,
        image: str,
        age_key: AgeKey,
    ) -> None:
        self.workspace = workspace
        self.volkeep = volkeep
        self.things = things
        self.api = things.api
        self.age_key = age_key
        self.ledger = Ledger(volkeep, things)
        self.volume = things.volume("data")
        self.copy = things.volume("copy")  # the target of forced restores
        root = mountpoint(self.api, self.volume)
        (root / "big.bin").write_bytes(os.urandom(MEGABYTES << 20))
        (root / "etc").mkdir()
        (root / "etc" / "app.conf").write_text("debug = false\n")
        os.symlink("etc/app.conf", root / "config")
        self.generation = 0
        self.next_generation()
        self.service = things.service(image, self.volume, "service")
        self.configure(keep_last=2)
        self.listing: list[Listed] = []  # what `volkeep list` said after the last case
        self.trusted = False  # whether that case ended well, so that the listing holds

    def configure(self, keep_last: int) -> None:
        self.workspace.write_config(
            {
                "app": {
                    "volumes": [self.volume],
                    "stop_containers": True,
                    "retention": {"keep_last": keep_last},
                    "encryption": self.age_key.encryption(),
                }
            }
        )

    def next_generation(self) -> None:
        """Change the volume's content, so that each backup holds its own."""
        self.generation += 1
        (mountpoint(self.api, self.volume) / "generation").write_text(f"{self.generation}\n")

    def contents(self) -> dict[str, Tree]:
        return {volume: self.ledger.tree(volume) for volume in (self.volume, self.copy)}

    def backups(self) -> list[Listed]:
        return [a for a in self.listing if a.volume == self.volume and a.kind == "backup"]

    def latest(self) -> Listed:
        return self.backups()[0]

    def back_up(self) -> None:
        """A backup of new content, claimed and proven."""
        self.next_generation()
        contents = self.contents()
        self.volkeep.ok("backup", "app")
        listed = self.ledger.listed()
        self.ledger.claim(contents, listed)
        self.listing = self.ledger.prove_all(listed)

    def ensure_backups(self, count: int) -> None:
        while len(self.backups()) < count:
            self.back_up()

    def prepare(self, point: Point) -> list[str]:
        """Make sure what the point needs is there; return the command to kill."""
        self.configure(keep_last=2)
        if not self.trusted:
            self.listing = self.ledger.listed()
        self.trusted = False
        if point.command == "backup":
            if point.at == "first manifest deleted":
                self.ensure_backups(2)  # the new one makes three: retention deletes one
            self.next_generation()
            return ["backup", "app"]
        if point.command == "prune":
            self.ensure_backups(3 if point.at == "second manifest deleted" else 2)
            self.configure(keep_last=1)
            return ["prune", "app"]
        latest = self.latest()
        if point.command == "drill":
            return ["drill", "app", "--volume", self.volume, "--archive", latest.id]
        restore = ["restore", "app", "--volume", self.volume, "--archive", latest.id, "--to"]
        if point.command == "restore --force":
            return [*restore, self.copy, "--force"]
        # into a new volume: the half-restored one a crash leaves is removed at the next
        # start, so that the same command works again, without --force
        return [*restore, self.things.fresh_name("to")]

    def kill(self, point: Point, command: list[str]) -> subprocess.CompletedProcess[str]:
        """Run the command and kill -9 it at the point."""
        if point.at != RANDOM:
            result = self.volkeep.run(*command, kill_point=point.at)
            assert result.returncode == -signal.SIGKILL, (
                f"volkeep never reached {point.at!r}:\n{result.stderr}"
            )
            return result
        # within the command's usual duration, from its start (startup and recovery too)
        usual = min(self.volkeep.seconds[command[0]])
        delay = random.Random(f"{SEED} {point}").uniform(0.15, 0.85) * usual
        running = self.volkeep.start(*command)
        time.sleep(max(0.0, running.began + delay - time.monotonic()))
        killed = running.kill()
        result = running.wait()
        print(f"\n{point}: killed after {delay:.2f}s of {usual:.2f}s" if killed
              else f"\n{point}: it ended before the kill after {delay:.2f}s")  # fmt: skip
        assert result.returncode == (-signal.SIGKILL if killed else 0), result.stderr
        return result


@pytest.fixture(scope="module")
def session(
    api: docker.APIClient,
    helper_image: str,
    age_key: AgeKey,
    logbook: LogBook,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Session]:
    things = Things(api)
    # format tar: most points are in the one-file archive's write path, which a dedup backup
    # never reaches (dedup's kill points: tests/e2e/test_dedup*.py)
    workspace = Workspace(tmp_path_factory.mktemp("kill-9"), helper_image, "tar")
    try:
        session = Session(workspace, Volkeep(workspace, logbook), things, helper_image, age_key)
        session.back_up()
        first = session.latest()
        session.ledger.restores(first, session.copy)
        session.trusted = True
        yield session
    finally:
        things.remove_all()


def exists(api: docker.APIClient, volume: str) -> bool:
    try:
        api.inspect_volume(volume)
    except docker.errors.NotFound:
        return False
    return True


@pytest.mark.parametrize("point", POINTS, ids=[f"{n:02}-{p}" for n, p in enumerate(POINTS, 1)])
def test_kill_9_then_the_same_command_again_keeps_every_promise(session: Session, point: Point):
    ledger = session.ledger
    command = session.prepare(point)
    before = session.listing
    contents = session.contents()

    session.kill(point, command)
    target = command[command.index("--to") + 1] if "--to" in command else None
    left = ledger.tree(target) if target and exists(session.api, target) else None
    again = session.volkeep.ok(*command)

    listed = ledger.listed()
    saved = re.search(r"saved the previous content of \S+ as archive (\S+)", again.stdout)
    if saved:  # the restore again first saved what the killed one left in the target
        assert left is not None
        ledger.expected[(target, saved.group(1))] = left
    ledger.claim(contents, listed)
    if target is not None:
        restored = ledger.expected[(session.volume, command[command.index("--archive") + 1])]
        assert differences(restored, ledger.tree(target)) == []
    if point.command == "drill":
        assert ": passed," in again.stdout, again.stdout
    newest_backup = next(a for a in before if a.volume == session.volume and a.kind == "backup")
    if point.command in ("backup", "prune"):
        still = {a for a in before if a.kind == "safety"} | {newest_backup}  # promise 2
        assert garbage(session.workspace.archive_dir("app", session.volume)) == []
    else:
        still = set(before)
    session.listing = check_the_promises(
        ledger, [session.service], still_listed=still, listed=listed
    )
    session.trusted = True
    if point.command == "prune":
        assert [a for a in listed if a.volume == session.volume and a.kind == "backup"] == [
            newest_backup
        ]
