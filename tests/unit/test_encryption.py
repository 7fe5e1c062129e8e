"""Encrypted archives are standard age files, streamed in flat memory, and keep keys secret."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import pickle
import random
import shlex
import shutil
import subprocess
import tarfile
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from pyrage import x25519

from daemon.archive.encryption import (
    ArchiveModified,
    NoIdentityMatches,
    decrypting_reader,
    encrypting_writer,
)
from daemon.config.keys import (
    EncryptionError,
    Identities,
    Recipient,
    load_identities,
    load_recipients_file,
    parse_recipient,
    recipient_strings,
)

CHUNK = 64 << 10  # age's payload chunk


class Key:
    """An age key pair, its identity file, and the secret to look for in messages."""

    def __init__(self, directory: Path, name: str) -> None:
        native = x25519.Identity.generate()
        self.secret = str(native)
        self.public = str(native.to_public())
        self.recipient = parse_recipient(self.public)
        self.path = directory / f"{name}.txt"
        write_private(self.path, f"# created: test\n# public key: {self.public}\n{self.secret}\n")

    def identities(self) -> Identities:
        return load_identities(self.path)


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return Key(tmp_path, "key")


@pytest.fixture
def other_key(tmp_path: Path) -> Key:
    return Key(tmp_path, "other")


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test() -> Iterator[None]:
    yield
    left = [
        thread.name for thread in threading.enumerate() if thread.name.startswith("volkeep-age")
    ]
    assert left == []


def encrypt(data: bytes, recipients: list[Recipient], seed: int = 0, limit: int = 1 << 20) -> bytes:
    """Write `data` through the encrypting writer in random-sized pieces."""
    chooser = random.Random(seed)
    sink = io.BytesIO()
    writer = encrypting_writer(sink, recipients, limit=limit)
    offset = 0
    while offset < len(data):
        size = chooser.choice([1, 7, CHUNK - 1, CHUNK, CHUNK + 1, chooser.randint(1, 3 * CHUNK)])
        writer.write(data[offset : offset + size])
        offset += size
    writer.finish()
    return sink.getvalue()


def decrypt(
    ciphertext: bytes,
    identities: Identities,
    seed: int = 0,
    limit: int = 1 << 20,
    encrypted_to: tuple[str, ...] = (),
) -> bytes:
    """Read all of `ciphertext` through the decrypting reader in random-sized reads."""
    chooser = random.Random(seed)
    reader = decrypting_reader(
        io.BytesIO(ciphertext), identities, encrypted_to=encrypted_to, limit=limit
    )
    with reader:
        pieces = []
        while piece := reader.read(chooser.choice([1, 13, CHUNK - 1, CHUNK + 1, 1 << 20])):
            pieces.append(piece)
    return b"".join(pieces)


def run_age(*arguments: str, data: bytes) -> bytes:
    age = shutil.which("age")
    if age is None:
        pytest.skip("the age command-line tool is not installed (Debian package age)")
    done = subprocess.run([age, *arguments], input=data, capture_output=True, check=True)
    return done.stdout


def ssh_key(directory: Path, name: str, passphrase: str = "") -> Path:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        pytest.skip("ssh-keygen is not installed (Debian package openssh-client)")
    path = directory / name
    command = [keygen, "-q", "-t", "ed25519", "-N", passphrase, "-C", "test@host", "-f", str(path)]
    subprocess.run(command, check=True)
    return path


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 1, 2 * CHUNK, 2 * CHUNK + 1, 1_000_003],
)
@pytest.mark.parametrize("limit", [4 << 10, 1 << 20])
def test_round_trip_in_odd_pieces_around_the_age_chunk(key: Key, size: int, limit: int) -> None:
    data = os.urandom(size)
    ciphertext = encrypt(data, [key.recipient], seed=size, limit=limit)
    assert ciphertext.startswith(b"age-encryption.org/v1\n")
    assert decrypt(ciphertext, key.identities(), seed=size, limit=limit) == data


def test_a_buffer_the_caller_reuses_after_write_is_encrypted_as_it_was(key: Key) -> None:
    buffer = bytearray(b"a" * 100_000)
    sink = io.BytesIO()
    writer = encrypting_writer(sink, [key.recipient])
    writer.write(buffer)
    buffer[:] = b"b" * 100_000
    writer.write(memoryview(buffer)[:10])
    writer.finish()
    assert decrypt(sink.getvalue(), key.identities()) == b"a" * 100_000 + b"b" * 10


def test_either_of_several_recipients_decrypts(key: Key, other_key: Key, tmp_path: Path) -> None:
    ssh_path = ssh_key(tmp_path, "id_ed25519")
    ssh_recipient = parse_recipient(ssh_path.with_suffix(".pub").read_text())
    data = os.urandom(3 * CHUNK + 5)
    ciphertext = encrypt(data, [key.recipient, other_key.recipient, ssh_recipient])
    assert decrypt(ciphertext, key.identities()) == data
    assert decrypt(ciphertext, other_key.identities()) == data
    assert decrypt(ciphertext, load_identities(ssh_path)) == data


def test_an_identity_file_with_old_and_new_keys_opens_archives_for_either(
    key: Key, other_key: Key, tmp_path: Path
) -> None:
    rotated = tmp_path / "rotated.txt"
    write_private(
        rotated,
        f"# old key, kept for old archives\n{key.secret}\n\n# new key\n{other_key.secret}\n",
    )
    identities = load_identities(rotated)
    assert len(identities) == 2
    old_archive = encrypt(b"before the rotation", [key.recipient])
    new_archive = encrypt(b"after the rotation", [other_key.recipient])
    assert decrypt(old_archive, identities) == b"before the rotation"
    assert decrypt(new_archive, identities) == b"after the rotation"


def test_the_wrong_identity_says_no_identity_matches_and_names_the_recipients(
    key: Key, other_key: Key
) -> None:
    ciphertext = encrypt(os.urandom(10_000), [key.recipient])
    with pytest.raises(NoIdentityMatches) as raised:
        decrypt(ciphertext, other_key.identities(), encrypted_to=(key.public,))
    assert str(raised.value) == f"no identity matches: the archive is encrypted to {key.public}"
    assert other_key.secret not in str(raised.value)


def test_a_flipped_byte_in_the_middle_of_the_ciphertext_says_the_archive_was_modified(
    key: Key,
) -> None:
    ciphertext = bytearray(encrypt(os.urandom(5 * CHUNK), [key.recipient]))
    ciphertext[len(ciphertext) // 2] ^= 0x01
    with pytest.raises(ArchiveModified, match="the archive was modified"):
        decrypt(bytes(ciphertext), key.identities())


def test_a_flipped_byte_in_the_header_mac_says_the_archive_was_modified(key: Key) -> None:
    ciphertext = bytearray(encrypt(b"small", [key.recipient]))
    mac = ciphertext.index(b"\n--- ") + 6
    ciphertext[mac] = ord("A") if ciphertext[mac] != ord("A") else ord("B")
    with pytest.raises(ArchiveModified, match="the archive was modified"):
        decrypt(bytes(ciphertext), key.identities())


def test_a_cut_short_ciphertext_fails_with_an_encryption_error(key: Key) -> None:
    ciphertext = encrypt(os.urandom(3 * CHUNK), [key.recipient])
    header = ciphertext.index(b"\n--- ") + 1
    payload = ciphertext.index(b"\n", header) + 1
    cuts = [0, 10, header, payload, payload + 16, payload + CHUNK + 16, len(ciphertext) - 1]
    for cut in cuts:
        with pytest.raises(ArchiveModified, match="the archive was modified or cut short"):
            decrypt(ciphertext[:cut], key.identities())


def test_bytes_appended_after_the_last_chunk_say_the_archive_was_modified(key: Key) -> None:
    ciphertext = encrypt(os.urandom(CHUNK), [key.recipient])
    with pytest.raises(ArchiveModified, match="the archive was modified"):
        decrypt(ciphertext + b"\n", key.identities())


def test_stock_age_and_zstd_and_tar_restore_what_the_writer_produced(
    key: Key, tmp_path: Path
) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command-line tool is not installed (Debian package zstd)")
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as archive:
        for name, content in [("data/a.txt", b"hello\n"), ("data/big.bin", os.urandom(300_000))]:
            member = tarfile.TarInfo(name)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    archive_path = tmp_path / "vol-20261128T030000Z.tar.zst.age"
    archive_path.write_bytes(
        encrypt(zstandard.ZstdCompressor().compress(tar_bytes.getvalue()), [key.recipient])
    )
    target = tmp_path / "restored"
    target.mkdir()
    run_age("--version", data=b"")
    quoted = [shlex.quote(str(path)) for path in (key.path, archive_path, target)]
    pipeline = "age -d -i {} {} | zstd -d | tar -x -C {}".format(*quoted)
    subprocess.run(["sh", "-c", f"set -e; {pipeline}"], check=True)
    assert (target / "data/a.txt").read_bytes() == b"hello\n"
    assert (target / "data/big.bin").stat().st_size == 300_000


def test_stock_age_decrypts_with_an_ssh_identity_what_the_writer_encrypted_to_it(
    tmp_path: Path,
) -> None:
    ssh_path = ssh_key(tmp_path, "id_ed25519")
    recipient = parse_recipient(ssh_path.with_suffix(".pub").read_text())
    data = os.urandom(2 * CHUNK + 3)
    assert run_age("-d", "-i", str(ssh_path), data=encrypt(data, [recipient])) == data


def test_the_reader_opens_what_stock_age_encrypted(key: Key, other_key: Key) -> None:
    data = os.urandom(4 * CHUNK + 17)
    ciphertext = run_age("-e", "-r", key.public, "-r", other_key.public, data=data)
    assert decrypt(ciphertext, key.identities()) == data
    assert decrypt(ciphertext, other_key.identities()) == data


def test_no_secret_reaches_a_message_or_a_repr(key: Key, tmp_path: Path) -> None:
    identities = key.identities()
    shown = [repr(identities), str(identities)]
    with pytest.raises(TypeError):
        pickle.dumps(identities)
    for text in [key.secret, key.secret.lower(), f"  {key.secret}  "]:
        with pytest.raises(EncryptionError) as raised:
            parse_recipient(text)
        shown.append(str(raised.value))
    damaged = key.secret[:-6] + ("QQQQQQ" if not key.secret.endswith("QQQQQQ") else "PPPPPP")
    bad_file = tmp_path / "bad.txt"
    write_private(bad_file, f"{key.secret}\n{damaged}\n")
    with pytest.raises(EncryptionError) as raised:
        load_identities(bad_file)
    shown.append(str(raised.value))
    assert str(raised.value) == f"{bad_file}:2: not an age identity"
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"{key.public}\n{key.secret}\n")
    with pytest.raises(EncryptionError) as raised:
        load_recipients_file(recipients_file)
    shown.append(str(raised.value))
    assert str(raised.value).startswith(f"{recipients_file}:2: an age identity (a secret key)")
    with pytest.raises(NoIdentityMatches) as raised:
        decrypt(encrypt(b"x", [parse_recipient(Key(tmp_path, "third").public)]), identities)
    shown.append(str(raised.value))
    secret_part = key.secret.removeprefix("AGE-SECRET-KEY-1")
    for text in shown:
        assert secret_part not in text.upper()
        assert damaged.removeprefix("AGE-SECRET-KEY-1") not in text.upper()


def test_an_ssh_identity_with_a_passphrase_is_refused_without_its_content(tmp_path: Path) -> None:
    path = ssh_key(tmp_path, "id_locked", passphrase="correct horse")
    with pytest.raises(EncryptionError) as raised:
        load_identities(path)
    assert str(raised.value) == (
        f"identity file {path}: a passphrase-protected ssh key"
        " (remove the passphrase or use an age key)"
    )


@pytest.mark.parametrize(("mode", "too_open"), [(0o600, False), (0o400, False), (0o640, True)])
def test_an_identity_file_readable_by_group_or_others_is_flagged(
    key: Key, mode: int, too_open: bool
) -> None:
    key.path.chmod(mode)
    assert key.identities().too_open is too_open


def test_an_identity_file_with_mode_0644_is_flagged_as_too_open(key: Key) -> None:
    key.path.chmod(0o644)
    assert key.identities().too_open


def refusal(load: Callable[[Path], object], path: Path) -> str:
    with pytest.raises(EncryptionError) as raised:
        load(path)
    return str(raised.value)


def test_identity_file_errors_name_the_file(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    assert refusal(load_identities, gone) == f"identity file {gone}: no such file or directory"
    assert refusal(load_identities, tmp_path) == f"identity file {tmp_path}: is a directory"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert refusal(load_identities, fifo) == f"identity file {fifo} is not a regular file"
    comments = tmp_path / "comments.txt"
    write_private(comments, "# nothing but a comment\n\n")
    assert refusal(load_identities, comments) == f"identity file {comments} holds no identity"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    assert refusal(load_identities, binary) == f"identity file {binary} is not text"
    locked = tmp_path / "locked.age"
    locked.write_bytes(encrypt(b"AGE-SECRET-KEY-1...", [Key(tmp_path, "k").recipient]))
    assert refusal(load_identities, locked) == (
        f"identity file {locked} is itself encrypted (age -p); give it decrypted, mode 0600"
    )
    plugin = tmp_path / "plugin.txt"
    write_private(plugin, "# a yubikey\nAGE-PLUGIN-YUBIKEY-1QQQQQQ\n")
    assert refusal(load_identities, plugin) == f"{plugin}:2: plugin identities are not supported"


def test_a_recipients_file_skips_comments_and_blank_lines(
    key: Key, other_key: Key, tmp_path: Path
) -> None:
    path = tmp_path / "recipients.txt"
    path.write_text(f"# team\n{key.public}\n\n   # rotated in\n  {other_key.public}  \n")
    recipients = load_recipients_file(path)
    assert recipient_strings(recipients) == [key.public, other_key.public]
    empty = tmp_path / "empty.txt"
    empty.write_text("# none yet\n")
    assert refusal(load_recipients_file, empty) == f"recipients file {empty} holds no recipient"
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{key.public}\nage1notakey\n")
    assert refusal(load_recipients_file, bad).startswith(
        f"{bad}:2: invalid age recipient 'age1notakey'"
    )
    assert refusal(load_recipients_file, tmp_path / "absent.txt") == (
        f"recipients file {tmp_path / 'absent.txt'}: no such file or directory"
    )


def test_recipients_parse_to_their_canonical_public_strings(key: Key) -> None:
    assert parse_recipient(f"  {key.public.upper()}\n").text == key.public
    ssh_public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    assert parse_recipient(f"{ssh_public} alice@laptop").text == ssh_public
    assert str(parse_recipient(ssh_public)) == ssh_public
    with pytest.raises(EncryptionError, match="unsupported ssh key type 'ssh-dss'"):
        parse_recipient("ssh-dss AAAAB3NzaC1kc3M")
    with pytest.raises(EncryptionError, match="unsupported age recipient type 'age1yubikey'"):
        parse_recipient("age1yubikey1qwertyqwerty")
    with pytest.raises(EncryptionError, match=r"^not a recipient"):
        parse_recipient("hunter2")
    with pytest.raises(EncryptionError, match="at least one recipient"):
        encrypting_writer(io.BytesIO(), [])


class FailingSink:
    def __init__(self, fail_after: int) -> None:
        self.writes = 0
        self.fail_after = fail_after

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes > self.fail_after:
            raise OSError(28, "No space left on device")
        return len(data)


def test_a_failing_sink_raises_its_own_error_and_stops_the_stream(key: Key) -> None:
    writer = encrypting_writer(FailingSink(fail_after=1), [key.recipient], limit=64 << 10)
    with pytest.raises(OSError, match="No space left on device"):
        for _ in range(100):
            writer.write(os.urandom(CHUNK))
        writer.finish()
    with pytest.raises(ValueError, match="finished or closed"):
        writer.write(b"more")


def test_closing_an_unfinished_writer_abandons_it(key: Key) -> None:
    sink = io.BytesIO()
    with encrypting_writer(sink, [key.recipient]) as writer:
        writer.write(os.urandom(3 * CHUNK))
    with pytest.raises(ArchiveModified):
        decrypt(sink.getvalue(), key.identities())


def test_a_writer_dropped_unfinished_frees_its_worker(key: Key) -> None:
    writer = encrypting_writer(io.BytesIO(), [key.recipient])
    writer.write(os.urandom(CHUNK))
    worker_thread = next(t for t in threading.enumerate() if t.name == "volkeep-age-encrypt")
    del writer
    gc.collect()
    worker_thread.join(timeout=10)
    assert not worker_thread.is_alive()


class ThreadRecorder:
    """A sink and a source that note which thread calls them."""

    def __init__(self, data: bytes = b"") -> None:
        self.threads: set[int] = set()
        self.written = io.BytesIO()
        self._data = io.BytesIO(data)

    def write(self, data: bytes) -> int:
        self.threads.add(threading.get_ident())
        return self.written.write(data)

    def read(self, size: int) -> bytes:
        self.threads.add(threading.get_ident())
        return self._data.read(size)


def test_the_sink_and_the_source_are_only_called_from_the_callers_thread(key: Key) -> None:
    data = os.urandom(40 * CHUNK)
    sink = ThreadRecorder()
    writer = encrypting_writer(sink, [key.recipient], limit=64 << 10)
    for offset in range(0, len(data), 100_000):
        writer.write(data[offset : offset + 100_000])
    writer.finish()
    source = ThreadRecorder(sink.written.getvalue())
    with decrypting_reader(source, key.identities(), limit=64 << 10) as reader:
        assert reader.read() == data
    assert sink.threads == source.threads == {threading.get_ident()}


def test_after_close_the_sink_is_never_written_again(key: Key) -> None:
    sink = ThreadRecorder()
    writer = encrypting_writer(sink, [key.recipient], limit=64 << 10)
    for _ in range(20):
        writer.write(os.urandom(CHUNK))
    writer.close()
    written = sink.written.tell()
    with pytest.raises(ValueError, match="finished or closed"):
        writer.write(b"more")
    assert sink.written.tell() == written


class FailingSource:
    def __init__(self, data: bytes, fail_at: int) -> None:
        self._data = io.BytesIO(data)
        self._fail_at = fail_at

    def read(self, size: int) -> bytes:
        if self._data.tell() >= self._fail_at:
            raise ConnectionResetError("the storage hung up")
        return self._data.read(size)


def test_a_failing_source_raises_its_own_error(key: Key) -> None:
    ciphertext = encrypt(os.urandom(20 * CHUNK), [key.recipient])
    reader = decrypting_reader(FailingSource(ciphertext, 5 * CHUNK), key.identities())
    with pytest.raises(ConnectionResetError, match="hung up"):
        while reader.read(CHUNK):
            pass


def test_a_reader_closed_early_stops_its_worker(key: Key) -> None:
    ciphertext = encrypt(os.urandom(40 * CHUNK), [key.recipient])
    with decrypting_reader(io.BytesIO(ciphertext), key.identities(), limit=64 << 10) as reader:
        assert len(reader.read(1000)) == 1000
    with pytest.raises(ValueError, match="closed"):
        reader.read(10)


class RandomSource:
    """Random bytes, made as they are read, so the input itself takes no memory."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.sha256 = hashlib.sha256()

    def read(self, size: int) -> bytes:
        data = os.urandom(min(size, self.left))
        self.left -= len(data)
        self.sha256.update(data)
        return data


def test_64_mib_stream_through_writer_and_reader_in_flat_memory(key: Key, tmp_path: Path) -> None:
    identities = key.identities()
    source = RandomSource(64 << 20)
    stored = tmp_path / "archive.age"
    tracemalloc.start()
    try:
        with stored.open("wb") as sink:
            writer = encrypting_writer(sink, [key.recipient])
            while data := source.read(1 << 20):
                writer.write(data)
            writer.finish()
        _, writer_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        plain = hashlib.sha256()
        with stored.open("rb") as stream, decrypting_reader(stream, identities) as reader:
            while data := reader.read(1 << 20):
                plain.update(data)
        _, reader_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plain.hexdigest() == source.sha256.hexdigest()
    assert writer_peak < 6 << 20
    assert reader_peak < 6 << 20
