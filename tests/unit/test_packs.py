"""The chunk repository's config record, packs and indexes (docs/format-dedup.md)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zstandard
from pyrage import x25519

from daemon.archive import packs as packs_module
from daemon.archive.chunkconfig import (
    ChunkConfig,
    ChunkConfigError,
    open_config,
    seal_config,
)
from daemon.archive.chunking import ChunkerParameters
from daemon.archive.packs import (
    FOOTER_SIZE,
    PACK_CHUNKS,
    ChunkReader,
    ChunkWriter,
    IndexEntry,
    Pack,
    PackFormatError,
    SealedPack,
    open_pack,
    raw_frame,
    read_index,
)
from daemon.archive.sealing import opener
from daemon.config.keys import Identities, Recipient, load_identities, parse_recipient


@pytest.fixture
def keys(tmp_path: Path) -> tuple[list[Recipient], Identities]:
    identity = x25519.Identity.generate()
    path = tmp_path / "identity.txt"
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    return [parse_recipient(str(identity.to_public()))], load_identities(path)


def write_chunks(
    config: ChunkConfig, chunks: list[bytes], recipients: list[Recipient] = ()
) -> tuple[list[SealedPack], ChunkWriter, list[str]]:
    packs: list[SealedPack] = []
    writer = ChunkWriter(config, recipients, set(), packs.append)
    ids = [writer.add(chunk) for chunk in chunks]
    writer.finish()
    return packs, writer, ids


def index_of(writer: ChunkWriter, decrypt=None) -> list[IndexEntry]:
    stored = b"".join(writer.index.stored())
    return list(read_index(writer.index.sha256, io.BytesIO(stored), decrypt))


def test_the_config_record_round_trips_in_clear():
    config = ChunkConfig.new()
    stored = seal_config(config, [])
    assert stored.startswith(b"{")
    assert open_config(stored, None) == config
    assert config.key.hex() not in repr(config)


def test_a_sealed_config_record_hides_the_key(keys):
    recipients, identities = keys
    config = ChunkConfig.new()
    stored = seal_config(config, recipients)
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert config.key.hex().encode() not in stored and config.key not in stored
    assert open_config(stored, identities) == config
    with pytest.raises(ChunkConfigError, match="needs an identity"):
        open_config(stored, None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace('"version": 1', '"version": 2'), "version 2"),
        (lambda text: text.replace("fastcdc-2020", "rabin"), "unknown chunker"),
        (lambda text: text.replace("blake3-keyed", "sha256"), "unknown chunk id"),
        (lambda text: text[:-10], "unreadable"),
    ],
)
def test_a_config_record_volkeep_cannot_follow_is_refused(edit, message):
    stored = seal_config(ChunkConfig.new(), []).decode()
    with pytest.raises(ChunkConfigError, match=message):
        open_config(edit(stored).encode(), None)


def test_a_pack_is_self_describing_and_named_by_its_stored_bytes():
    config = ChunkConfig.new()
    chunks = [os.urandom(70_000), b"small", bytes(100_000)]
    packs, writer, ids = write_chunks(config, chunks)
    assert len(packs) == 1
    pack = packs[0]
    assert pack.name == hashlib.sha256(pack.data).hexdigest()
    assert pack.data[-FOOTER_SIZE:].startswith(b"volkeep-pack 1 ")
    opened = open_pack(pack.name, pack.data, None)
    assert [entry.chunk_id for entry in opened.entries] == ids
    assert [opened.chunk(entry) for entry in opened.entries] == chunks
    # each chunk is one zstd frame at its offset: stock zstd reads it
    entry = opened.entries[0]
    frame = pack.data[entry.offset : entry.offset + entry.stored_length]
    assert zstandard.ZstdDecompressor().decompress(frame) == chunks[0]
    assert writer.stored_bytes == len(pack.data) and writer.new_chunks == 3


def test_an_encrypted_pack_is_one_age_stream_with_nothing_in_clear(keys):
    recipients, identities = keys
    config = ChunkConfig.new()
    marker = b"volkeep-plaintext-marker" * 100
    packs, writer, ids = write_chunks(config, [marker], recipients)
    stored = packs[0].data
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert b"volkeep" not in stored[30:] and ids[0].encode() not in stored
    assert (
        open_pack(packs[0].name, stored, identities).chunk(
            open_pack(packs[0].name, stored, identities).entries[0]
        )
        == marker
    )
    sealed_index = b"".join(writer.index.stored())
    assert (
        sealed_index.startswith(b"age-encryption.org/v1\n") and ids[0].encode() not in sealed_index
    )
    assert [entry.chunk_id for entry in index_of(writer, opener(identities, []))] == ids


def test_known_chunks_are_not_stored_again():
    config = ChunkConfig.new()
    repeated = os.urandom(50_000)
    packs, writer, ids = write_chunks(config, [repeated, b"other", repeated])
    assert ids[0] == ids[2]
    assert writer.chunks == 3 and writer.new_chunks == 2
    assert len(open_pack(packs[0].name, packs[0].data, None).entries) == 2


def test_packs_close_at_the_configured_size_and_the_index_lists_every_chunk():
    config = ChunkConfig(os.urandom(32), ChunkerParameters(), pack_size=300_000)
    chunks = [os.urandom(100_000) for _ in range(7)]
    packs, writer, ids = write_chunks(config, chunks)
    assert len(packs) == 3  # 3 + 3 + 1 chunks
    assert all(len(pack.data) < 300_000 + 101_000 for pack in packs)
    entries = index_of(writer)
    assert [entry.chunk_id for entry in entries] == ids
    assert {entry.pack for entry in entries} == {pack.name for pack in packs}
    by_name = {pack.name: pack.data for pack in packs}
    located = {entry.chunk_id: entry for entry in entries}
    reader = ChunkReader(config, located.get, lambda name: open_pack(name, by_name[name], None))
    assert [reader(chunk_id) for chunk_id in ids] == chunks


def test_a_pack_whose_name_garbage_collection_condemned_is_stored_as_two_that_read_back():
    config = ChunkConfig(os.urandom(32), ChunkerParameters(), pack_size=300_000)
    chunks = [os.urandom(100_000) for _ in range(4)]
    whole, _, _ = write_chunks(config, chunks)
    condemned = {whole[0].name}  # the first pack's name: 3 chunks, in clear
    packs: list[SealedPack] = []
    writer = ChunkWriter(config, (), set(), packs.append, fresh=lambda name: name not in condemned)
    ids = [writer.add(chunk) for chunk in chunks]
    writer.finish()
    assert [len(pack.entries) for pack in packs] == [1, 2, 1]  # the condemned one halved
    assert not condemned & {pack.name for pack in packs}
    entries = index_of(writer)
    assert [entry.chunk_id for entry in entries] == ids
    by_name = {pack.name: pack.data for pack in packs}
    located = {entry.chunk_id: entry for entry in entries}
    reader = ChunkReader(config, located.get, lambda name: open_pack(name, by_name[name], None))
    assert [reader(chunk_id) for chunk_id in ids] == chunks


def test_packs_of_tiny_chunks_close_at_a_bounded_count_and_every_chunk_reads_back():
    config = ChunkConfig(os.urandom(32), ChunkerParameters())
    chunks = [b"%d" % number for number in range(2 * PACK_CHUNKS + 1)]
    packs, writer, ids = write_chunks(config, chunks)
    assert [len(pack.entries) for pack in packs] == [PACK_CHUNKS, PACK_CHUNKS, 1]
    by_name = {pack.name: pack.data for pack in packs}
    located = {entry.chunk_id: entry for entry in index_of(writer)}
    reader = ChunkReader(config, located.get, lambda name: open_pack(name, by_name[name], None))
    assert [reader(chunk_id) for chunk_id in ids] == chunks


def test_a_damaged_pack_or_index_is_refused():
    config = ChunkConfig.new()
    packs, writer, ids = write_chunks(config, [os.urandom(20_000)])
    damaged = bytearray(packs[0].data)
    damaged[100] ^= 1
    with pytest.raises(PackFormatError, match="not its name"):
        open_pack(packs[0].name, bytes(damaged), None)
    with pytest.raises(PackFormatError, match="no footer"):
        open_pack(hashlib.sha256(b"junk").hexdigest(), b"junk", None)
    stored = b"".join(writer.index.stored())
    with pytest.raises(PackFormatError):
        list(read_index(writer.index.sha256, io.BytesIO(stored[:-8]), None))
    # a chunk whose bytes are not its id's (another repository's key) is refused
    other = ChunkConfig.new()
    located = {entry.chunk_id: entry for entry in index_of(writer)}
    reader = ChunkReader(other, located.get, lambda name: open_pack(name, packs[0].data, None))
    with pytest.raises(PackFormatError, match="not its content"):
        reader(ids[0])
    with pytest.raises(PackFormatError, match="in no index"):
        reader("0" * 64)


def test_the_packing_thread_makes_the_packs_one_thread_makes(monkeypatch):
    """New chunks reach the packing thread in batches: whatever the batches, the packs are
    the same chunks in the same order, cut at the same sizes, byte for byte."""
    config = ChunkConfig(os.urandom(32), ChunkerParameters(), pack_size=300_000)
    chunks = [os.urandom(70_000) for _ in range(9)] + [bytes(90_000)] * 3
    made = {}
    for batch_bytes in (1, 150_000, 1 << 30):  # a batch per chunk, a few, one at the end
        monkeypatch.setattr(packs_module, "BATCH_BYTES", batch_bytes)
        packs, writer, _ = write_chunks(config, chunks)
        made[batch_bytes] = [pack.data for pack in packs], b"".join(writer.index.stored())
    assert made[1] == made[150_000] == made[1 << 30]
    assert len(made[1][0]) == 2  # 5 chunks, then 4 and the zeros (stored once)


def test_a_pack_that_cannot_be_stored_fails_the_next_add_or_finish():
    config = ChunkConfig(os.urandom(32), ChunkerParameters(), pack_size=100_000)

    def refuse(pack: SealedPack) -> None:
        raise OSError("disk full")

    writer = ChunkWriter(config, (), set(), refuse)
    with pytest.raises(OSError, match="disk full"):
        for _ in range(40):  # 40 MiB: the packing thread's failure stops the writer
            writer.add(os.urandom(1 << 20))
        writer.finish()
    writer.close()
    writer = ChunkWriter(config, (), set(), refuse)
    writer.add(os.urandom(10_000))
    with pytest.raises(OSError, match="disk full"):
        writer.finish()
    writer.close()


def test_the_next_pack_is_compressed_while_a_pack_is_stored_and_one_waits_at_most(
    monkeypatch,
):
    # Each chunk a batch of its own; two chunks of 60,000 random bytes close a pack.
    monkeypatch.setattr(packs_module, "BATCH_BYTES", 1)
    config = ChunkConfig(os.urandom(32), ChunkerParameters(), pack_size=100_000)
    chunks = [os.urandom(60_000) for _ in range(8)]
    storing = threading.Event()
    stored: list[SealedPack] = []

    def slow_storage(pack: SealedPack) -> None:  # the first pack's write takes a while
        storing.wait(timeout=30)
        stored.append(pack)

    writer = ChunkWriter(config, (), set(), slow_storage)
    taken: list[str] = []
    adding = threading.Thread(target=lambda: taken.extend(writer.add(c) for c in chunks))
    adding.start()
    deadline = time.monotonic() + 10
    while len(taken) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # While the first pack is stored, the second is compressed and sealed (chunks 3, 4),
    # a fifth chunk waits in the queue; the sixth waits for the first pack to be stored.
    assert len(taken) == 5 and not stored
    storing.set()
    adding.join()
    writer.finish()
    writer.close()
    assert [[entry.chunk_id for entry in pack.entries] for pack in stored] == [
        taken[start : start + 2] for start in range(0, 8, 2)
    ]


def test_a_chunk_that_does_not_compress_is_stored_as_raw_zstd_blocks_any_decoder_reads():
    """zstd would find nothing in random data: such a chunk is stored as a frame of raw
    blocks (no zstd time spent on a large one), three bytes more than its plain bytes for
    every 128 KiB block and a header; a chunk that compresses is compressed, as before.
    Both are zstd frames that the pack reader, zstandard and `zstd -d` read back."""
    config = ChunkConfig(os.urandom(32), ChunkerParameters())
    noise = [os.urandom(size) for size in (5_000, 70_000, 131_072, 131_073, 262_144)]
    text = b"".join(b"line %d of a log that compresses\n" % number for number in range(3000))
    packs, _, _ = write_chunks(config, [*noise, text])
    opened = open_pack(packs[0].name, packs[0].data, None)
    frames = [opened.frame(entry) for entry in opened.entries]
    for chunk, frame in zip(noise, frames[:-1], strict=True):
        assert frame == raw_frame(chunk)
        assert len(frame) <= len(chunk) + 9 + 3 * (len(chunk) // (128 << 10) + 1)
        assert zstandard.ZstdDecompressor().decompress(frame) == chunk
        assert zstandard.frame_content_size(frame) == len(chunk)
    assert len(frames[-1]) < len(text) // 4
    assert [opened.chunk(entry) for entry in opened.entries] == [*noise, text]
    whole = b"".join(frames)
    assert subprocess.run(["zstd", "-dc"], input=whole, capture_output=True, check=True).stdout == (
        b"".join([*noise, text])
    )


@pytest.mark.parametrize("size", [1, 255, 256, 65_791, 65_792, 131_072, 131_073, 300_000])
def test_a_raw_frame_is_a_zstd_frame_of_that_content_at_every_size_boundary(size):
    data = os.urandom(size)
    assert zstandard.ZstdDecompressor().decompress(raw_frame(data)) == data


def test_chunks_given_as_views_of_buffers_reused_afterwards_are_stored_as_they_were():
    """The writer keeps a chunk given as a view of immutable bytes without copying it (it
    is packed later, on the packing thread), and copies one whose buffer may change."""
    config = ChunkConfig(os.urandom(32), ChunkerParameters())
    reused = bytearray(os.urandom(50_000))
    original = bytes(reused)
    source = os.urandom(60_000)
    packs: list[SealedPack] = []
    writer = ChunkWriter(config, (), set(), packs.append)
    ids = [writer.add(memoryview(reused)), writer.add(memoryview(source)[1000:])]
    reused[:] = bytes(len(reused))  # the giver reuses its buffer before the pack is made
    writer.finish()
    opened = open_pack(packs[0].name, packs[0].data, None)
    assert [opened.chunk(entry) for entry in opened.entries] == [original, source[1000:]]
    assert ids == [config.chunk_id(original), config.chunk_id(source[1000:])]


def test_a_reader_given_bytes_keeps_as_many_packs_as_fit_and_loads_each_once():
    config = ChunkConfig(os.urandom(32), ChunkerParameters(), pack_size=50_000)
    chunks = [os.urandom(100_000) for _ in range(4)]  # a pack each: ~100 kB stored
    packs, writer, ids = write_chunks(config, chunks)
    assert len(packs) == 4
    by_name = {pack.name: pack.data for pack in packs}
    located = {entry.chunk_id: entry for entry in index_of(writer)}
    loaded: list[str] = []

    def load(name: str) -> Pack:
        loaded.append(name)
        return open_pack(name, by_name[name], None)

    turns = 3 * ids[:3]  # three packs in turn, as a recipe's pieces of three backups
    by_count = ChunkReader(config, located.get, load)  # the last two packs kept
    assert [by_count(chunk_id) for chunk_id in turns] == 3 * chunks[:3]
    assert len(loaded) == 9  # each asked for again after two others: loaded again
    loaded.clear()
    by_bytes = ChunkReader(config, located.get, load, kept_bytes=350_000)
    assert [by_bytes(chunk_id) for chunk_id in turns] == 3 * chunks[:3]
    assert len(loaded) == 3
    loaded.clear()
    assert by_bytes(ids[3]) == chunks[3]  # a fourth does not fit: the oldest goes
    assert by_bytes(ids[1]) == chunks[1] and by_bytes(ids[0]) == chunks[0]
    assert loaded == [packs[3].name, packs[0].name]
