"""The blob store protocol, proven once for every backend: a local directory, and a bucket
on a real S3 server (SeaweedFS on loopback, SPEC §6), killed with -9 where that matters."""

from __future__ import annotations

import gc
import hashlib
import os
import random
import threading
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.config.model import S3StorageConfig, Source
from daemon.storage.base import BlobExists, BlobMissing, BlobStore, StoreUnavailable
from daemon.storage.local import LocalStore
from daemon.storage.s3 import PART_BUFFERS, PART_SIZE, S3Store, _PartBuffers
from daemon.system.owner import this_process
from tests.support.seaweed import S3Bucket, free_ports

pytestmark = pytest.mark.e2e

SOURCE = Source("volkeep.yaml", 1)
MIB = 1 << 20


def s3_config(bucket: S3Bucket, /, **changes: Any) -> S3StorageConfig:
    config = S3StorageConfig(
        name="offsite",
        source=SOURCE,
        bucket=bucket.name,
        prefix="prod/",
        endpoint=bucket.server.endpoint,
        region="us-east-1",
        path_style=True,
        credentials_file=bucket.credentials_file,
    )
    return replace(config, **changes)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalStore("local", tmp_path / "repo")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return S3Store(s3_config(bucket))


@pytest.fixture
def s3_store(s3_bucket: S3Bucket) -> S3Store:
    return S3Store(s3_config(s3_bucket))


def odd_pieces(data: bytes, seed: int = 7) -> Iterator[bytes]:
    """Cut `data` into pieces of odd, varying sizes (1 byte to a few MiB)."""
    chooser = random.Random(seed)
    position = 0
    while position < len(data):
        size = chooser.choice([1, 7, 4093, 65_537, 1_048_573, 3 * MIB + 11])
        yield data[position : position + size]
        position += size


# --- the protocol, for every backend --------------------------------------------------


def test_put_then_get_returns_the_same_bytes(store: BlobStore) -> None:
    store.put("host/app/data/a.manifest.json", b'{"id": 1}')
    store.put("host/app/data/pieces", [b"one ", b"two ", b"three"])

    assert store.get("host/app/data/a.manifest.json") == b'{"id": 1}'
    assert store.get("host/app/data/pieces") == b"one two three"
    assert store.exists("host/app/data/pieces")


def test_exclusive_put_refuses_an_existing_key_and_leaves_it_unchanged(store: BlobStore) -> None:
    store.put("host/app/data/a.manifest.json", b"first", exclusive=True)

    with pytest.raises(BlobExists):
        store.put("host/app/data/a.manifest.json", b"second", exclusive=True)

    assert store.get("host/app/data/a.manifest.json") == b"first"


def test_missing_blob_is_blob_missing_and_not_there(store: BlobStore) -> None:
    with pytest.raises(BlobMissing):
        store.get("host/app/data/nothing")
    with pytest.raises(BlobMissing):
        store.open("host/app/data/nothing")
    assert not store.exists("host/app/data/nothing")


def test_size_is_the_stored_length_without_reading_and_a_missing_blob_has_none(
    store: BlobStore,
) -> None:
    store.put("host/app/data/a.manifest.json", b'{"id": 1}')
    upload = store.create("host/app/data/a.tar.zst")
    upload.write(b"x" * (PART_SIZE + 123))
    upload.commit()

    assert store.size("host/app/data/a.manifest.json") == 9
    assert store.size("host/app/data/a.tar.zst") == PART_SIZE + 123
    with pytest.raises(BlobMissing):
        store.size("host/app/data/nothing")


def test_streamed_upload_is_invisible_until_commit(store: BlobStore) -> None:
    upload = store.create("host/app/data/a.tar.zst")
    upload.write(b"x" * (PART_SIZE + 123))  # on S3, one part is already uploaded

    assert list(store.list("")) == []
    assert not store.exists("host/app/data/a.tar.zst")
    with pytest.raises(BlobMissing):
        store.get("host/app/data/a.tar.zst")

    upload.write(b"tail")
    upload.commit()

    assert list(store.list("")) == ["host/app/data/a.tar.zst"]
    assert store.get("host/app/data/a.tar.zst") == b"x" * (PART_SIZE + 123) + b"tail"


def test_aborted_upload_leaves_nothing(store: BlobStore) -> None:
    upload = store.create("host/app/data/a.tar.zst")
    upload.write(os.urandom(PART_SIZE + 5))
    upload.abort()
    upload.abort()  # twice is no error

    assert list(store.list("")) == []
    assert not store.exists("host/app/data/a.tar.zst")
    assert store.incomplete("host/app/data/") == []


def test_empty_blob_round_trips(store: BlobStore) -> None:
    store.create("host/app/data/empty").commit()

    assert store.get("host/app/data/empty") == b""
    assert list(store.list("host/")) == ["host/app/data/empty"]


def test_30_mib_in_odd_sized_writes_round_trips_byte_for_byte(store: BlobStore) -> None:
    data = os.urandom(30 * MIB + 12_345)
    upload = store.create("host/app/data/big.tar.zst")
    for piece in odd_pieces(data):
        upload.write(piece)
    upload.commit()

    reader = store.open("host/app/data/big.tar.zst")
    try:
        pieces = list(iter(lambda: reader.read(1_000_003), b""))
    finally:
        reader.close()
    assert b"".join(pieces) == data
    assert store.get("host/app/data/big.tar.zst") == data


def test_list_reads_every_page_past_1000_keys_and_only_committed_ones(store: BlobStore) -> None:
    keys = [f"host/app/vol{number % 3}/blob-{number:05}" for number in range(1_100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: store.put(key, b"."), keys))
    store.put("other/app/vol0/blob", b".")
    unfinished = store.create("host/app/vol0/unfinished")
    unfinished.write(b"y" * (PART_SIZE + 1))

    listed = list(store.list("host/"))

    assert sorted(listed) == sorted(keys)
    assert sorted(store.list("host/app/vol1/")) == [key for key in keys if "/vol1/" in key]
    assert sorted(store.list("")) == sorted([*keys, "other/app/vol0/blob"])
    unfinished.abort()


def test_list_directory_names_its_blobs_and_subdirectories_and_reads_nothing_deeper(
    store: BlobStore,
) -> None:
    packs = [f"host/app/_chunks/packs/{number % 256:02x}/pack-{number}" for number in range(1_100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: store.put(key, b"."), packs))
    store.put("host/app/vol0/vol0-20250101T000000Z.manifest.json", b".")
    store.put("host/app/note", b".")
    unfinished = store.create("host/app/unfinished")
    unfinished.write(b"y" * (PART_SIZE + 1))

    assert sorted(store.list_directory("host/app/")) == ["_chunks/", "note", "vol0/"]
    assert sorted(store.list_directory("")) == ["host/"]
    assert list(store.list_directory("host/app/vol0/")) == ["vol0-20250101T000000Z.manifest.json"]
    assert list(store.list_directory("host/elsewhere/")) == []
    # past one page of 1,000: every subdirectory
    assert len(list(store.list_directory("host/app/_chunks/packs/"))) == 256
    unfinished.abort()


def test_delete_removes_the_blob_and_a_missing_one_is_no_error(store: BlobStore) -> None:
    store.put("host/app/data/a", b"a")
    store.put("host/app/data/b", b"b")

    store.delete("host/app/data/a")
    store.delete("host/app/data/never-was")

    assert list(store.list("")) == ["host/app/data/b"]
    assert not store.exists("host/app/data/a")


def test_incomplete_reports_the_uploads_directly_in_a_directory_and_removes_one(
    store: BlobStore,
) -> None:
    store.put("host/app/data/kept", b"kept")
    began = datetime.now(UTC)
    crashed = store.create("host/app/data/crashed.tar.zst")
    crashed.write(os.urandom(PART_SIZE))  # a whole part, then the process "dies"
    deeper = store.create("host/app/data/more/running.tar.zst")
    deeper.write(os.urandom(PART_SIZE))
    del crashed
    gc.collect()

    (upload,) = store.incomplete("host/app/data/")
    assert upload.key == "host/app/data/crashed.tar.zst"
    assert abs(upload.touched - began) < timedelta(minutes=1)
    # a file's writer is in its name; a multipart upload's is in the repository's claim
    assert upload.owner == (this_process() if isinstance(store, LocalStore) else None)
    store.remove_incomplete(upload)
    store.remove_incomplete(upload)  # twice is no error
    assert store.incomplete("host/app/data/") == []
    assert list(store.list("host/app/data/")) == ["host/app/data/kept"]
    deeper.write(b"end")
    deeper.commit()  # an upload in a subdirectory was left alone
    assert store.exists("host/app/data/more/running.tar.zst")
    assert abs(store.modified("host/app/data/kept") - began) < timedelta(minutes=1)


# --- S3: the real server dies, the configuration is wrong ----------------------------


def test_s3_large_upload_is_a_multipart_upload_of_several_parts(
    s3_store: S3Store, s3_bucket: S3Bucket
) -> None:
    upload = s3_store.create("host/app/data/big")
    for piece in odd_pieces(os.urandom(30 * MIB)):
        upload.write(piece)
    upload.commit()

    head = s3_bucket.server.client().head_object(
        Bucket=s3_bucket.name, Key="prod/host/app/data/big"
    )
    assert head["ETag"].strip('"').endswith("-4")  # 8 + 8 + 8 + 6 MiB
    assert head["ContentLength"] == 30 * MIB


def test_s3_long_upload_reuses_its_few_part_buffers_and_round_trips(s3_store: S3Store) -> None:
    """Ten parts through three buffers: each is reused (the bytes stay right) and sent as it
    is, so the upload's memory is its buffers, not parts copied or piling up."""
    s3_store.client()  # the client's own memory is not the upload's
    block = bytearray(os.urandom(MIB))
    written = hashlib.sha256()
    tracemalloc.start()
    try:
        upload = s3_store.create("host/app/data/long.tar.zst")
        for number in range(10 * PART_SIZE // MIB):
            block[:8] = number.to_bytes(8, "big")  # every MiB differs
            upload.write(block)
            written.update(block)
        upload.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < PART_BUFFERS * PART_SIZE + 4 * MIB, f"{peak / MIB:.1f} MiB"
    reader = s3_store.open("host/app/data/long.tar.zst")
    try:
        read = hashlib.sha256()
        for piece in iter(lambda: reader.read(MIB), b""):
            read.update(piece)
    finally:
        reader.close()
    assert read.hexdigest() == written.hexdigest()


def test_s3_part_buffers_are_bounded_reused_and_grow_with_the_parts() -> None:
    buffers = _PartBuffers(2)
    first, second = buffers.take(8), buffers.take(8)
    taken: list[bytearray] = []
    waiting = threading.Thread(target=lambda: taken.append(buffers.take(8)))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive()  # both are out: the writer waits

    buffers.give_back(first)
    waiting.join(5)
    assert taken == [first] and taken[0] is first  # the same buffer, reused
    buffers.give_back(second)
    larger = buffers.take(16)  # parts grew: the smaller buffer is dropped for a new one
    assert len(larger) == 16 and larger is not second


def test_s3_killed_mid_upload_commit_fails_and_a_restart_recovers(
    s3_store: S3Store, s3_bucket: S3Bucket
) -> None:
    server = s3_bucket.server
    upload = s3_store.create("host/app/data/interrupted.tar.zst")
    upload.write(os.urandom(2 * PART_SIZE))  # the multipart upload has begun
    server.kill()

    with pytest.raises(StoreUnavailable) as refused:
        upload.write(os.urandom(PART_SIZE // 2))
        upload.commit()
    upload.abort()  # never raises, even with the server gone
    server.start()

    assert_one_clear_sentence(refused.value, s3_bucket)
    fresh = s3_store.create("host/app/data/next.tar.zst")
    fresh.write(b"z" * (PART_SIZE + 1))
    fresh.commit()
    assert s3_store.get("host/app/data/next.tar.zst") == b"z" * (PART_SIZE + 1)
    (left,) = s3_store.incomplete("host/app/data/")
    assert left.key == "host/app/data/interrupted.tar.zst"
    s3_store.remove_incomplete(left)
    assert s3_store.incomplete("host/app/data/") == []
    assert list(s3_store.list("host/")) == ["host/app/data/next.tar.zst"]


def assert_one_clear_sentence(error: OSError, bucket: S3Bucket) -> str:
    message = str(error)
    assert message.startswith("storage 'offsite': "), message
    assert "\n" not in message
    assert bucket.server.secret_key not in message
    assert "Traceback" not in message
    assert " object at 0x" not in message and "Error(" not in message, message
    assert error.strerror == message
    return message


def test_s3_wrong_secret_key_is_refused_in_one_sentence(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    wrong = s3_bucket.server.credentials_file(
        tmp_path / "wrong.credentials", profile="backup", secret_key="not-the-secret-key"
    )
    store = S3Store(s3_config(s3_bucket, credentials_file=wrong, profile="backup"))

    with pytest.raises(StoreUnavailable) as refused:
        store.put("host/app/data/a", b"a")

    message = assert_one_clear_sentence(refused.value, s3_bucket)
    assert "credentials were refused (SignatureDoesNotMatch)" in message
    assert "not-the-secret-key" not in message


def test_s3_unknown_access_key_is_refused_in_one_sentence(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    unknown = tmp_path / "unknown.credentials"
    unknown.write_text("[default]\naws_access_key_id = NOBODY\naws_secret_access_key = nope\n")
    store = S3Store(s3_config(s3_bucket, credentials_file=unknown))

    with pytest.raises(StoreUnavailable) as refused:
        list(store.list(""))

    message = assert_one_clear_sentence(refused.value, s3_bucket)
    assert "credentials were refused (InvalidAccessKeyId)" in message


def test_s3_missing_bucket_is_named_in_one_sentence(s3_bucket: S3Bucket) -> None:
    store = S3Store(s3_config(s3_bucket, bucket="no-such-bucket"))
    expected = (
        f"storage 'offsite': bucket 'no-such-bucket' does not exist at {s3_bucket.server.endpoint}"
    )

    for operation in (
        lambda: store.put("host/a", b"a", exclusive=True),
        lambda: store.exists("host/a"),
        lambda: store.get("host/a"),
        lambda: list(store.list("host/")),
        lambda: store.incomplete("host/"),
        lambda: store.create("host/big").write(b"b" * PART_SIZE),
    ):
        with pytest.raises(StoreUnavailable) as refused:
            operation()
        assert assert_one_clear_sentence(refused.value, s3_bucket) == expected


@pytest.mark.timeout(60)  # "unreachable" must fail, within the retries' bounded time
def test_s3_unreachable_endpoint_fails_in_one_sentence(s3_bucket: S3Bucket) -> None:
    (nobody,) = free_ports(1)
    store = S3Store(s3_config(s3_bucket, endpoint=f"http://127.0.0.1:{nobody}"))

    with pytest.raises(StoreUnavailable) as refused:
        store.put("host/app/data/a", b"a")

    message = assert_one_clear_sentence(refused.value, s3_bucket)
    assert (
        message == f"storage 'offsite': cannot reach http://127.0.0.1:{nobody}: connection refused"
    )


def test_s3_describe_names_bucket_prefix_and_endpoint(s3_store: S3Store) -> None:
    assert s3_store.describe() == (
        f"s3://{s3_store.config.bucket}/prod/ at {s3_store.config.endpoint}"
    )
