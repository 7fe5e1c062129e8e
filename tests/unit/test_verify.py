"""The verdicts of the whole-archive check, on a local storage, without Docker."""

from __future__ import annotations

import io
import random
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.archive.compression import SUFFIXES, compressor
from daemon.archive.digest import HashingWriter
from daemon.archive.manifest import Manifest
from daemon.archive.tarstream import Member, TarScanner
from daemon.config.model import Compression
from daemon.errors import OperationError
from daemon.repository.layout import MANIFEST_SUFFIX, ArchiveKey
from daemon.repository.locate import locate
from daemon.repository.store import Repository
from daemon.repository.verify import StoredArchive, verify_archive
from daemon.storage.local import LocalStore

KEY = ArchiveKey("app", "db", "20261101T030000Z")


def text_tar() -> bytes:
    """A tar of compressible text, several MiB once compressed: damage to it usually
    breaks the decompressor long before the end of the stored bytes."""
    chance = random.Random(7)
    words = ["".join(chance.choices("abcdefghij", k=chance.randint(2, 8))) for _ in range(4000)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for number in range(6):
            data = " ".join(chance.choices(words, k=200_000)).encode()
            info = tarfile.TarInfo(f"./file{number}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["zstd", "gzip"])
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed archive of text_tar() in a local storage; return the storage root."""
    algorithm = request.param
    raw = text_tar()
    entries: list[Member] = []
    scanner = TarScanner(done=entries.append)
    scanner.feed(raw)
    # written in the layout before host names (`<policy>/<volume>/…`): still readable
    storage = LocalStore("local", tmp_path_factory.mktemp(algorithm))
    upload = storage.create(KEY.blob(SUFFIXES[algorithm]))
    hashing = HashingWriter(upload)
    packer = compressor(Compression(algorithm), hashing, threads=1)  # type: ignore[arg-type]
    packer.write(raw)
    packer.finish()
    upload.commit()
    now = datetime.now(UTC)
    manifest = Manifest(
        id=KEY.id,
        policy=KEY.policy,
        volume=KEY.volume,
        started=now,
        finished=now,
        archive_file=KEY.file_name(SUFFIXES[algorithm]),
        size=hashing.size,
        sha256=hashing.hexdigest(),
        compression=algorithm,
        compression_level=None,
        tar_flavour="busybox",
        tar_size=len(raw),
        host="test",
        entries=entries,
    )
    storage.put(KEY.blob(MANIFEST_SUFFIX), manifest.to_json())
    assert hashing.size > 2 << 20
    return storage.root


def verdict(root: Path, damage: int | None = None, keep: int | None = None) -> str:
    """Check a copy of the archive with one byte flipped at `damage` or cut after `keep`
    bytes; return the error message, or "intact"."""
    storage = Repository(LocalStore("local", root), "testhost", own=True)
    _, key = locate([storage], KEY.policy, KEY.volume, KEY.id)
    manifest = storage.read_manifest(key)
    path = root / KEY.policy / KEY.volume / manifest.archive_file
    original = path.read_bytes()
    data = bytearray(original)
    if damage is not None:
        data[damage] ^= 0x10
    path.write_bytes(bytes(data[:keep]))
    try:
        verify_archive(StoredArchive(storage, key, manifest))
        return "intact"
    except OperationError as error:
        return error.message
    finally:
        path.write_bytes(original)


def test_the_intact_archive_passes(stored: Path) -> None:
    assert verdict(stored) == "intact"


def test_a_flipped_byte_anywhere_is_a_sha256_mismatch_never_a_truncation(stored: Path) -> None:
    size = next(stored.rglob("*.tar.*")).stat().st_size
    verdicts = {verdict(stored, damage=size * tenth // 10) for tenth in range(10)}

    assert verdicts == {"archive SHA-256 mismatch: the stored bytes are not what was written"}


def test_a_cut_archive_is_truncated(stored: Path) -> None:
    size = next(stored.rglob("*.tar.*")).stat().st_size

    assert verdict(stored, keep=size // 3).startswith(f"truncated archive: {size // 3} of {size}")
