"""Write an archive's members on the host: into a directory (`restore --to-dir`), or one
regular file's content into a stream (`restore --path P --stdout`).

The stream given here has passed the one path-safety check (daemon.archive.safety, run by
daemon.repository.verify as it streams): no absolute name, no `..`, nothing through a
symlink the archive made, no device node. What that check cannot see is the host directory
itself (with --force it may hold symlinks of its own), so every path is walked one
component at a time from the directory, each opened with O_NOFOLLOW: nothing is ever written
through a symlink, whoever made it. An object in the way of a member (a file where the
archive has a file, a symlink where it has a directory) is replaced, never followed.

The members are read on the caller's thread and written, in the stream's order, on one
thread of its own: creating a file is the costly part (some 100-600 µs of the kernel's time
each on ext4, most of a tiny file's restore), and done beside the decompression the two take
the time of the longer, not of both. At most QUEUED operations wait, each with at most
PIECE_SIZE bytes of content.

Owners are restored when this process runs as root (numeric ids, as recorded); modes and
mtimes always, and the extended attributes of regular files. A directory's owner, mode
and mtime are set once everything under it is written (a read-only directory would refuse
its children, and each child changes its mtime), so the directories are kept in memory
until the end: a few bytes each.
"""

from __future__ import annotations

import io
import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from daemon.archive.tarstream import normalize_path

COPY_SIZE = 1 << 20
PIECE_SIZE = 256 << 10  # of a regular file's content handed to the writing thread at once
QUEUED = 64  # operations waiting for the writing thread: at most 16 MiB of content
XATTR_PREFIX = "SCHILY.xattr."
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnpackError(Exception):
    """A member cannot be written on the host; the message names it."""


class _ChunkStream(io.RawIOBase):
    """A readable file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterable[bytes | memoryview]) -> None:
        self._chunks: Iterator[bytes | memoryview] = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk).cast("B")
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def members(
    chunks: Iterable[bytes | memoryview],
) -> Iterator[tuple[tarfile.TarInfo, str, tarfile.TarFile]]:
    """Given a tar stream in chunks, yield each member's header, its path relative to the
    volume root ("." for the root) and the open tar (to read a regular file's data)."""
    stream = io.BufferedReader(_ChunkStream(chunks), COPY_SIZE)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            yield info, normalize_path(info.name), tar
            # tarfile keeps every header it reads (to extract hard links itself); nothing
            # here asks it for one, and a million of them are hundreds of MiB
            tar.members.clear()  # type: ignore[attr-defined]  # (not in typeshed)


def copy_member(tar: tarfile.TarFile, info: tarfile.TarInfo, output: Writable) -> None:
    """Copy a regular member's data into `output`."""
    data = tar.extractfile(info)
    assert data is not None  # a regular member
    while piece := data.read(COPY_SIZE):
        output.write(piece)


@dataclass(frozen=True)
class _Directory:
    path: str
    mode: int
    uid: int
    gid: int
    mtime: float


class DirectoryWriter:
    """Writes members under `root` (an existing directory), never following a symlink."""

    def __init__(self, root: Path) -> None:
        self._root = os.open(root, DIRECTORY_FLAGS)
        self._root_path = root
        self._as_root = os.geteuid() == 0
        self._directories: list[_Directory] = []
        self._file = -1  # the regular file being written, on the writing thread

    def close(self) -> None:
        os.close(self._root)

    def write_all(self, chunks: Iterable[bytes | memoryview]) -> int:
        """Write every member of the stream, then give the directories (the root too) their
        recorded owner, mode and mtime; return how many members were written.

        Raise UnpackError if one cannot be written; whatever the stream raises, as it is.
        """
        count = 0
        writing = _Writing()
        try:
            for info, path, tar in members(chunks):
                if path == ".":
                    writing.submit(partial(self._directories.append, _directory(".", info)))
                    continue
                content = tar.extractfile(info) if info.isreg() else None
                piece = content.read(PIECE_SIZE) if content is not None else b""
                whole = len(piece) < PIECE_SIZE  # most files: one operation each
                writing.submit(partial(self._write, info, path, piece, whole))
                if content is not None and not whole:
                    while piece := content.read(PIECE_SIZE):
                        writing.submit(partial(self._append, path, piece))
                    writing.submit(partial(self._seal_file, info, path))
                count += 1
        except BaseException:
            writing.stop()
            raise
        finally:
            writing.join()
            if self._file >= 0:  # a failure in the middle of a file
                os.close(self._file)
                self._file = -1
        for directory in reversed(self._directories):  # children before their parents
            self._finish_directory(directory)
        return count

    @contextmanager
    def _parent_of(self, path: str) -> Iterator[tuple[int, str]]:
        """Yield an open descriptor of the member's parent directory and its own name,
        walked from the root without following a symlink."""
        *parents, name = path.split("/")
        with ExitStack() as opened:
            current = self._root
            for depth, part in enumerate(parents):
                try:
                    current = os.open(part, DIRECTORY_FLAGS, dir_fd=current)
                except OSError as error:
                    where = "/".join(parents[: depth + 1])
                    raise UnpackError(
                        f"cannot write {path!r}: {self._root_path / where} is not a directory "
                        f"of this restore ({error.strerror}); nothing is written through it"
                    ) from None
                opened.callback(os.close, current)
            yield current, name

    def _write(self, info: tarfile.TarInfo, path: str, piece: bytes, whole: bool) -> None:
        """Write the member. Of a regular file, create it with its first piece of content;
        if that is the `whole` of it, seal it, else leave it open for the rest."""
        with self._parent_of(path) as (parent, name):
            self._write_in(info, path, piece, whole, parent, name)

    def _write_in(
        self, info: tarfile.TarInfo, path: str, piece: bytes, whole: bool, parent: int, name: str
    ) -> None:
        try:
            if info.isdir():
                self._make_directory(parent, name)
                self._directories.append(_directory(path, info))
                return
            if info.isreg():
                self._file = self._create(parent, name, path)
                _write_whole(self._file, piece)
                if whole:
                    self._seal_file(info, path)
                return
            self._clear(parent, name, path)
            if info.issym():
                os.symlink(info.linkname, name, dir_fd=parent)
                self._own(name, info, parent)
                os.utime(name, (info.mtime, info.mtime), dir_fd=parent, follow_symlinks=False)
            elif info.islnk():
                with self._parent_of(normalize_path(info.linkname)) as (source, source_name):
                    os.link(
                        source_name, name, src_dir_fd=source, dst_dir_fd=parent,
                        follow_symlinks=False,
                    )  # fmt: skip
            elif info.isfifo():
                os.mkfifo(name, 0o600, dir_fd=parent)
                self._own(name, info, parent)
                os.chmod(name, info.mode, dir_fd=parent)
                os.utime(name, (info.mtime, info.mtime), dir_fd=parent)
            else:  # the path-safety check refuses device nodes before they come here
                raise UnpackError(f"cannot write {path!r}: a {info.type!r} member")
        except OSError as error:
            raise UnpackError(f"cannot write {path!r}: {error.strerror or error}") from None

    def _make_directory(self, parent: int, name: str) -> None:
        """Create the directory, or keep one already there (never a symlink to one)."""
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=parent)
                os.mkdir(name, 0o700, dir_fd=parent)

    def _create(self, parent: int, name: str, path: str) -> int:
        """Create the regular file and return its descriptor, open for writing; what is in
        its way is cleared first (tried after, as a restore into an empty directory finds
        nothing there)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(name, flags, 0o600, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, name, path)
            return os.open(name, flags, 0o600, dir_fd=parent)

    def _clear(self, parent: int, name: str, path: str) -> None:
        """Remove what is in the way of a member that is not a directory (a directory in the
        way is refused: its content is not the archive's to delete)."""
        try:
            found = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(found.st_mode):
            raise UnpackError(f"cannot write {path!r}: a directory is in its place")
        os.unlink(name, dir_fd=parent)

    def _append(self, path: str, piece: bytes) -> None:
        try:
            _write_whole(self._file, piece)
        except OSError as error:
            raise UnpackError(f"cannot write {path!r}: {error.strerror or error}") from None

    def _seal_file(self, info: tarfile.TarInfo, path: str) -> None:
        """Given the regular file just written, set its owner, mode, attributes and mtime,
        and close it."""
        descriptor, self._file = self._file, -1
        try:
            if self._as_root:
                os.fchown(descriptor, info.uid, info.gid)
            os.fchmod(descriptor, info.mode)  # after chown, which clears set-id bits
            _set_xattrs(descriptor, info.pax_headers)
            os.utime(descriptor, (info.mtime, info.mtime))
        except OSError as error:
            raise UnpackError(f"cannot write {path!r}: {error.strerror or error}") from None
        finally:
            os.close(descriptor)

    def _own(self, name: str, info: tarfile.TarInfo, parent: int) -> None:
        if self._as_root:
            os.chown(name, info.uid, info.gid, dir_fd=parent, follow_symlinks=False)

    def _finish_directory(self, directory: _Directory) -> None:
        opened = self._root
        with ExitStack() as held:
            if directory.path != ".":
                parent, name = held.enter_context(self._parent_of(directory.path))
                opened = os.open(name, DIRECTORY_FLAGS, dir_fd=parent)
                held.callback(os.close, opened)
            try:
                if self._as_root:
                    os.fchown(opened, directory.uid, directory.gid)
                os.fchmod(opened, directory.mode)
                os.utime(opened, (directory.mtime, directory.mtime))
            except OSError as error:
                raise UnpackError(
                    f"cannot set the owner, mode or mtime of {directory.path!r}: "
                    f"{error.strerror or error}"
                ) from None


class _Writing:
    """Runs operations one after the other, in the order given, on a thread of its own."""

    def __init__(self) -> None:
        self._operations: queue.Queue[Callable[[], None] | None] = queue.Queue(QUEUED)
        self._failure: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="unpack", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (operation := self._operations.get()) is not None:
            if self._failure is None and not self._stopped:  # after either, drain only
                try:
                    operation()
                except BaseException as error:  # handed to the caller's thread
                    self._failure = error

    def submit(self, operation: Callable[[], None]) -> None:
        """Queue the operation (waiting while QUEUED are). Raise what an earlier one raised."""
        if self._failure is not None:
            raise self._failure
        self._operations.put(operation)

    def stop(self) -> None:
        """Run nothing more of what is queued."""
        self._stopped = True

    def join(self) -> None:
        """Wait until every operation queued has run (or, stopped, been passed by). Raise what
        one raised, unless stopped."""
        self._operations.put(None)
        self._thread.join()
        if self._failure is not None and not self._stopped:
            raise self._failure


def _write_whole(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def _directory(path: str, info: tarfile.TarInfo) -> _Directory:
    return _Directory(path, info.mode, info.uid, info.gid, info.mtime)


def _set_xattrs(descriptor: int, headers: Mapping[str, str]) -> None:
    """Set the extended attributes the member's PAX headers carry (as GNU tar and the
    Engine's extractor write and read them)."""
    for key, value in headers.items():
        if key.startswith(XATTR_PREFIX):
            raw = value.encode("utf-8", "surrogateescape")
            os.setxattr(descriptor, key.removeprefix(XATTR_PREFIX), raw)
