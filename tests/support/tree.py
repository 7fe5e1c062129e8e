"""Test oracles: build file trees in volumes and snapshot them, independently of volkeep."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

MTIME_1975 = 157766400
MTIME_2090 = 3786912000
ODD_NAMES = ["with space", "new\nline", "back\\slash", "-leading", "ünïcødé-日本", "x" * 255]


def build_fidelity_tree(root: Path) -> None:
    """Create every kind of object a round trip must keep (issue 2, 'Tar fidelity')."""
    (root / "empty_dir").mkdir()
    (root / "zero").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(3 << 20) + bytes(range(256)) * 4096)
    deep = root.joinpath(*["d"] * 100)
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep")
    os.symlink("small.txt", root / "rel_link")
    os.symlink("/etc/passwd", root / "abs_link")
    os.symlink("nowhere/missing", root / "dangling")
    os.link(root / "small.txt", root / "hard_link")
    for name, mode in [("setuid", 0o4755), ("setgid", 0o2755), ("zero_mode", 0o000)]:
        (root / name).write_text(name)
        os.chmod(root / name, mode)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "dir_zero_mode").mkdir()
    (root / "dir_zero_mode" / "inside").write_text("hidden")
    os.chmod(root / "dir_zero_mode", 0o000)
    for uid in (0, 999, 65534):
        (root / f"owned{uid}").write_text("x")
        os.chown(root / f"owned{uid}", uid, uid)
        (root / f"dir{uid}").mkdir()
        os.chown(root / f"dir{uid}", uid, uid)
        os.symlink("small.txt", root / f"sym{uid}")
        os.lchown(root / f"sym{uid}", uid, uid)
    for name in ODD_NAMES:
        (root / name).write_text(name)
    long_dir = root.joinpath(*["p" * 60] * 5)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 50)).write_text("long path")
    os.mkfifo(root / "fifo")
    # what the Engine's extractor refuses or alters (issue 11): symlinks whose relative
    # target climbs out of the volume, hard links to them, to a symlink, to a mode 0000 file
    (root / "links" / "deep").mkdir(parents=True)
    os.symlink("../../../../elsewhere", root / "links" / "up")
    os.symlink("../outside/file", root / "top_up")
    os.symlink("../../x", root / "links" / "deep" / "inside")
    os.link(root / "links" / "up", root / "links" / "up_hard", follow_symlinks=False)
    os.link(root / "rel_link", root / "hard_to_symlink", follow_symlinks=False)
    os.link(root / "zero_mode", root / "hard_to_zero_mode")
    os.lchown(root / "links" / "up", 999, 999)
    os.utime(root / "links" / "up", (MTIME_2090, MTIME_2090), follow_symlinks=False)
    os.utime(root / "links", (MTIME_1975, MTIME_1975))
    with open(root / "sparse", "wb") as sparse:
        sparse.seek(50 << 20)
        sparse.write(b"end")
    os.utime(root / "small.txt", (MTIME_1975, MTIME_1975))
    os.utime(root / "empty_dir", (MTIME_2090, MTIME_2090))
    os.utime(root / "rel_link", (MTIME_1975, MTIME_1975), follow_symlinks=False)
    os.utime(root / "sym999", (MTIME_2090, MTIME_2090), follow_symlinks=False)
    os.utime(root / "dir999", (MTIME_2090, MTIME_2090))
    os.chown(root, 999, 999)
    os.chmod(root, 0o750)
    os.utime(root, (MTIME_1975, MTIME_1975))


def snapshot(root: Path) -> dict[str, dict[str, Any]]:
    """Return every object under root (root included) with type, mode, owner, mtime,
    size, content digest, link target and hard-link group."""
    result: dict[str, dict[str, Any]] = {}
    first_path_of_inode: dict[int, str] = {}
    for directory, dirs, files in os.walk(root):
        names = ([""] if directory == str(root) else []) + dirs + files
        for name in names:
            path = os.path.join(directory, name) if name else directory
            info = os.lstat(path)
            relative = os.path.relpath(path, root)
            entry: dict[str, Any] = {
                "mode": oct(info.st_mode),
                "uid": info.st_uid,
                "gid": info.st_gid,
                "mtime": int(info.st_mtime),
            }
            if stat.S_ISREG(info.st_mode):
                entry["size"] = info.st_size
                with open(path, "rb") as content:
                    entry["sha256"] = hashlib.file_digest(content, "sha256").hexdigest()
                if info.st_nlink > 1:
                    entry["link_group"] = first_path_of_inode.setdefault(info.st_ino, relative)
            elif stat.S_ISLNK(info.st_mode):
                entry["target"] = os.readlink(path)
            result[relative] = entry
    return result


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [
        f"{path!r}: {before.get(path)} != {after.get(path)}"
        for path in sorted(set(before) | set(after))
        if before.get(path) != after.get(path)
    ]
