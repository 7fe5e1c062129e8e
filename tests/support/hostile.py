"""Hostile archives, planted straight into a storage with a manifest that matches them."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from daemon.archive.manifest import Manifest

AddMembers = Callable[[tarfile.TarFile, Path], None]


def _file(archive: tarfile.TarFile, name: str, content: bytes = b"evil") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    archive.addfile(info, io.BytesIO(content))


def _link(archive: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    archive.addfile(info)


def _device(archive: tarfile.TarFile, _: Path) -> None:
    info = tarfile.TarInfo("./dev_null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    archive.addfile(info)


HOSTILE_MEMBERS: dict[str, AddMembers] = {
    "absolute name": lambda a, outside: _file(a, str(outside / "evil")),
    "climbs with ..": lambda a, outside: _file(a, "./" + "../" * 12 + str(outside)[1:] + "/evil"),
    "through a symlink": lambda a, outside: (
        _link(a, "./escape", str(outside), tarfile.SYMTYPE),
        _file(a, "./escape/evil"),
    ),
    "hard link outside": lambda a, outside: _link(a, "./hard", str(outside / "x"), tarfile.LNKTYPE),
    "hard link through a symlink": lambda a, outside: (
        _link(a, "./escape", str(outside), tarfile.SYMTYPE),
        _link(a, "./hard", "escape/x", tarfile.LNKTYPE),
    ),
    "device node": _device,
}


def plant_archive(
    storage: Path, policy: str, volume: str, index: int, add: AddMembers, outside: Path
) -> str:
    """Write a zstd tar holding a harmless file then the hostile members, with a manifest
    whose size and SHA-256 match; return its archive id."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        _file(archive, "./harmless", b"fine")
        add(archive, outside)
    stored = zstandard.ZstdCompressor().compress(buffer.getvalue())
    archive_id = f"20200101T0000{index:02d}Z"
    directory = storage / policy / volume
    directory.mkdir(parents=True, exist_ok=True)
    archive_file = f"{volume}-{archive_id}.tar.zst"
    (directory / archive_file).write_bytes(stored)
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    manifest = Manifest(
        id=archive_id,
        policy=policy,
        volume=volume,
        started=moment,
        finished=moment,
        archive_file=archive_file,
        size=len(stored),
        sha256=hashlib.sha256(stored).hexdigest(),
        compression="zstd",
        compression_level=None,
        tar_flavour="posix",
        tar_size=len(buffer.getvalue()),
        host="attacker",
    )
    (directory / f"{volume}-{archive_id}.manifest.json").write_bytes(manifest.to_json())
    return archive_id
