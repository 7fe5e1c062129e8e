"""The manifest: its summary reads alone, its entries stream back exactly as they went in,
damage is found, sealed entries need the key, format 1 manifests stay readable, and a
deduplicated archive's entries leave out the content digests (format 3 with them stays
readable)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from pyrage import x25519

from daemon.archive.encryption import NoIdentityMatches, encrypting_writer
from daemon.archive.entries import (
    DIGESTED,
    UNDIGESTED,
    EntryEncoder,
    EntryFormatError,
    _shared,
    decode_entries,
)
from daemon.archive.manifest import (
    DEDUPLICATED,
    ChunkCounts,
    EntriesSealed,
    Manifest,
    ManifestError,
    ManifestWriter,
    read_entries,
)
from daemon.archive.sealing import opener
from daemon.archive.tarstream import Member
from daemon.config.keys import load_identities, parse_recipient
from tests.support import manifests

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


@pytest.mark.parametrize(
    ("path", "previous"),
    [
        (b"a/b/c", b""),
        (b"a/b/c", b"a/b/c"),
        (b"a/b", b"a/b/c"),
        (b"a/b/cd", b"a/b/c"),
        (b"a/b/d", b"a/b/c"),
        (b"b", b"a/b/c"),
        (b"dir/\x00\x01", b"dir/\x00\x02"),
        ("d/é".encode(), "d/è".encode()),  # the same first byte of two
        (b"x" * 300 + b"y", b"x" * 300 + b"z"),
    ],
)
def test_a_path_shares_its_longest_common_prefix_with_the_previous(
    path: bytes, previous: bytes
) -> None:
    expected = next(
        (index for index, (a, b) in enumerate(zip(path, previous, strict=False)) if a != b),
        min(len(path), len(previous)),
    )

    assert _shared(path, previous) == expected


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


# Deduplicated archives: volkeep-entries-2, no content digest (the recipe identifies the
# content); those written before keep volkeep-entries-1.


def deduplicated(**fields: object) -> Manifest:
    return summary(
        layout=DEDUPLICATED,
        archive_file="app_db-20261128T030000Z.recipe.zst",
        tar_sha256=None,
        chunk_counts=ChunkCounts(3, 1, 1, 4096),
        **fields,
    )


def without_digests(members: list[Member]) -> list[Member]:
    return [dataclasses.replace(member, sha256=None) for member in members]


def test_a_deduplicated_manifest_keeps_every_field_but_the_content_digests() -> None:
    raw = deduplicated(entries=every_kind(), content_digests=False).to_json()

    read = Manifest.from_json(raw)

    document = manifests.split(raw)[0]
    assert (document["format"], document["entries"]["encoding"]) == (3, "volkeep-entries-2")
    assert (read.layout, read.content_digests, read.hardlinks) == (DEDUPLICATED, False, 1)
    assert list(read_entries(io.BytesIO(raw))) == without_digests(every_kind())


def test_leaving_the_digests_out_saves_their_32_bytes_a_file() -> None:
    with_digests = manifests.split(deduplicated(entries=files(20_000)).to_json())[1]
    without = deduplicated(entries=files(20_000), content_digests=False).to_json()

    assert len(with_digests) - len(manifests.split(without)[1]) > 31 * 20_000
    assert len(manifests.split(without)[1]) < 2 * 20_000  # a name, a size, an mtime apart


def test_a_format_3_manifest_with_content_digests_stays_readable() -> None:
    raw = deduplicated(entries=every_kind()).to_json()  # as written before entries-2

    read = Manifest.from_json(raw)

    document = manifests.split(raw)[0]
    assert (document["format"], document["entries"]["encoding"]) == (3, "volkeep-entries-1")
    assert (read.layout, read.content_digests) == (DEDUPLICATED, True)
    assert list(read_entries(io.BytesIO(raw))) == every_kind()


# A volkeep-entries-1 block as volkeep wrote it before volkeep-entries-2 existed (the
# encoder of commit 7a77caf), for these members: its bytes are the format, forever.
ENTRIES_1_BLOCK = bytes.fromhex(
    "05b801020100000100ed010000000000000000000000000000000000f15365000000002e4800000500a401"
    "e7030000e703000005000000000000000100000000000000612e74787401351302000300a401e7030000e7"
    "030000000000000000000000000000000000006c6e6b05612e7478741200000100ff010000000000000000"
    "000000000000000001000000000000006205612e74787408000005008001000000000000000000000000"
    "000000000100000000000000656d707479" + "ab" * 32 + "cd" * 32
)
ENTRIES_1_MEMBERS = [
    Member(".", "dir", 0o755, 0, 0, 0, 1_700_000_000),
    Member("a.txt", "file", 0o644, 999, 999, 5, 1_700_000_001.5, sha256="ab" * 32),
    Member("a.lnk", "hardlink", 0o644, 999, 999, 0, 1_700_000_001, link="a.txt"),
    Member("b", "symlink", 0o777, 0, 0, 0, 1_700_000_002, link="a.txt"),
    Member("empty", "file", 0o600, 0, 0, 0, 1_700_000_003, sha256="cd" * 32),
]


def test_entries_1_written_by_the_earlier_encoder_decode_and_encode_alike() -> None:
    decoded = list(decode_entries(io.BytesIO(ENTRIES_1_BLOCK).read, DIGESTED))
    encoder = EntryEncoder(DIGESTED)
    for member in ENTRIES_1_MEMBERS:
        encoder.add(member)

    assert decoded == ENTRIES_1_MEMBERS
    assert encoder.block() == ENTRIES_1_BLOCK


def test_entries_2_drop_the_digest_count_and_refuse_a_record_with_a_digest() -> None:
    encoder = EntryEncoder(UNDIGESTED)
    for member in ENTRIES_1_MEMBERS:
        encoder.add(member)
    block = encoder.block()
    # the same records: a header varint fewer (no digest count), no digests
    assert len(block) == len(ENTRIES_1_BLOCK) - 1 - 2 * 32
    assert block[:3] == ENTRIES_1_BLOCK[:3]
    assert list(decode_entries(io.BytesIO(block).read, UNDIGESTED)) == without_digests(
        ENTRIES_1_MEMBERS
    )

    flagged = block[:3] + bytes([block[3] | 0x08]) + block[4:]
    with pytest.raises(EntryFormatError):
        list(decode_entries(io.BytesIO(flagged).read, UNDIGESTED))


def test_entries_2_in_a_one_file_archive_are_refused() -> None:
    raw = summary(entries=files(2), content_digests=False).to_json()

    with pytest.raises(ManifestError, match="volkeep-entries-2 entries in a manifest of format 2"):
        Manifest.from_json(raw)
