"""The fault suite's means (issue 13): volkeep as a real process whose every word is kept,
and the four promises each fault case checks afterwards:

1. no listed archive is broken: each restores into a fresh volume with the content it was
   taken of, and drills;
2. no container volkeep stopped is left stopped;
3. no helper container or scratch volume is left;
4. older archives are still there, and restore.

An archive whose stored bytes (archive file and manifest) are those that already restored and
drilled in the same module is not restored again: those bytes are all a restore reads, so
the byte comparison is the proof, at a fraction of the time. An archive in S3 (no local bytes
to compare) or of format dedup (a restore reads packs too, shared with other archives) is
restored and drilled each time.

The suite's policies are of format tar unless they say otherwise (the `workspace` fixture):
its kill points and proofs are about the one-file archive's path (an archive file written,
synced, published; its bytes compared). A test of the dedup path says
`@pytest.mark.archive_format("dedup")` or `format: dedup`; dedup's own crash cases are in
tests/e2e/test_dedup.py, test_dedup_gc.py and test_dedup_repack.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from pyrage import x25519

from daemon.engine.helpers import LABEL_ROLE, LABEL_VOLUME
from tests.e2e import conftest as e2e
from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.faults.killpoints import ACTION as POINT_ACTION
from tests.faults.killpoints import ENVIRONMENT as KILL_POINT
from tests.support.daemon_process import wait_until
from tests.support.tree import differences, snapshot

# the end-to-end fixtures: the engine, the helper image, volumes, S3
api = e2e.api
volumes = e2e.volumes
s3_server = e2e.s3_server
s3_bucket = e2e.s3_bucket


@pytest.fixture
def workspace(request: pytest.FixtureRequest, tmp_path: Path, helper_image: str) -> Workspace:
    """The end-to-end workspace, whose policies that do not say are of format tar unless
    the test's `archive_format` marker names another (the module docstring says why)."""
    return Workspace(tmp_path, helper_image, e2e.archive_format_of(request.node) or "tar")


@pytest.fixture(scope="session")
def helper_image(api: docker.APIClient) -> Iterator[str]:
    """The suite's own helper image, built as scripts/build-helper-image.sh builds one: an
    image id of its own, so that no other test's clean-up by image (`ancestor=`) reaches
    the fault suite's helpers and services while they work."""
    image = f"volkeep-faults:{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [ROOT / "scripts" / "build-helper-image.sh", image], check=True, capture_output=True
    )
    yield image
    with contextlib.suppress(docker.errors.APIError):
        api.remove_image(image, force=True)


Tree = dict[str, dict[str, Any]]
IDLE = 'trap "exit 0" TERM; while true; do sleep 0.1; done'


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The check of the whole suite's logs runs after every other test."""
    last = [item for item in items if item.get_closest_marker("after_the_fault_suite")]
    for item in last:
        items.remove(item)
    items.extend(last)


# Everything volkeep printed in this suite, and every secret the tests gave it


@dataclass
class LogBook:
    entries: list[tuple[str, str]] = field(default_factory=list)  # (what ran, what it printed)
    files: list[Path] = field(default_factory=list)  # daemons' log files
    secrets: list[str] = field(default_factory=list)

    def add(self, what: str, *texts: str) -> None:
        self.entries.append((what, "\n".join(texts)))

    def holding_secrets(self) -> list[str]:
        """Return what ran and printed a secret (none, if promise 6 holds)."""
        texts = [*self.entries]
        texts += [(str(path), path.read_text(errors="replace")) for path in self.files]
        return [
            f"{what} printed secret {secret[:12]}…"
            for what, text in texts
            for secret in self.secrets
            if secret in text
        ]


@pytest.fixture(scope="session")
def logbook() -> LogBook:
    return LogBook()


@dataclass(frozen=True)
class AgeKey:
    secret: str
    recipient: str
    identity_file: Path

    def encryption(self) -> dict[str, object]:
        return {"age": {"recipients": [self.recipient], "identity_file": str(self.identity_file)}}


@pytest.fixture(scope="session")
def age_key(tmp_path_factory: pytest.TempPathFactory, logbook: LogBook) -> AgeKey:
    """An age identity for the suite's encrypted policies: a test secret."""
    identity = x25519.Identity.generate()
    path = tmp_path_factory.mktemp("age") / "identity.txt"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f"# created: by the volkeep fault suite\n{identity}\n")
    logbook.secrets.append(str(identity))
    return AgeKey(str(identity), str(identity.to_public()), path)


# volkeep as a process


class Running:
    """A volkeep process started in the background; its output is read as it comes."""

    def __init__(self, command: list[str], env: dict[str, str], what: str, logs: LogBook):
        self.what = what
        self.logs = logs
        self.began = time.monotonic()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        pipes = ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))
        self._readers = [
            threading.Thread(target=self._read, args=pipe, daemon=True) for pipe in pipes
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: Any, lines: list[str]) -> None:
        for line in pipe:
            lines.append(line)

    def events(self, event: str) -> list[dict[str, Any]]:
        return [
            entry
            for line in list(self.stderr)
            if line.startswith("{") and (entry := json.loads(line)).get("event") == event
        ]

    def wait_for_event(self, event: str) -> float:
        """Wait until volkeep logs `event` (or ends); return the monotonic time it was seen."""
        wait_until(lambda: self.events(event) or self.process.poll() is not None, event)
        return time.monotonic()

    def kill(self) -> bool:
        """kill -9 it; return whether it was still running."""
        if self.process.poll() is not None:
            return False
        self.process.send_signal(signal.SIGKILL)
        return True

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def paused(self) -> bool:
        """Say whether the process stopped itself (state T in /proc)."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    def wait_until_paused(self) -> None:
        wait_until(lambda: self.paused() or self.process.poll() is not None, "the pause point")
        assert self.paused(), f"{self.what} ended before its pause point:\n{''.join(self.stderr)}"

    def wait(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join()
        result = subprocess.CompletedProcess(
            self.process.args, code, "".join(self.stdout), "".join(self.stderr)
        )
        self.logs.add(self.what, result.stdout, result.stderr)
        return result


@dataclass
class Volkeep:
    """volkeep commands on a workspace, with extra environment (DOCKER_HOST...), each one's
    output kept in the log book."""

    workspace: Workspace
    logs: LogBook
    env: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per command, un-killed

    def command(self, *args: str, kill_point: str | None = None) -> list[str]:
        command = self.workspace.command(*args)
        if kill_point is not None:
            command[2] = "tests.faults.killpoints"  # instead of `-m daemon`
        return command

    def environment(self, kill_point: str | None = None) -> dict[str, str]:
        extra = {KILL_POINT: kill_point} if kill_point is not None else {}
        return {**os.environ, **self.env, **extra}

    def run(
        self, *args: str, kill_point: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        result = subprocess.run(
            self.command(*args, kill_point=kill_point),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=self.environment(kill_point),
        )
        if kill_point is None and result.returncode == 0:
            self.seconds.setdefault(args[0], []).append(time.monotonic() - began)
        self.logs.add(f"volkeep {' '.join(args)} (kill point: {kill_point})", result.stdout,
                      result.stderr)  # fmt: skip
        return result

    def start(self, *args: str, pause_at: str | None = None) -> Running:
        """Start the command; with `pause_at`, it stops itself (SIGSTOP) at that point of
        tests.faults.killpoints (see `Running.wait_until_paused`)."""
        environment = self.environment(pause_at)
        if pause_at is not None:
            environment[POINT_ACTION] = "pause"
        command = self.command(*args, kill_point=pause_at)
        return Running(command, environment, f"volkeep {' '.join(args)}", self.logs)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, f"volkeep {' '.join(args)}:\n{result.stderr}"
        assert "Traceback" not in result.stderr
        return result


def one_clean_error(result: subprocess.CompletedProcess[str]) -> str:
    """Given a failed volkeep command, check it failed as SPEC §2 says (exit 1, one line
    naming the fault, no traceback) and return that line."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("volkeep: "), result.stderr
    return last


# Docker things of one test module, all removed after it


class Things:
    """Uniquely named volumes and service containers on an engine."""

    def __init__(self, api: docker.APIClient) -> None:
        self.api = api
        self.prefix = f"vkf_{uuid.uuid4().hex[:8]}_"
        self.counter = 0

    def volume(self, name: str) -> str:
        full = self.prefix + name
        self.api.create_volume(full)
        return full

    def fresh_name(self, name: str) -> str:
        """A unique volume name nobody created yet."""
        self.counter += 1
        return f"{self.prefix}{name}{self.counter}"

    def service(self, image: str, volume: str, name: str, restart: str | None = None) -> str:
        """Run an idle service container with `volume` at /data; return its id."""
        container = self.api.create_container(
            image,
            ["sh", "-c", IDLE],
            name=f"{volume}_{name}",
            host_config=self.api.create_host_config(
                binds={volume: {"bind": "/data", "mode": "rw"}},
                log_config={"type": "none"},
                network_mode="none",
                restart_policy={"Name": restart} if restart else None,
            ),
        )
        self.api.start(container["Id"])
        return str(container["Id"])

    def running(self, container: str) -> bool:
        return bool(self.api.inspect_container(container)["State"]["Running"])

    def leftovers(self) -> list[str]:
        """Return the helper containers and scratch volumes volkeep made for these volumes
        that are still there."""
        ours = {"label": LABEL_ROLE}
        found = [
            f"helper container {c['Names'][0]} ({c['State']})"
            for c in self.api.containers(all=True, filters=ours)
            if c["Labels"].get(LABEL_VOLUME, "").startswith(self.prefix)
        ]
        found += [
            f"scratch volume {v['Name']}"
            for v in self.api.volumes(filters=ours).get("Volumes") or []
            if (v.get("Labels") or {}).get(LABEL_VOLUME, "").startswith(self.prefix)
        ]
        return found

    def remove_all(self) -> None:
        for container in self.api.containers(all=True, filters={"name": self.prefix}):
            self.api.remove_container(container["Id"], force=True)
        for volume in self.api.volumes().get("Volumes") or []:
            if volume["Name"].startswith(self.prefix):
                for user in self.api.containers(all=True, filters={"volume": volume["Name"]}):
                    self.api.remove_container(user["Id"], force=True)
                self.api.remove_volume(volume["Name"], force=True)


@pytest.fixture
def things(api: docker.APIClient) -> Iterator[Things]:
    made = Things(api)
    yield made
    made.remove_all()


# The ledger: what each archive holds, and what was proven of it


def digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@dataclass(frozen=True)
class Listed:
    volume: str
    id: str
    storage: str
    kind: str


class Ledger:
    """The archives of one policy: the content each was taken of, and the stored bytes each
    restored and drilled from."""

    def __init__(self, volkeep: Volkeep, things: Things, policy: str = "app") -> None:
        self.volkeep = volkeep
        self.things = things
        self.api = things.api
        self.policy = policy
        self.expected: dict[tuple[str, str], Tree] = {}
        self.proven: dict[Listed, str] = {}

    def tree(self, volume: str) -> Tree:
        return snapshot(mountpoint(self.api, volume))

    def listed(self) -> list[Listed]:
        result = self.volkeep.ok("list", self.policy, "--json")
        return [
            Listed(entry["volume"], entry["id"], entry["storage"], entry["kind"])
            for entry in json.loads(result.stdout)
        ]

    def claim(self, contents: dict[str, Tree], listed: list[Listed] | None = None) -> None:
        """Say that every listed archive the ledger does not know yet was taken of the
        content its volume had in `contents`."""
        for archive in self.listed() if listed is None else listed:
            key = (archive.volume, archive.id)
            if key not in self.expected:
                assert archive.volume in contents, f"an archive nobody asked for: {archive}"
                self.expected[key] = contents[archive.volume]

    def fingerprint(self, archive: Listed) -> str | None:
        """The SHA-256 of the archive's stored files (local storage, format tar only: a
        dedup archive's recipe and manifest are not all a restore of it reads)."""
        if archive.storage != "local":
            return None
        directory = self.volkeep.workspace.archive_dir(self.policy, archive.volume)
        files = sorted(
            path
            for path in directory.glob(f"{archive.volume}-{archive.id}.*")
            if not path.name.endswith(".drill.json")
        )
        if any(".recipe." in path.name for path in files):
            return None
        return ",".join(f"{path.name}:{digest(path)}" for path in files)

    def restores(self, archive: Listed, target: str, *, force: bool = False) -> None:
        """Restore the archive into `target` and check it holds what it was taken of."""
        args = ["--volume", archive.volume, "--archive", archive.id, "--to", target]
        self.volkeep.ok("restore", self.policy, *args, "--storage", archive.storage,
                        *(["--force"] if force else []))  # fmt: skip
        found = differences(self.expected[(archive.volume, archive.id)], self.tree(target))
        assert found == [], f"{archive} restored differently: {found[:5]}"
        assert self.things.leftovers() == [], "a restore that ended left a helper behind"

    def drills(self, archive: Listed) -> None:
        drill = self.volkeep.ok("drill", self.policy, "--volume", archive.volume, "--archive",
                                archive.id, "--storage", archive.storage)  # fmt: skip
        assert ": passed," in drill.stdout, drill.stdout
        assert self.things.leftovers() == [], "a drill that ended left a helper behind"

    def prove(self, archive: Listed) -> None:
        fresh = self.things.fresh_name("proof")
        try:
            self.restores(archive, fresh)
        finally:
            with_api_retry(lambda: self.api.remove_volume(fresh, force=True))
        self.drills(archive)

    def prove_all(self, listed: list[Listed] | None = None) -> list[Listed]:
        """Restore and drill every listed archive not proven with its present bytes; return
        the listing (`listed`, or a new one)."""
        listed = self.listed() if listed is None else listed
        for archive in listed:
            assert (archive.volume, archive.id) in self.expected, f"unknown archive {archive}"
            fingerprint = self.fingerprint(archive)
            if fingerprint is None or self.proven.get(archive) != fingerprint:
                self.prove(archive)
                self.proven[archive] = self.fingerprint(archive) or ""
        return listed


def with_api_retry(call: Callable[[], object]) -> None:
    """Remove a proof volume; the engine may still be releasing the helper that used it."""
    for attempt in range(20):
        try:
            call()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if attempt == 19:
                raise
            time.sleep(0.1)


def journals_left(workspace: Workspace) -> list[str]:
    return sorted(path.name for path in (workspace.state_dir / "stopped").glob("*.json"))


def check_the_promises(
    ledger: Ledger,
    services: list[str],
    *,
    still_listed: Iterable[Listed] = (),
    listed: list[Listed] | None = None,
) -> list[Listed]:
    """The four promises of every fault case (the module docstring); return the listing."""
    listed = ledger.prove_all(listed)
    things = ledger.things
    assert [c for c in services if not things.running(c)] == [], "a service is left stopped"
    assert journals_left(ledger.volkeep.workspace) == []
    assert things.leftovers() == []
    assert set(still_listed) - set(listed) == set(), "an older archive is gone"
    return listed


@pytest.fixture
def volkeep(workspace: Workspace, logbook: LogBook) -> Volkeep:
    return Volkeep(workspace, logbook)


@pytest.fixture
def ledger(volkeep: Volkeep, things: Things) -> Ledger:
    return Ledger(volkeep, things)
