"""Restore drills as an operator meets them: back up, break the archive, drill, read the verdict.

One backup of the fidelity tree serves the module; each test drills a fresh copy of that
storage. The source volume is gone before any drill runs: a drill needs only the storage.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import zstandard

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.support import manifests
from tests.support.tree import build_fidelity_tree


@dataclass(frozen=True)
class Stored:
    volume: str
    storage: Path
    archive_id: str


@dataclass
class Drilled:
    """A workspace holding a copy of the fidelity archive, and ways to break it."""

    workspace: Workspace
    volume: str
    archive_id: str

    @property
    def archive(self) -> Path:
        directory = self.workspace.archive_dir("app", self.volume)
        return directory / f"{self.volume}-{self.archive_id}.tar.zst"

    @property
    def manifest_path(self) -> Path:
        return self.archive.with_name(f"{self.volume}-{self.archive_id}.manifest.json")

    @property
    def record_path(self) -> Path:
        return self.archive.with_name(f"{self.volume}-{self.archive_id}.drill.json")

    def manifest(self) -> dict[str, Any]:
        return manifests.summary(self.manifest_path)

    def entry(self, path: str) -> dict[str, Any]:
        return next(
            entry for entry in manifests.entries(self.manifest_path) if entry["path"] == path
        )

    def repack(self, edit: Callable[[bytes, tarfile.TarInfo], bytes], path: str) -> None:
        """Rewrite the archive with `edit` applied to the uncompressed tar where the member
        `path` lies, and make the manifest's size and SHA-256 match the new file."""
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(self.archive.read_bytes()))
        raw = tar.read()
        with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
            member = next(m for m in archive.getmembers() if m.name in (path, f"./{path}"))
        packed = zstandard.ZstdCompressor(level=3).compress(edit(raw, member))
        self.archive.write_bytes(packed)
        document = self.manifest()
        document["archive"]["size"] = len(packed)
        document["archive"]["sha256"] = hashlib.sha256(packed).hexdigest()
        manifests.rewrite_summary(self.manifest_path, document)

    def drill(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.workspace.run("drill", "app", *args)

    def record(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.record_path.read_bytes())
        return document


def leftovers(api: docker.APIClient, volume: str) -> list[str]:
    """Return the helper containers and scratch volumes labelled as working for `volume`."""
    label = {"label": f"volkeep.volume={volume}"}
    containers = [c["Id"] for c in api.containers(all=True, filters=label)]
    return containers + [v["Name"] for v in api.volumes(filters=label).get("Volumes") or []]


def error_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "error"]


@pytest.fixture(scope="module")
def fidelity_archive(
    api: docker.APIClient, helper_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Stored:
    volume = f"vkt_{uuid.uuid4().hex[:8]}_drilled"
    # one tar file: the tests break its bytes (`Drilled.repack`)
    workspace = Workspace(tmp_path_factory.mktemp("drill_source"), helper_image, "tar")
    api.create_volume(volume)
    try:
        build_fidelity_tree(mountpoint(api, volume))
        workspace.write_config({"app": {"volumes": [volume]}})
        backup = workspace.run("backup", "app")
        assert backup.returncode == 0, backup.stderr
    finally:
        api.remove_volume(volume, force=True)
    match = re.search(r"archive (\S+) ", backup.stdout)
    assert match, backup.stdout
    return Stored(volume, workspace.storage, match.group(1))


@pytest.fixture
def drilled(
    api: docker.APIClient, fidelity_archive: Stored, workspace: Workspace
) -> Iterator[Drilled]:
    shutil.copytree(fidelity_archive.storage, workspace.storage)
    workspace.write_config({"app": {"volumes": [fidelity_archive.volume]}})
    yield Drilled(workspace, fidelity_archive.volume, fidelity_archive.archive_id)
    label = {"label": f"volkeep.volume={fidelity_archive.volume}"}
    for container in api.containers(all=True, filters=label):
        api.remove_container(container["Id"], force=True)
    for volume in api.volumes(filters=label).get("Volumes") or []:
        api.remove_volume(volume["Name"], force=True)


def test_drill_of_the_fidelity_tree_passes_and_records_the_restore_time(api, drilled):
    result = drilled.drill()

    assert result.returncode == 0, result.stderr
    assert re.match(
        rf"app/{drilled.volume} {drilled.archive_id}: passed, .* restored in \d+\.\ds",
        result.stdout,
    )
    assert error_lines(result.stderr) == []
    record = drilled.record()
    assert record["verdict"] == "passed" and record["passed"] is True
    assert record["reason"] is None and record["difference_count"] == 0
    assert record["bytes"] == drilled.manifest()["tar"]["size"] > 50 << 20
    assert 0 < record["restore_seconds"] < record["duration"]
    assert record["restore_rate"] == pytest.approx(record["bytes"] / record["restore_seconds"])
    assert leftovers(api, drilled.volume) == []

    listed = drilled.workspace.run("list", "app", "--json")
    drill = json.loads(listed.stdout)[0]["drill"]
    assert drill["verdict"] == "passed"
    assert drill["restore_seconds"] == record["restore_seconds"]
    assert re.search(r"passed \d+s ago", drilled.workspace.run("list", "app").stdout)
    with sqlite3.connect(drilled.workspace.state_dir / "history.sqlite") as connection:
        rows = list(connection.execute("SELECT kind, archive, outcome, bytes FROM operations"))
    assert rows == [("drill", drilled.archive_id, "ok", record["bytes"])]


def flip_a_byte_mid_archive(drilled: Drilled) -> None:
    data = bytearray(drilled.archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    drilled.archive.write_bytes(bytes(data))


def truncate_the_archive(drilled: Drilled) -> None:
    with open(drilled.archive, "r+b") as archive:
        archive.truncate(drilled.archive.stat().st_size * 2 // 3)


def edit_the_manifest_sha256(drilled: Drilled) -> None:
    document = drilled.manifest()
    document["archive"]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    manifests.rewrite_summary(drilled.manifest_path, document)


def change_one_files_content(drilled: Drilled) -> None:
    def flip(raw: bytes, member: tarfile.TarInfo) -> bytes:
        data = bytearray(raw)
        data[member.offset_data + member.size // 2] ^= 0x01
        return bytes(data)

    drilled.repack(flip, "big.bin")


def leave_one_file_out(drilled: Drilled) -> None:
    def cut(raw: bytes, member: tarfile.TarInfo) -> bytes:
        end = member.offset_data + -(-member.size // 512) * 512
        return raw[: member.offset] + raw[end:]

    drilled.repack(cut, "owned999")


def make_one_file_private(drilled: Drilled) -> None:
    assert drilled.entry("owned65534")["mode"] == 0o644

    def chmod(raw: bytes, member: tarfile.TarInfo) -> bytes:
        data = bytearray(raw)
        header = member.offset_data - 512
        data[header + 100 : header + 108] = b"0000600\0"
        data[header + 148 : header + 156] = b" " * 8
        data[header + 148 : header + 156] = b"%06o\0 " % sum(data[header : header + 512])
        return bytes(data)

    drilled.repack(chmod, "owned65534")


SHA_MISMATCH = "archive SHA-256 mismatch: the stored bytes are not what was written"
CORRUPTIONS = {
    "flipped byte": (flip_a_byte_mid_archive, SHA_MISMATCH, []),
    "truncated": (truncate_the_archive, "truncated archive: ", []),
    "manifest SHA-256 edited": (edit_the_manifest_sha256, SHA_MISMATCH, []),
    "content re-packed": (
        change_one_files_content,
        "1 object differs: /big.bin content",
        ["/big.bin content"],
    ),
    "file missing": (
        leave_one_file_out,
        "the archive's members differ from its manifest's entries: "
        "1 object differs: /owned999 missing",
        ["/owned999 missing"],
    ),
    "mode changed": (
        make_one_file_private,
        "1 object differs: /owned65534 mode 0644≠0600",
        ["/owned65534 mode 0644≠0600"],
    ),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_each_corruption_fails_the_drill_with_its_reason(api, drilled, corruption):
    corrupt, reason, differences = CORRUPTIONS[corruption]
    corrupt(drilled)

    result = drilled.drill()

    assert result.returncode == 1, result.stdout
    record = drilled.record()
    assert record["verdict"] == "failed"
    assert record["reason"].startswith(reason)
    assert record["differences"] == differences
    assert record["difference_count"] == len(differences)
    address = f"app/{drilled.volume} {drilled.archive_id}"
    assert result.stdout == f"{address}: FAILED: {record['reason']}\n"
    assert result.stderr.strip().splitlines()[-1] == (
        f"volkeep: app/{drilled.volume}/{drilled.archive_id}: {record['reason']}"
    )
    [logged] = error_lines(result.stderr)
    assert logged["event"] == "drill failed" and logged["reason"] == record["reason"]
    assert (logged["policy"], logged["volume"], logged["archive"]) == (
        "app",
        drilled.volume,
        drilled.archive_id,
    )
    assert leftovers(api, drilled.volume) == []
    [listed] = json.loads(drilled.workspace.run("list", "app", "--json").stdout)
    assert listed["drill"]["verdict"] == "failed"
    assert re.search(r"FAILED \d+s ago", drilled.workspace.run("list", "app").stdout)


def test_an_archive_whose_manifest_is_gone_is_not_drilled_and_gets_no_verdict(api, drilled):
    # without its manifest (the commit marker) the archive does not exist: nothing to drill,
    # and no verdict beside its leftover file
    drilled.manifest_path.unlink()

    result = drilled.drill("--archive", drilled.archive_id)

    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert drilled.archive_id in last and "no manifest" in last, last
    assert not drilled.record_path.exists()
    assert leftovers(api, drilled.volume) == []
    no_such = drilled.drill("--archive", "20000101T000000Z")
    assert no_such.returncode == 1 and "no such archive" in no_such.stderr


def test_kill_9_mid_drill_leaves_leftovers_that_the_next_command_removes(api, drilled):
    process = subprocess.Popen(drilled.workspace.command("drill", "app"), stderr=subprocess.DEVNULL)
    scratch = {"label": f"volkeep.volume={drilled.volume}"}
    deadline = time.monotonic() + 60
    while not api.volumes(filters=scratch).get("Volumes") and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    left = leftovers(api, drilled.volume)
    assert any(name.startswith("volkeep-drill-") for name in left), left
    assert not drilled.record_path.exists()

    again = drilled.drill()

    assert again.returncode == 0, again.stderr
    assert leftovers(api, drilled.volume) == []
    assert drilled.record()["verdict"] == "passed"


def test_the_verdict_does_not_wait_for_the_scratch_volume_removal_which_survives_a_crash(
    api, drilled
):
    # the engine takes 60 s to remove a volume, as for a million files
    command = drilled.workspace.command("drill", "app")
    command[1:3] = ["-m", "tests.support.slow_engine", "60"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not drilled.record_path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    scratch = [name for name in leftovers(api, drilled.volume) if name.startswith("volkeep-drill-")]
    os.kill(process.pid, signal.SIGKILL)  # while the scratch volume is being removed
    process.wait()

    assert drilled.record()["verdict"] == "passed"
    assert scratch, "the verdict waited for the removal of the scratch volume"
    again = drilled.drill()  # removes the dead drill's scratch volume beside its own drill
    assert again.returncode == 0, again.stderr
    assert leftovers(api, drilled.volume) == []


def test_oldest_unverified_walks_the_never_drilled_archives_first(api, volumes, workspace):
    source = volumes("rotation")
    drill = {"schedule": "@weekly", "archive": "oldest-unverified", "max_per_run": 2}
    workspace.write_config({"app": {"volumes": [source], "drill": drill}})
    ids = []
    for content in ("one", "two", "three"):
        (mountpoint(api, source) / "version").write_text(content)
        backup = workspace.run("backup", "app")
        assert backup.returncode == 0, backup.stderr
        ids.append(re.search(r"archive (\S+) ", backup.stdout).group(1))  # type: ignore[union-attr]
        time.sleep(1.1)  # archive ids have one-second resolution

    def drilled_ids() -> list[str]:
        result = workspace.run("drill", "app")
        assert result.returncode == 0, result.stderr
        return re.findall(rf"^app/{source} (\S+): passed", result.stdout, re.MULTILINE)

    assert drilled_ids() == ids[:2]
    assert drilled_ids() == [ids[2], ids[0]]  # then the least recently drilled
    assert leftovers(api, source) == []


def test_every_volume_is_drilled_even_after_one_fails(api, drilled, volumes):
    healthy = volumes("healthy")
    (mountpoint(api, healthy) / "data").write_text("fine")
    drilled.workspace.write_config({"app": {"volumes": [drilled.volume, healthy]}})
    assert drilled.workspace.run("backup", "app", "--volume", healthy).returncode == 0
    flip_a_byte_mid_archive(drilled)

    result = drilled.drill()

    assert result.returncode == 1
    verdicts = {
        line.split(" ")[0]: line.split(": ")[1].split(",")[0] for line in result.stdout.splitlines()
    }
    assert verdicts == {f"app/{drilled.volume}": "FAILED", f"app/{healthy}": "passed"}
    assert result.stderr.strip().splitlines()[-1] == (
        f"volkeep: app/{drilled.volume}/{drilled.archive_id}: {SHA_MISMATCH}"
    )
    assert leftovers(api, drilled.volume) == leftovers(api, healthy) == []
    ambiguous = drilled.drill("--archive", drilled.archive_id)
    assert ambiguous.returncode == 2 and "add --volume" in ambiguous.stderr


def backed_up_id(workspace: Workspace) -> str:
    backup = workspace.run("backup", "app")
    assert backup.returncode == 0, backup.stderr
    time.sleep(1.1)  # archive ids have one-second resolution
    return re.search(r"archive (\S+) ", backup.stdout).group(1)  # type: ignore[union-attr]


def test_a_drill_that_cannot_run_keeps_the_verdict_and_retention_keeps_the_proven_archive(
    api, volumes, workspace
):
    source = volumes("proven")
    (mountpoint(api, source) / "data").write_text("one")
    policy: dict[str, object] = {"volumes": [source], "retention": {"keep_last": 1}}
    workspace.write_config({"app": policy})
    proven = backed_up_id(workspace)
    assert workspace.run("drill", "app").returncode == 0
    record = workspace.archive_dir("app", source) / f"{source}-{proven}.drill.json"
    passed = record.read_bytes()

    # the engine cannot run the drill's helper: that says nothing of the archive
    workspace.write_config({"app": {**policy, "helper_image": "volkeep-helper:absent"}})
    not_run = workspace.run("drill", "app")

    assert not_run.returncode == 1
    last = not_run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"volkeep: app/{source}/{proven}: drill not run")
    assert "helper image 'volkeep-helper:absent' is not on this Docker host" in last
    [logged] = error_lines(not_run.stderr)
    assert "drill not run" in logged["error"] and "Traceback" not in not_run.stderr
    assert record.read_bytes() == passed
    assert leftovers(api, source) == []
    with sqlite3.connect(workspace.state_dir / "history.sqlite") as connection:
        rows = list(connection.execute("SELECT kind, archive, outcome FROM operations"))
    assert rows[-1] == ("drill", proven, "failed")

    workspace.write_config({"app": policy})
    (mountpoint(api, source) / "data").write_text("two")
    newer = backed_up_id(workspace)
    kept = {entry["id"] for entry in json.loads(workspace.run("list", "app", "--json").stdout)}
    assert kept == {proven, newer}


def test_a_verdict_protects_the_archive_in_every_storage_that_holds_it(api, volumes, workspace):
    source = volumes("everywhere")
    (mountpoint(api, source) / "data").write_text("one")
    second = workspace.root / "second"
    workspace.write_config(
        {
            "app": {
                "volumes": [source],
                "storage": ["local", {"name": "second", "retention": {"keep_last": 1}}],
                "retention": {"keep_last": 1},
            }
        },
        storages={"second": {"type": "local", "path": str(second)}},
    )
    proven = backed_up_id(workspace)
    drill = workspace.run("drill", "app")  # drills the first storage
    assert drill.returncode == 0, drill.stderr
    assert not list(second.rglob("*.drill.json"))  # the verdict lives beside the drilled copy

    (mountpoint(api, source) / "data").write_text("two")
    newer = backed_up_id(workspace)

    listed = json.loads(workspace.run("list", "app", "--json").stdout)
    held = {(entry["storage"], entry["id"]) for entry in listed}
    assert held == {("local", proven), ("local", newer), ("second", proven), ("second", newer)}
    verdicts = {(entry["storage"], entry["id"]): entry["drill"]["verdict"] for entry in listed}
    assert verdicts[("second", proven)] == verdicts[("local", proven)] == "passed"
    prune = workspace.run("prune", "app", "--dry-run")
    assert prune.returncode == 0, prune.stderr
    assert prune.stdout.count("newest drill-passed archive") == 2


@pytest.mark.archive_format("tar")
def test_a_drill_through_gnu_tar_finds_an_extended_attribute_the_archive_changed(
    api, volumes, workspace
):
    subprocess.run([ROOT / "scripts" / "build-helper-image.sh", "--gnu-tar"], check=True)
    workspace.helper_image = "volkeep-helper:gnutar"
    source = volumes("xattrs")
    (mountpoint(api, source) / "labelled").write_text("content")
    os.setxattr(mountpoint(api, source) / "labelled", "user.origin", b"volkeep test")
    workspace.write_config({"app": {"volumes": [source], "compression": "none"}})
    archive_id = backed_up_id(workspace)
    assert workspace.run("drill", "app").returncode == 0  # the attribute came back as it was
    directory = workspace.archive_dir("app", source)
    archive = directory / f"{source}-{archive_id}.tar"
    packed = archive.read_bytes().replace(b"user.origin=volkeep test", b"user.origin=volkeep TEST")
    archive.write_bytes(packed)  # the PAX record keeps its length: the tar stays well formed
    manifest = directory / f"{source}-{archive_id}.manifest.json"
    document = manifests.summary(manifest)
    document["archive"]["sha256"] = hashlib.sha256(packed).hexdigest()
    manifests.rewrite_summary(manifest, document)

    result = workspace.run("drill", "app")

    assert result.returncode == 1, result.stderr
    record = json.loads((directory / f"{source}-{archive_id}.drill.json").read_bytes())
    assert record["differences"] == ["/labelled xattr user.origin"]
