"""`volkeep export` (SPEC §2): the archive's tar, byte for byte, judged with stock tools.

Each test backs up a real volume, exports it, and compares the export with what `zstd`,
`age` and `tar` make of the stored archive file, never with volkeep's own reading.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from pyrage import x25519

from tests.e2e.conftest import ROOT, Workspace, mountpoint
from tests.support import manifests
from tests.support.tree import build_fidelity_tree, snapshot

pytestmark = pytest.mark.e2e


def backup(workspace: Workspace) -> str:
    """Back up policy "app"; return the archive id it printed."""
    result = workspace.run("backup", "app")
    assert result.returncode == 0, result.stderr
    match = re.search(r"archive (\S+) ", result.stdout)
    assert match, result.stdout
    return match.group(1)


def export(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run `volkeep export` with its standard output as bytes."""
    return subprocess.run(
        workspace.command("export", *args), capture_output=True, timeout=300, cwd=ROOT
    )


def stored_file(workspace: Workspace, volume: str, archive_id: str, suffix: str) -> Path:
    return workspace.archive_dir("app", volume) / f"{volume}-{archive_id}{suffix}"


def summary(workspace: Workspace, volume: str, archive_id: str) -> dict[str, object]:
    return manifests.summary(stored_file(workspace, volume, archive_id, ".manifest.json"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stock(command: list[str], data: bytes) -> bytes:
    """Run a stock tool on `data`; return its standard output."""
    return subprocess.run(command, input=data, capture_output=True, check=True).stdout


def tar_listing(tar: bytes) -> set[str]:
    """The paths GNU tar lists in a tar, relative to the volume ("./a/" becomes "a"), in its
    escape quoting (see `escaped`)."""
    names = stock(["tar", "-t", "-f", "-"], tar).decode().splitlines()
    return {name.removeprefix("./").rstrip("/") for name in names} - {".", ""}


def escaped(path: str) -> str:
    """A path as GNU tar's default quoting lists it."""
    return path.replace("\\", "\\\\").replace("\n", "\\n")


def one_clear_line(stderr: bytes) -> str:
    """The last line of stderr, checked to be volkeep's one error line, no traceback."""
    text = stderr.decode()
    assert "Traceback" not in text
    lines = [line for line in text.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("volkeep:"), text
    return lines[0]


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


def simple_tree(root: Path) -> None:
    (root / "dir").mkdir()
    (root / "dir" / "data.bin").write_bytes(os.urandom(300_000))
    (root / "notes.txt").write_text("volkeep export\n" * 1000)
    (root / "empty").write_bytes(b"")
    os.symlink("notes.txt", root / "link")


@pytest.mark.archive_format("tar")
def test_export_writes_the_tar_the_stored_archive_holds_byte_for_byte(api, volumes, workspace):
    source = volumes("export")
    build_fidelity_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source]}})
    archive_id = backup(workspace)

    exported = export(workspace, "app", "--volume", source)

    assert exported.returncode == 0, exported.stderr.decode()
    stored = stored_file(workspace, source, archive_id, ".tar.zst").read_bytes()
    assert sha256(exported.stdout) == sha256(stock(["zstd", "-d", "-c"], stored))
    expected = {escaped(path) for path in snapshot(mountpoint(api, source)) if path != "."}
    assert tar_listing(exported.stdout) == expected
    # -o FILE holds the same bytes, and naming the archive finds the same one
    output = workspace.root / "out.tar"
    to_file = export(
        workspace, "app", "--volume", source, "--archive", archive_id, "-o", str(output)
    )
    assert to_file.returncode == 0, to_file.stderr.decode()
    assert to_file.stdout == b""
    assert output.read_bytes() == exported.stdout
    assert os.stat(output).st_mode & 0o077 == 0  # the volume's content in clear: owner only


def test_export_writes_into_a_named_pipe_and_through_a_symlink_without_replacing_them(
    api, volumes, workspace
):
    """-o a path that is not a regular file (a named pipe here; /dev/null alike) is written
    in place: it stays what it was. -o a symlink replaces the file it points to."""
    source = volumes("export")
    simple_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source]}})
    backup(workspace)
    expected = export(workspace, "app", "--volume", source)
    assert expected.returncode == 0, expected.stderr.decode()

    pipe = workspace.root / "tar.fifo"
    os.mkfifo(pipe)
    received = workspace.root / "received.tar"
    with received.open("wb") as into:
        reader = subprocess.Popen(["cat", str(pipe)], stdout=into)
        to_pipe = export(workspace, "app", "--volume", source, "-o", str(pipe))
        assert reader.wait(timeout=60) == 0
    assert to_pipe.returncode == 0, to_pipe.stderr.decode()
    assert received.read_bytes() == expected.stdout
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    assert sorted(path.name for path in workspace.root.glob(".tar.fifo.*")) == []

    target = workspace.root / "kept" / "volume.tar"
    target.parent.mkdir()
    target.write_bytes(b"an older export")
    link = workspace.root / "latest.tar"
    link.symlink_to(target)
    through = export(workspace, "app", "--volume", source, "-o", str(link))
    assert through.returncode == 0, through.stderr.decode()
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == expected.stdout


@pytest.mark.archive_format("tar")
def test_an_uncompressed_archive_exports_to_the_stored_digest(api, volumes, workspace):
    source = volumes("plain")
    simple_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source], "compression": "none"}})
    archive_id = backup(workspace)

    exported = export(workspace, "app", "--volume", source)

    assert exported.returncode == 0, exported.stderr.decode()
    document = summary(workspace, source, archive_id)
    assert sha256(exported.stdout) == document["archive"]["sha256"]  # type: ignore[index]
    assert tar_listing(exported.stdout) == {"dir", "dir/data.bin", "notes.txt", "empty", "link"}


@pytest.mark.archive_format("tar")
def test_an_encrypted_archive_exports_with_the_policy_identity(api, volumes, workspace):
    source = volumes("sealed")
    simple_tree(mountpoint(api, source))
    identity = x25519.Identity.generate()
    identity_file = workspace.root / "identity.txt"
    descriptor = os.open(identity_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f"{identity}\n")
    encryption = {
        "age": {"recipients": [str(identity.to_public())], "identity_file": str(identity_file)}
    }
    workspace.write_config({"app": {"volumes": [source], "encryption": encryption}})
    archive_id = backup(workspace)
    output = workspace.root / "sealed.tar"

    exported = export(workspace, "app", "--volume", source, "-o", str(output))

    assert exported.returncode == 0, exported.stderr.decode()
    stored = stored_file(workspace, source, archive_id, ".tar.zst.age").read_bytes()
    by_stock_tools = stock(
        ["zstd", "-d", "-c"], stock(["age", "-d", "-i", str(identity_file)], stored)
    )
    assert sha256(output.read_bytes()) == sha256(by_stock_tools)
    assert "dir/data.bin" in tar_listing(output.read_bytes())


@pytest.mark.archive_format("tar")
def test_a_corrupt_archive_exits_1_and_leaves_no_output_file(api, volumes, workspace):
    source = volumes("corrupt")
    simple_tree(mountpoint(api, source))
    workspace.write_config({"app": {"volumes": [source]}})
    archive_id = backup(workspace)
    archive = stored_file(workspace, source, archive_id, ".tar.zst")
    flip_byte(archive, archive.stat().st_size // 2)
    out_dir = workspace.root / "out"
    out_dir.mkdir()

    to_file = export(workspace, "app", "--volume", source, "-o", str(out_dir / "x.tar"))
    to_pipe = export(workspace, "app", "--volume", source)

    assert to_file.returncode == 1
    assert archive_id in one_clear_line(to_file.stderr)
    assert list(out_dir.iterdir()) == []  # neither the file nor its temporary
    assert to_pipe.returncode == 1
    assert archive_id in one_clear_line(to_pipe.stderr)


def test_export_refuses_a_terminal_stops_quietly_for_a_reader_that_left_and_names_faults(
    api, volumes, workspace
):
    source = volumes("refusals")
    simple_tree(mountpoint(api, source))
    (mountpoint(api, source) / "large").write_bytes(os.urandom(4 << 20))  # more than a pipe holds
    workspace.write_config({"app": {"volumes": [source]}})
    backup(workspace)

    leader, follower = pty.openpty()
    try:
        terminal = subprocess.run(
            workspace.command("export", "app", "--volume", source),
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=300,
            cwd=ROOT,
        )
    finally:
        os.close(follower)
        os.close(leader)
    early = subprocess.Popen(
        workspace.command("export", "app", "--volume", source),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert early.stdout is not None and early.stderr is not None
    assert len(early.stdout.read(1000)) == 1000
    early.stdout.close()  # the reader leaves, as `volkeep export ... | head -c 1000` does
    left_early = early.wait(timeout=300), early.stderr.read()
    unknown = export(workspace, "app", "--volume", source, "--archive", "20000101T000000Z")
    missing_dir = export(workspace, "app", "--volume", source, "-o", "/nonexistent/dir/x.tar")

    assert terminal.returncode == 2
    assert "refusing to write a tar to a terminal" in one_clear_line(terminal.stderr)
    assert left_early[0] == 128 + signal.SIGPIPE
    assert b"volkeep:" not in left_early[1]
    assert unknown.returncode == 1 and unknown.stdout == b""
    assert "no such archive" in one_clear_line(unknown.stderr)
    assert missing_dir.returncode == 1
    assert "cannot write /nonexistent/dir/x.tar" in one_clear_line(missing_dir.stderr)
