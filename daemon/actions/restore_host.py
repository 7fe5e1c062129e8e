"""Restore onto the host, without the Docker engine: an archive into a directory
(`restore --to-dir DIR`), or one regular file's content to standard output (`restore --path
P --stdout`, for `| less` or `| psql`).

The archive is read as every restore reads it (`archive_chunks`: decrypted, decompressed,
each member through the one path-safety check and against the manifest, the stored bytes'
SHA-256 checked at the end) and written by daemon.archive.unpack, which never writes through
a symlink. Like `export`, these only read the repository: no volume lock, no helper, no
scratch volume, nothing in the state dir.

A directory: created if missing; one that holds anything needs --force, and then members
replace what is in their way (nothing else in it is deleted, and no safety copy is taken:
it is not a volume). A fault found late (the SHA-256 at the end) empties a directory that
was created or empty; one restored over with --force keeps what was written, and the error
says so. Standard output gets the file's bytes and nothing else; a fault found after some
went out ends the command with exit status 1 (a reader in a pipeline must heed it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.actions.context import Context
from daemon.actions.export import Sink
from daemon.archive.tarstream import normalize_path
from daemon.archive.unpack import DirectoryWriter, UnpackError, copy_member, members
from daemon.config.model import Policy
from daemon.errors import OperationError, UsageError
from daemon.repository.locate import locate
from daemon.repository.verify import StoredArchive, archive_chunks
from daemon.terminal.progress import Progress

log = structlog.get_logger()


@dataclass(frozen=True)
class HostRestore:
    """What was restored onto the host: which archive, from which storage, how many objects."""

    archive: str
    storage: str
    objects: int


def _open_archive(
    ctx: Context,
    policy: Policy,
    volume: str,
    archive_id: str | None,
    storage: str | None,
    host: str | None,
) -> StoredArchive:
    """Given the archive asked for, return it with its manifest read (the entries too).
    Raise OperationError if there is none, or it cannot be opened."""
    repository, key = locate(
        ctx.repositories(policy, storage=storage, host=host), policy.name, volume, archive_id
    )
    identities = ctx.identities(policy)
    manifest = repository.read_manifest(key, identities=identities)
    return StoredArchive(repository, key, manifest, identities)


def restore_to_directory(
    ctx: Context,
    policy: Policy,
    volume: str,
    archive_id: str | None,
    directory: Path,
    *,
    force: bool = False,
    storage: str | None = None,
    host: str | None = None,
) -> HostRestore:
    """Restore the volume's archive (`None` or "latest": the newest) into `directory` on
    the host (see the module's docstring).

    Raise OperationError if the directory holds something and `force` is not given, if it
    cannot be written, or if the archive is damaged, unsafe or not what its manifest lists.
    """
    created = not directory.exists()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        was_empty = created or not any(directory.iterdir())
    except OSError as error:
        raise OperationError(f"cannot use {directory}: {error.strerror or error}") from None
    if not was_empty and not force:
        raise OperationError(
            f"{directory} is not empty; use --force to write the archive over what is there"
        )
    archive = _open_archive(ctx, policy, volume, archive_id, storage, host)
    key = archive.key
    with structlog.contextvars.bound_contextvars(
        policy=policy.name, volume=volume, archive=key.id, directory=str(directory)
    ):
        log.info("restore into a directory started", storage=archive.repository.name)
        progress = Progress(f"restoring into {directory}", total=archive.manifest.tar_size)
        writer = DirectoryWriter(directory)
        try:
            count = writer.write_all(_counted(archive_chunks(archive), progress))
        except UnpackError as error:
            if was_empty:
                _empty(directory, remove=created)
            address = {"policy": policy.name, "volume": volume, "archive": key.id}
            raise OperationError(str(error), **address) from None
        except OperationError as error:
            if was_empty:
                _empty(directory, remove=created)
                raise
            error.message += f"; {directory} holds what was written before it was found"
            raise
        except BaseException:  # interrupted: a directory restored over keeps what it holds
            if was_empty:
                _empty(directory, remove=created)
            raise
        finally:
            writer.close()
        progress.finish()
        log.info("restore into a directory finished", objects=count)
        return HostRestore(key.id, archive.repository.name, count)


def _counted(chunks: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for chunk in chunks:
        progress.advance(len(chunk))
        yield chunk


def _empty(directory: Path, *, remove: bool) -> None:
    """Remove what a failed restore wrote in the directory (and the directory, if it made
    it); never follow a symlink out of it."""
    with contextlib.suppress(OSError):
        if remove:
            shutil.rmtree(directory)
            return
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def restore_file_to(
    ctx: Context,
    policy: Policy,
    volume: str,
    archive_id: str | None,
    path: str,
    sink: Sink,
    *,
    storage: str | None = None,
    host: str | None = None,
) -> HostRestore:
    """Write the content of the regular file at `path` in the volume's archive into
    `sink` (a hard link gives the file it links to).

    Raise UsageError if the archive holds no regular file at `path`; OperationError if the
    archive is damaged, unsafe or not what its manifest lists (then what `sink` received
    is not the file).
    """
    wanted = normalize_path(path)
    archive = _open_archive(ctx, policy, volume, archive_id, storage, host)
    key = archive.key
    entry = next((e for e in archive.manifest.entries if e.path == wanted), None)
    if entry is not None and entry.type == "hardlink" and entry.link is not None:
        wanted = entry.link
        entry = next((e for e in archive.manifest.entries if e.path == wanted), None)
    if entry is None or entry.type != "file":
        what = "nothing" if entry is None else f"a {entry.type}"
        raise UsageError(
            f"archive {key.id} of {volume} holds {what} at {path!r}; --stdout writes one "
            "regular file, named by its path as `volkeep list --files` shows it"
        )
    with structlog.contextvars.bound_contextvars(policy=policy.name, volume=volume, archive=key.id):
        # only the wanted member's content is read (of a deduplicated archive, its chunks)
        chunks = archive_chunks(archive, contents=lambda member: member.path == wanted)
        for info, member_path, tar in members(chunks):
            if member_path == wanted and info.isreg():
                copy_member(tar, info, sink)
        log.info("file written to standard output", path=wanted, bytes=entry.size)
        return HostRestore(key.id, archive.repository.name, 1)
