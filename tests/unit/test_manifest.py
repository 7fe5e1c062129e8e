"""The manifest: its summary reads alone, its entries stream back exactly as they went in,
damage is found, sealed entries need the key, and format 1 manifests stay readable."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from pyrage import x25519

from daemon.archive.encryption import NoIdentityMatches, encrypting_writer
from daemon.archive.manifest import (
    EntriesSealed,
    Manifest,
    ManifestError,
    ManifestWriter,
    read_entries,
)
from daemon.archive.sealing import opener
from daemon.archive.tarstream import Member
from daemon.config.keys import load_identities, parse_recipient

MOMENT = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
DIGEST = "cd" * 32


def summary(**fields: object) -> Manifest:
    values: dict[str, object] = {
        "id": "20261128T030000Z",
        "policy": "app",
        "volume": "app_db",
        "started": MOMENT,
        "finished": MOMENT,
        "archive_file": "app_db-20261128T030000Z.tar.zst",
        "size": 1234,
        "sha256": "ab" * 32,
        "compression": "zstd",
        "compression_level": 3,
        "tar_flavour": "busybox",
        "tar_size": 10240,
        "host": "host",
        "volume_labels": {"volkeep.policy": "app"},
    }
    return Manifest(**{**values, **fields})  # type: ignore[arg-type]


def every_kind() -> list[Member]:
    """Members of every type, with what the encoding must carry exactly."""
    return [
        Member(".", "dir", 0o755, 0, 0, 0, 1_700_000_000),
        Member("dir/ü file\n0", "file", 0o644, 999, 999, 5, 3786912000.5, sha256=DIGEST),
        Member("dir/ü file\n1", "file", 0o4755, 1, 2, 0, 1_700_000_000.123456, sha256=DIGEST),
        Member("dir/x", "file", 0o600, 0, 0, 3, 1.5e-7, sha256=DIGEST, xattrs={"user.k": "v"}),
        Member("dir/neg", "file", 0o600, 0, 0, 3, -12.25, sha256=DIGEST),
        Member("dir/big", "file", 0o644, 1 << 40, -2, 5 << 32, 1 << 70, sha256=DIGEST),
        Member("dir/link", "symlink", 0o777, 0, 0, 0, 1_700_000_001, link="../../etc"),
        Member("dir/same", "hardlink", 0o644, 999, 999, 0, 1_700_000_002, link="dir/x"),
        Member("dir/fifo", "fifo", 0o600, 0, 0, 0, 1_700_000_003),
        Member("bad\udcff name", "dir", 0o700, 0, 0, 0, 1_700_000_004),
        Member("d/" + "n" * 70_000, "file", 0o644, 0, 0, 1, 1_700_000_005, sha256=DIGEST),
        Member("d/" + "n" * 70_001, "dir", 0o755, 0, 0, 0, 1_700_000_005),
    ]


def files(count: int) -> list[Member]:
    """Small files, each with its own content (so, digest)."""
    return [
        Member(f"dir/file{index:05}", "file", 0o644, 999, 999, 9, 1_700_000_000, sha256=digest)
        for index in range(count)
        if (digest := hashlib.sha256(f"content {index}".encode()).hexdigest())
    ]


def written(entries: list[Member], **fields: object) -> bytes:
    return summary(entries=entries, **fields).to_json()


def test_every_kind_of_entry_streams_back_exactly() -> None:
    raw = written(every_kind())

    back = list(read_entries(io.BytesIO(raw)))

    assert back == every_kind()
    assert [type(member.mtime) for member in back][:2] == [int, float]


def test_the_summary_reads_alone_and_counts_the_entries() -> None:
    read = Manifest.from_json(written(every_kind()))

    assert read == summary(entry_count=len(every_kind()), hardlinks=1)
    assert list(read.entries) == []


def test_reading_the_summary_stops_before_the_entries() -> None:
    raw = written(files(20_000))
    source = io.BytesIO(raw)

    Manifest.read(source)

    assert len(raw) > 300_000 and source.tell() <= 64 << 10


def test_the_summary_is_json_and_says_what_follows_it() -> None:
    raw = written(files(3))
    text, _, section = raw.partition(b"\n}\n")
    document = json.loads(text + b"}")

    assert document["format"] == 2
    assert document["entries"]["count"] == 3
    assert document["entries"]["size"] == len(section)
    assert section.startswith(b"\x28\xb5\x2f\xfd")  # a zstd frame


def test_a_summary_rewritten_without_indentation_still_reads() -> None:
    raw = written(files(3))
    text, _, section = raw.partition(b"\n}\n")
    rewritten = json.dumps(json.loads(text + b"}")).encode() + b"\n" + section

    assert Manifest.from_json(rewritten).entry_count == 3
    assert list(read_entries(io.BytesIO(rewritten))) == files(3)


def test_an_empty_volume_has_a_readable_manifest() -> None:
    raw = written([])

    assert Manifest.from_json(raw).entry_count == 0
    assert list(read_entries(io.BytesIO(raw))) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-20] + bytes(b ^ 1 for b in raw[-20:-19]) + raw[-19:], "damaged"),
        (lambda raw: raw[:-7], "cut short"),
        (lambda raw: raw + b"more", "bytes after the entries section"),
        (lambda raw: raw.replace(b'"count": 300', b'"count": 301'), "300 entries where"),
    ],
    ids=["flipped byte", "cut", "appended", "miscounted"],
)
def test_damaged_entries_are_refused(damage: object, message: str) -> None:
    raw = damage(written(files(300)))  # type: ignore[operator]

    with pytest.raises(ManifestError, match=message):
        list(read_entries(io.BytesIO(raw)))


def test_garbage_is_an_unreadable_manifest() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json(b"{ not json")
    with pytest.raises(ManifestError, match="unknown manifest format 4"):
        Manifest.from_json(b'{"format": 4}')


class Key:
    def __init__(self, directory: Path) -> None:
        native = x25519.Identity.generate()
        self.public = str(native.to_public())
        self.path = directory / "key.txt"
        self.path.write_text(f"{native}\n")
        self.path.chmod(0o600)


def sealed_manifest(key: Key, entries: list[Member], tmp_path: Path) -> bytes:
    with ManifestWriter(tmp_path, [parse_recipient(key.public)]) as writer:
        for entry in entries:
            writer.add(entry)
        writer.finish()
        manifest = summary(encryption="age", recipients=[key.public])
        return b"".join(writer.chunks(manifest))


def test_sealed_entries_stream_back_with_the_identity_only(tmp_path: Path) -> None:
    key, other = Key(tmp_path), Key(tmp_path / "..")
    raw = sealed_manifest(key, every_kind(), tmp_path)

    assert b"file\\n0" not in raw and "ü".encode() not in raw
    assert Manifest.from_json(raw).recipients == [key.public]
    with pytest.raises(EntriesSealed):
        list(read_entries(io.BytesIO(raw)))
    with pytest.raises(NoIdentityMatches):
        list(read_entries(io.BytesIO(raw), opener(load_identities(other.path), [key.public])))
    decrypt = opener(load_identities(key.path), [key.public])
    assert list(read_entries(io.BytesIO(raw), decrypt)) == every_kind()


def test_the_spool_spills_to_an_unnamed_file_in_the_given_directory(tmp_path: Path) -> None:
    with ManifestWriter(tmp_path) as writer:
        for entry in files(60_000):
            writer.add(entry)
        writer.finish()
        assert writer.spool_bytes > 1 << 20
        assert list(tmp_path.iterdir()) == []  # spilled, yet nothing named is left
        raw = b"".join(writer.chunks(summary()))
        assert raw == b"".join(writer.chunks(summary()))  # once per storage
    assert list(read_entries(io.BytesIO(raw))) == files(60_000)


# Format 1, as volkeep wrote it before: one JSON document, the entries one a line.


def format_1(entries: list[Member], sealed: bytes | None = None) -> bytes:
    document = summary().document({})
    del document["entries"]
    document.update(format=1, entry_count=len(entries))
    marker = b',\n "entries": ['
    if sealed is not None:
        document["sealed_entries"] = base64.b64encode(sealed).decode()
        return json.dumps(document, indent=1)[:-2].encode() + marker + b"]\n}\n"
    lines = b",\n".join(json.dumps(entry.to_json()).encode() for entry in entries)
    return json.dumps(document, indent=1)[:-2].encode() + marker + b"\n" + lines + b"\n ]\n}\n"


def test_format_1_manifests_stay_readable() -> None:
    raw = format_1(every_kind())

    read = Manifest.from_json(raw)

    assert (read.entry_count, read.hardlinks, read.id) == (len(every_kind()), None, summary().id)
    assert list(read_entries(io.BytesIO(raw))) == every_kind()


def test_format_1_summaries_read_without_their_entries() -> None:
    raw = format_1(files(20_000))
    source = io.BytesIO(raw)

    assert Manifest.read(source).entry_count == 20_000
    assert source.tell() <= 64 << 10 < len(raw)


def test_a_format_1_document_written_whole_stays_readable() -> None:
    document = json.loads(format_1(every_kind()))
    raw = json.dumps(document).encode()  # entries on one line, no marker to find

    assert Manifest.from_json(raw).entry_count == len(every_kind())
    assert list(read_entries(io.BytesIO(raw))) == every_kind()


def test_format_1_sealed_entries_stay_readable(tmp_path: Path) -> None:
    key = Key(tmp_path)
    lines = b"".join(json.dumps(entry.to_json()).encode() + b"\n" for entry in every_kind())
    sealed = io.BytesIO()
    with encrypting_writer(sealed, [parse_recipient(key.public)]) as writer:
        writer.write(zstandard.ZstdCompressor(level=10).compress(lines))
        writer.finish()
    raw = format_1(every_kind(), sealed=sealed.getvalue())

    with pytest.raises(EntriesSealed):
        list(read_entries(io.BytesIO(raw)))
    decrypt = opener(load_identities(key.path), [key.public])
    assert list(read_entries(io.BytesIO(raw), decrypt)) == every_kind()
