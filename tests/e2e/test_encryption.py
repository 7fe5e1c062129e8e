"""Encryption at rest with age (SPEC §3a, §4, promise 6), as an operator meets it.

Each test backs up a real volume with an age-encrypted policy and judges the storage with
tools that are not volkeep: pyrage, the stock `age`, `zstd` and GNU `tar`, and byte
searches. Every command's output is kept in LOGS; the last test proves no secret key ever
reached it (promise 6).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pyrage
import pytest
import zstandard
from pyrage import x25519

from tests.e2e.conftest import Workspace, mountpoint
from tests.support import manifests
from tests.support.tree import build_fidelity_tree, differences, snapshot

pytestmark = pytest.mark.e2e

# Every command's stdout and stderr, in the order the tests ran them, and every secret key
# the tests made: the last test checks that none of the second is in the first.
LOGS: list[str] = []
SECRETS: list[str] = []


def run(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    """Run volkeep at its most talkative log level, and keep what it printed."""
    result = workspace.run("--log-level", "debug", *args)
    LOGS.append(f"$ volkeep {' '.join(args)}\n{result.stdout}\n{result.stderr}")
    return result


def new_key() -> tuple[str, str]:
    """Return a fresh X25519 identity (its secret text) and its recipient (public key)."""
    identity = x25519.Identity.generate()
    secret = str(identity)
    SECRETS.append(secret)
    return secret, str(identity.to_public())


def write_identity(path: Path, *secrets: str) -> Path:
    """Write an age identity file, readable by its owner only, as age-keygen writes one."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        for secret in secrets:
            file.write(f"# created: by the volkeep tests\n{secret}\n")
    return path


def age(
    recipients: list[str] | None = None,
    identity: Path | None = None,
    recipients_file: Path | None = None,
) -> dict[str, object]:
    settings: dict[str, object] = {}
    if recipients is not None:
        settings["recipients"] = recipients
    if recipients_file is not None:
        settings["recipients_file"] = str(recipients_file)
    if identity is not None:
        settings["identity_file"] = str(identity)
    return {"age": settings}


def backup(workspace: Workspace, policy: str = "app") -> str:
    """Back up the policy; return the archive id it printed."""
    result = run(workspace, "backup", policy)
    assert result.returncode == 0, result.stderr
    match = re.search(r"archive (\S+) ", result.stdout)
    assert match, result.stdout
    return match.group(1)


def stored(workspace: Workspace, volume: str, archive_id: str) -> Path:
    return workspace.archive_dir("app", volume) / f"{volume}-{archive_id}.tar.zst.age"


def manifest(workspace: Workspace, volume: str, archive_id: str) -> dict[str, Any]:
    path = workspace.archive_dir("app", volume) / f"{volume}-{archive_id}.manifest.json"
    return manifests.summary(path)


def listed(workspace: Workspace) -> list[dict[str, Any]]:
    result = run(workspace, "list", "--json")
    assert result.returncode == 0, result.stderr
    archives: list[dict[str, Any]] = json.loads(result.stdout)
    return archives


def volume_exists(api: docker.APIClient, name: str) -> bool:
    try:
        api.inspect_volume(name)
    except docker.errors.NotFound:
        return False
    return True


def decrypt(data: bytes, secret: str) -> bytes:
    """Open an age file with pyrage, not with volkeep."""
    plain: bytes = pyrage.decrypt(data, [x25519.Identity.from_str(secret)])
    return plain


def tar_names(raw: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        return {normal(member.name) for member in archive.getmembers()} - {""}


def normal(name: str) -> str:
    """A tar member name as a path relative to the volume: no "./", no trailing "/"."""
    name = name.rstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name


def volume_paths(root: Path) -> set[str]:
    return {path for path in snapshot(root) if path != "."}


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """Return the one line of stderr that is not a structured log record, checking that it
    is the last line, starts with "volkeep:", and that nothing is a traceback."""
    lines = result.stderr.strip().splitlines()
    plain = [line for line in lines if not line.startswith("{")]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert lines and plain == [lines[-1]], result.stderr
    assert lines[-1].startswith("volkeep:"), result.stderr
    return lines[-1]


def flip_byte(path: Path, offset: int) -> None:
    """Flip one bit of the byte at `offset` (negative: from the end) in place."""
    with open(path, "r+b") as file:
        position = offset if offset >= 0 else os.fstat(file.fileno()).st_size + offset
        file.seek(position)
        byte = file.read(1)
        file.seek(position)
        file.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.archive_format("tar")
def test_fidelity_tree_round_trips_through_an_encrypted_archive(api, volumes, workspace):
    source = volumes("fidelity")
    build_fidelity_tree(mountpoint(api, source))
    secret, public = new_key()
    identity = write_identity(workspace.root / "identity.txt", secret)
    workspace.write_config({"app": {"volumes": [source], "encryption": age([public], identity)}})

    archive_id = backup(workspace)

    archive = stored(workspace, source, archive_id)
    assert archive.is_file() and archive.name.endswith(".tar.zst.age")
    assert archive.read_bytes().startswith(b"age-encryption.org/v1\n")
    summary = manifest(workspace, source, archive_id)
    assert summary["archive"]["encryption"] == "age"
    assert summary["archive"]["recipients"] == [public]
    assert summary["archive"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert summary["entries"]["encryption"] == "age" and summary["entries"]["count"] > 130
    assert [entry["encrypted"] for entry in listed(workspace)] == [True]

    target = source + "_restored"
    restore = run(workspace, "restore", "app", "--volume", source, "--to", target)
    assert restore.returncode == 0, restore.stderr
    before = snapshot(mountpoint(api, source))
    after = snapshot(mountpoint(api, target))
    assert differences(before, after) == []
    assert len(after) > 130

    drill = run(workspace, "drill", "app")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "passed" in drill.stdout


@pytest.mark.archive_format("tar")
def test_no_plaintext_path_or_content_reaches_the_storage_or_the_state(api, volumes, workspace):
    content_marker = f"vkcontent{uuid.uuid4().hex}"
    name_marker = f"vkname{uuid.uuid4().hex}"
    source = volumes("plaintext")
    root = mountpoint(api, source)
    (root / "dir").mkdir()
    (root / "dir" / f"report-{name_marker}.txt").write_text(content_marker * 3000)  # ~120 KiB
    (root / "other").write_bytes(os.urandom(4096))
    secret, public = new_key()
    identity = write_identity(workspace.root / "identity.txt", secret)
    workspace.write_config({"app": {"volumes": [source], "encryption": age([public], identity)}})

    archive_id = backup(workspace)
    drill = run(workspace, "drill", "app")
    assert drill.returncode == 0, drill.stdout + drill.stderr

    directory = workspace.archive_dir("app", source)
    names = sorted(path.name for path in directory.iterdir())
    assert names == [
        f"{source}-{archive_id}.drill.json",
        f"{source}-{archive_id}.manifest.json",
        f"{source}-{archive_id}.tar.zst.age",
    ]
    # the markers are there to be found, once decrypted: the search below means something
    plain = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(decrypt(stored(workspace, source, archive_id).read_bytes(), secret))
    )
    raw = plain.read()
    assert content_marker.encode() in raw and name_marker.encode() in raw
    sealed = manifests.section(directory / f"{source}-{archive_id}.manifest.json")
    entries = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(decrypt(sealed, secret)))
    assert name_marker.encode() in entries.read()

    searched = [p for p in [*workspace.storage.rglob("*"), *workspace.state_dir.rglob("*")]
                if p.is_file() and not p.is_symlink()]  # fmt: skip
    assert len(searched) >= 4  # the archive, its manifest, its drill record, the history
    for path in searched:
        data = path.read_bytes()
        for marker in (content_marker, name_marker):
            assert marker.encode() not in data, f"{marker} in {path}"
            assert marker.encode("utf-16-le") not in data, f"{marker} (UTF-16) in {path}"


def stock_pipeline(identity: Path, archive: Path, *tar: str) -> str:
    """Run `age -d -i IDENTITY ARCHIVE | zstd -d | tar ARGS` with stock tools; return the
    output of tar."""
    decrypting = subprocess.Popen(
        ["age", "-d", "-i", str(identity), str(archive)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert decrypting.stdout is not None
    decompressing = subprocess.Popen(
        ["zstd", "-d", "-q", "-c"],
        stdin=decrypting.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert decompressing.stdout is not None
    decrypting.stdout.close()
    untar = subprocess.run(
        ["tar", *tar],
        stdin=decompressing.stdout,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        timeout=60,
    )
    decompressing.stdout.close()
    for stage in (decrypting, decompressing):
        assert stage.wait(timeout=60) == 0, stage.stderr.read() if stage.stderr else ""
    assert untar.returncode == 0, untar.stderr
    return untar.stdout.decode()


def test_stock_age_zstd_and_tar_read_the_archive(api, volumes, workspace, tmp_path):
    source = volumes("stock")
    root = mountpoint(api, source)
    (root / "a b").mkdir()
    (root / "a b" / "file one.txt").write_text("one\n")
    (root / "a b" / "nested").mkdir()
    (root / "a b" / "nested" / "two").write_bytes(os.urandom(200_000))
    (root / "empty").mkdir()
    (root / "top.txt").write_text("top\n")
    os.symlink("top.txt", root / "link")
    identity = tmp_path / "age-keygen.txt"
    keygen = subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, text=True)
    assert keygen.returncode == 0, keygen.stderr
    os.chmod(identity, 0o600)
    text = identity.read_text()
    SECRETS.extend(line for line in text.splitlines() if line.startswith("AGE-SECRET-KEY-"))
    public = re.search(r"^# public key: (age1\S+)$", text, re.MULTILINE)
    assert public, text
    # the policy holds only the recipient: the stock tools hold the identity
    workspace.write_config({"app": {"volumes": [source], "encryption": age([public.group(1)])}})

    archive = stored(workspace, source, backup(workspace))

    listing = stock_pipeline(identity, archive, "-t", "-f", "-")
    assert {normal(line) for line in listing.splitlines()} - {""} == volume_paths(root)
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    stock_pipeline(identity, archive, "-x", "-f", "-", "-C", str(extracted))
    assert differences(snapshot(root), snapshot(extracted)) == []


def test_a_host_with_only_recipients_backs_up_lists_and_prunes_but_cannot_open(
    api, volumes, workspace
):
    source = volumes("recipients_only")
    (mountpoint(api, source) / "data").write_text("first")
    _, public = new_key()  # the secret stays elsewhere: this host never sees it
    policy = {"volumes": [source], "encryption": age([public])}
    workspace.write_config({"app": {**policy, "retention": {"keep_last": 2}}})
    first = backup(workspace)
    time.sleep(1.1)  # archive ids have one-second resolution
    (mountpoint(api, source) / "data").write_text("second")
    second = backup(workspace)
    archives = listed(workspace)
    assert [(a["id"], a["encrypted"]) for a in archives] == [(second, True), (first, True)]
    status = run(workspace, "status")
    assert status.returncode == 0, status.stderr
    assert source in status.stdout
    status_json = run(workspace, "status", "--json")
    assert status_json.returncode == 0, status_json.stderr
    json.loads(status_json.stdout)

    workspace.write_config({"app": {**policy, "retention": {"keep_last": 1}}})
    dry = run(workspace, "prune", "app", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert first in dry.stdout
    assert [a["id"] for a in listed(workspace)] == [second, first]
    pruned = run(workspace, "prune", "app")
    assert pruned.returncode == 0, pruned.stderr
    assert [a["id"] for a in listed(workspace)] == [second]
    assert not stored(workspace, source, first).exists()
    assert stored(workspace, source, second).is_file()

    target = source + "_new"
    restore = run(workspace, "restore", "app", "--volume", source, "--to", target)
    assert restore.returncode == 1
    line = one_clear_line(restore)
    assert second in line and public in line, line
    assert not volume_exists(api, target)

    drill = run(workspace, "drill", "app")
    assert drill.returncode == 1
    line = one_clear_line(drill)
    assert second in line and public in line, line


def test_an_identity_that_is_not_a_recipient_opens_nothing(api, volumes, workspace):
    source = volumes("wrong_identity")
    (mountpoint(api, source) / "data").write_text("sealed")
    _, public = new_key()
    other_secret, other_public = new_key()
    wrong = write_identity(workspace.root / "other-identity.txt", other_secret)
    workspace.write_config({"app": {"volumes": [source], "encryption": age([public], wrong)}})
    archive_id = backup(workspace)
    target = source + "_new"

    restore = run(workspace, "restore", "app", "--volume", source, "--to", target)

    assert restore.returncode == 1
    assert "no identity matches" in restore.stderr, restore.stderr
    line = one_clear_line(restore)
    assert archive_id in line and public in line and other_public not in line, line
    assert not volume_exists(api, target)
    drill = run(workspace, "drill", "app")
    assert drill.returncode == 1
    assert "no identity matches" in drill.stderr, drill.stderr


@pytest.mark.archive_format("tar")
def test_a_modified_ciphertext_is_refused_and_nothing_is_written(api, volumes, workspace):
    source = volumes("tampered")
    (mountpoint(api, source) / "random.bin").write_bytes(os.urandom(600_000))  # ~10 chunks
    (mountpoint(api, source) / "note").write_text("backed up")
    busy = volumes("busy")
    (mountpoint(api, busy) / "precious").write_text("current content")
    secret, public = new_key()
    identity = write_identity(workspace.root / "identity.txt", secret)
    workspace.write_config(
        {"app": {"volumes": [source, busy], "encryption": age([public], identity)}}
    )
    result = run(workspace, "backup", "app", "--volume", source)
    assert result.returncode == 0, result.stderr
    (archive_id,) = [a["id"] for a in listed(workspace)]
    archive = stored(workspace, source, archive_id)
    manifest_path = archive.with_name(f"{source}-{archive_id}.manifest.json")
    pristine, summary = archive.read_bytes(), manifest_path.read_bytes()
    before = snapshot(mountpoint(api, busy))
    target = source + "_new"

    # a byte in the middle; then the same with the clear summary's SHA-256 rewritten to match
    # (age's own authentication must refuse it); then a byte of the last chunk, found only
    # once everything before it has streamed
    for offset, rehash in [(len(pristine) // 2, False), (len(pristine) // 2, True), (-20, True)]:
        case = f"offset {offset}, manifest rewritten: {rehash}"
        archive.write_bytes(pristine)
        manifest_path.write_bytes(summary)
        flip_byte(archive, offset)
        if rehash:
            document = manifests.split(summary)[0]
            document["archive"]["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
            manifests.rewrite_summary(manifest_path, document)

        drill = run(workspace, "drill", "app", "--volume", source)
        assert drill.returncode == 1, case
        assert "modified" in drill.stdout + drill.stderr, (case, drill.stdout, drill.stderr)
        one_clear_line(drill)

        restore = run(workspace, "restore", "app", "--volume", source, "--to", target)
        assert restore.returncode == 1, case
        assert "modified" in one_clear_line(restore), case
        assert not volume_exists(api, target) or os.listdir(mountpoint(api, target)) == [], case

        forced = run(workspace, "restore", "app", "--volume", source, "--to", busy, "--force")
        assert forced.returncode == 1, case
        assert "modified" in one_clear_line(forced), case
        assert differences(before, snapshot(mountpoint(api, busy))) == [], case


def test_after_a_key_rotation_one_identity_file_restores_old_and_new(api, volumes, workspace):
    source = volumes("rotated")
    data = mountpoint(api, source) / "data"
    secret_a, public_a = new_key()
    secret_b, public_b = new_key()
    old_only = write_identity(workspace.root / "a.txt", secret_a)
    both = write_identity(workspace.root / "a-and-b.txt", secret_a, secret_b)
    data.write_text("encrypted to A")
    workspace.write_config({"app": {"volumes": [source], "encryption": age([public_a])}})
    first = backup(workspace)
    time.sleep(1.1)  # archive ids have one-second resolution
    recipients = workspace.root / "recipients.txt"
    recipients.write_text(f"# rotated: B replaces A\n{public_b}\n")
    data.write_text("encrypted to B")
    workspace.write_config(
        {"app": {"volumes": [source], "encryption": age(recipients_file=recipients)}}
    )
    second = backup(workspace)
    assert manifest(workspace, source, first)["archive"]["recipients"] == [public_a]
    assert manifest(workspace, source, second)["archive"]["recipients"] == [public_b]
    assert decrypt(stored(workspace, source, second).read_bytes(), secret_b)
    with pytest.raises(pyrage.DecryptError):
        decrypt(stored(workspace, source, second).read_bytes(), secret_a)

    workspace.write_config(
        {"app": {"volumes": [source], "encryption": age(recipients_file=recipients, identity=both)}}
    )
    for archive_id, content in [(first, "encrypted to A"), (second, "encrypted to B")]:
        target = f"{source}_{archive_id}"
        restore = run(
            workspace, "restore", "app", "--volume", source, "--archive", archive_id, "--to", target
        )
        assert restore.returncode == 0, restore.stderr
        assert os.listdir(mountpoint(api, target)) == ["data"]
        assert (mountpoint(api, target) / "data").read_text() == content

    # the old key alone no longer opens what was written after the rotation
    workspace.write_config(
        {"app": {"volumes": [source], "encryption": age([public_b], identity=old_only)}}
    )
    refused = run(
        workspace, "restore", "app", "--volume", source, "--archive", second, "--to", source + "_x"
    )
    assert refused.returncode == 1
    assert "no identity matches" in refused.stderr and public_b in refused.stderr
    assert not volume_exists(api, source + "_x")


def test_status_shows_a_drill_that_could_not_run_beside_the_verdict_that_stands(
    api, volumes, workspace
):
    source = volumes("wrong_key")
    (mountpoint(api, source) / "data").write_text("data")
    secret, public = new_key()
    identity = write_identity(workspace.root / "identity.txt", secret)
    workspace.write_config({"app": {"volumes": [source], "encryption": age([public], identity)}})
    backup(workspace)
    assert run(workspace, "drill", "app").returncode == 0
    identity.unlink()
    write_identity(identity, new_key()[0])  # the key rotated on disk, not in the recipients

    drill = run(workspace, "drill", "app")

    assert drill.returncode == 1, drill.stdout + drill.stderr
    status = run(workspace, "status")
    assert status.returncode == 0, status.stderr
    header, row = [line.split("  ") for line in status.stdout.splitlines()[-2:]]
    cells = dict(zip([cell.strip() for cell in header if cell.strip()],
                     [cell.strip() for cell in row if cell.strip()], strict=True))  # fmt: skip
    assert cells["DRILL VERDICT"].startswith("passed ")
    assert cells["LAST DRILL RUN"].startswith("FAILED ")
    [volume] = json.loads(run(workspace, "status", "--json").stdout)["policies"][0]["volumes"]
    assert volume["last_drill"]["verdict"] == "passed"
    assert volume["last_drill_run"]["outcome"] == "failed"
    assert public in volume["last_drill_run"]["error"]


def test_no_secret_key_is_ever_printed_or_stored(api, volumes, workspace):
    """Promise 6, over every command this module ran, and over a config that holds a
    secret where it does not belong (an error that must not echo it)."""
    source = volumes("secret")
    (mountpoint(api, source) / "data").write_text("data")
    secret, public = new_key()
    identity = write_identity(workspace.root / "identity.txt", secret)
    workspace.write_config({"app": {"volumes": [source], "encryption": age([public], identity)}})
    backup(workspace)
    assert run(workspace, "drill", "app").returncode == 0
    assert (
        run(workspace, "restore", "app", "--volume", source, "--to", source + "_r").returncode == 0
    )
    assert run(workspace, "validate").returncode == 0

    for misplaced in (
        {"recipients": [public], "identity": secret},  # the secret inline in the policy
        {"recipients": [secret]},  # a secret where a public key belongs
    ):
        workspace.write_config({"app": {"volumes": [source], "encryption": {"age": misplaced}}})
        refused = run(workspace, "validate")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert re.search(r"volkeep\.yaml:\d+", refused.stderr), refused.stderr

    assert len(LOGS) >= 6  # this test's own commands, and those of the tests before it
    everything = "\n".join(LOGS).upper()
    assert "AGE-SECRET-KEY-" not in everything
    for key in SECRETS:
        assert key.upper() not in everything
        assert key.upper().removeprefix("AGE-SECRET-KEY-1") not in everything
    for path in workspace.state_dir.rglob("*"):
        if path.is_file():
            assert b"AGE-SECRET-KEY-" not in path.read_bytes().upper(), path
