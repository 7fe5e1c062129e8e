"""Restore an archive into a volume.

1. Find the archive (the first of the policy's storages that holds it) and read its
   manifest; lock the source volume (no prune removes the archive meanwhile) and the target.
2. Never under a running application (SPEC promise 11): containers that use the target
   and run are refused, or with --stop-containers stopped through the crash-safe journal
   and started again after the restore.
3. Prepare the target: create it if missing. A non-empty target needs --force: its content
   is saved first as a safety archive while, at the same time, the archive is checked whole
   (SHA-256 and size, path safety, members against the manifest's entries); then the
   target is emptied (not with --path: a partial restore writes over what it restores).
4. Stream the archive, decompressed (and decrypted), into the Engine's archive endpoint on
   a helper container that mounts the target (dockerd extracts it, keeping ownership, modes
   and the mtimes of directories and symlinks, which busybox tar would drop). A target
   volkeep created, or found empty, is restored in one pass: the checks run as the archive
   streams, and a fault found late removes (or empties) the target again.
5. Create the symlinks the Engine refuses (relative targets that climb above the volume
   root: ordinary content, SPEC §5.5) as recorded, then give their parent directories and
   the volume root their recorded owner, mode and mtime.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import docker
import structlog

from daemon.actions.backup import BackupSource, back_up_volume, require_known_volume
from daemon.actions.context import Context
from daemon.archive.select import Selection, leaves_the_target, select_members
from daemon.archive.tarstream import Member
from daemon.config.model import Policy
from daemon.engine.containers import ContainerInfo, containers_using, stop_order
from daemon.engine.helpers import (
    WRITE_CAPABILITIES,
    Mount,
    helper_container,
    put_archive,
    run_helper,
)
from daemon.engine.journal import containers_stopped
from daemon.engine.leftovers import restoring_marker
from daemon.engine.volumes import VolumeInfo, create_volume, inspect_volume, remove_volume
from daemon.errors import EngineFailure, OperationError, UsageError
from daemon.repository.locate import locate
from daemon.repository.verify import StoredArchive, archive_chunks, verify_archive
from daemon.system.readahead import read_ahead
from daemon.terminal.progress import Progress

log = structlog.get_logger()
TARGET = "/dst"


@dataclass(frozen=True)
class RestoreRequest:
    """How to restore: from which storage and host, with --force, --stop-containers,
    --path."""

    storage: str | None = None
    host: str | None = None
    force: bool = False
    stop_containers: bool = False
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestoreResult:
    archive: str
    storage: str
    target: str
    created_target: bool
    safety_archive: str | None


def is_empty(api: docker.APIClient, image: str, volume: str, owner: str) -> bool:
    command = ["find", TARGET, "-mindepth", "1", "-maxdepth", "1"]
    code, listing, error = run_helper(
        api, image, command, [Mount(volume, TARGET)], owner=owner, limit=4096
    )
    if code != 0:
        raise OperationError(f"cannot list the target volume: {error}", volume=volume)
    return not listing


def empty_volume(api: docker.APIClient, image: str, volume: str) -> None:
    command = ["find", TARGET, "-mindepth", "1", "-maxdepth", "1", "-exec", "rm", "-rf", "{}", "+"]
    mounts = [Mount(volume, TARGET, read_only=False)]
    code, _, error = run_helper(api, image, command, mounts, capabilities=WRITE_CAPABILITIES)
    if code != 0:
        raise OperationError(f"cannot empty the target volume: {error}", volume=volume)


def extract_into(
    api: docker.APIClient,
    archive: StoredArchive,
    image: str,
    target: str,
    owner: str,
    selected: Selection | None = None,
) -> None:
    """Stream the archive (only the `selected` members, if given) into the target volume
    through the Engine's archive endpoint, checking it as it passes; then create the
    symlinks the Engine refuses and give the volume root its recorded owner, mode and
    mtime. Raise OperationError if the archive or the extraction fails."""
    manifest = archive.manifest
    deferred: list[Member] = []
    deferred_paths: set[str] = set()
    root: Member | None = None

    def include(member: Member) -> bool:
        nonlocal root
        if selected is not None and not selected.keeps(member):
            return False
        if member.path == ".":
            root = member
        to_a_deferred = member.type == "hardlink" and member.link in deferred_paths
        if leaves_the_target(member) or to_a_deferred:
            deferred.append(member)
            deferred_paths.add(member.path)
            return False
        return True

    progress = Progress(f"restoring into {target}", total=manifest.tar_size)
    with helper_container(api, image, ["true"], [Mount(target, TARGET, read_only=False)]) as helper:
        try:
            # The next pieces are read, checked and decompressed while dockerd takes these.
            pieces = read_ahead(archive_chunks(archive, include))
            put_archive(api, helper, TARGET, _counted(pieces, progress))
        except docker.errors.APIError as error:
            failure = f"the Docker engine failed to extract: {error.explanation}"
            raise EngineFailure(failure) from None
    progress.finish()
    if deferred:
        _create_links(api, image, target, owner, deferred, manifest.entries)
    if root is None or selected is not None:
        return
    fix_root = 'chown "$1" /dst && chmod "$2" /dst && touch -m -d "@$3" /dst'
    command = ["sh", "-c", fix_root, "volkeep", f"{root.uid}:{root.gid}", f"{root.mode:o}"]
    command.append(str(int(root.mtime)))
    _write_helper(
        api, image, target, owner, command, "cannot restore the volume root's owner and mode"
    )


# Positional arguments: the number of links, then per link its kind ("s" symlink, "h" hard
# link), path, target, owner and mtime; then pairs of directory and mtime to set again.
CREATE_LINKS = """
n=$1; shift
while [ "$n" -gt 0 ]; do
  if [ "$1" = s ]; then
    ln -s -- "$3" "/dst/$2" && chown -h "$4" "/dst/$2" && touch -h -m -d "@$5" "/dst/$2" || exit 1
  else
    ln -- "/dst/$3" "/dst/$2" || exit 1
  fi
  shift 5; n=$((n - 1))
done
while [ "$#" -gt 0 ]; do touch -m -d "@$2" "/dst/$1" || exit 1; shift 2; done
"""
LINKS_PER_HELPER = 500


def _create_links(
    api: docker.APIClient,
    image: str,
    target: str,
    owner: str,
    links: list[Member],
    entries: Iterable[Member],
) -> None:
    """Create the links the Engine's extractor refuses, as recorded, and give their parent
    directories their recorded mtime again (creating a link changes it)."""
    parents = {posixpath.dirname(link.path) or "." for link in links}
    directories = [entry for entry in entries if entry.type == "dir" and entry.path in parents]
    for start in range(0, len(links), LINKS_PER_HELPER):
        batch = links[start : start + LINKS_PER_HELPER]
        arguments = [str(len(batch))]
        for link in batch:
            kind = "s" if link.type == "symlink" else "h"
            owned = f"{link.uid}:{link.gid}"
            arguments += [kind, link.path, link.link or "", owned, str(int(link.mtime))]
        last = start + LINKS_PER_HELPER >= len(links)
        for directory in directories if last else []:
            arguments += [directory.path, str(int(directory.mtime))]
        command = ["sh", "-c", CREATE_LINKS, "volkeep", *arguments]
        _write_helper(api, image, target, owner, command, "cannot create the archive's symlinks")


def _write_helper(
    api: docker.APIClient, image: str, target: str, owner: str, command: list[str], doing: str
) -> None:
    mounts = [Mount(target, TARGET, read_only=False)]
    code, _, stderr = run_helper(
        api, image, command, mounts, capabilities=WRITE_CAPABILITIES, owner=owner
    )
    if code != 0:
        raise OperationError(f"{doing}: {stderr.strip()}")


def _counted(chunks: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for chunk in chunks:
        progress.advance(len(chunk))
        yield chunk


def restore_volume(
    ctx: Context,
    policy: Policy,
    volume: str,
    archive_id: str | None,
    target: str,
    request: RestoreRequest,
) -> RestoreResult:
    """Restore the archive (`None` or "latest": the newest) of `volume` into `target` as
    `request` says (see the module's docstring for the steps)."""
    api = ctx.docker()
    repositories = ctx.repositories(policy, storage=request.storage, host=request.host)
    require_known_volume(api, policy, volume, repositories)
    repository, key = locate(repositories, policy.name, volume, archive_id)
    with (
        structlog.contextvars.bound_contextvars(
            policy=policy.name, volume=volume, archive=key.id, target=target
        ),
        ctx.volume_locks([volume, target], f"restore of {policy.name}/{volume} into {target}"),
    ):
        log.info("restore started", storage=repository.name, host=repository.host)
        identities = ctx.identities(policy)
        manifest = repository.read_manifest(key, identities=identities)
        archive = StoredArchive(repository, key, manifest, identities, ctx.state_dir)
        selected = None
        if request.paths:
            selected = select_members(manifest.entries, request.paths)
            if not selected:
                raise UsageError(
                    f"no member of archive {key.id} matches --path {' '.join(request.paths)} "
                    "(see volkeep list --files)"
                )
        existing = inspect_volume(api, target)
        running = [c for c in containers_using(api, target) if c.running] if existing else []
        if running and not request.stop_containers:
            names = ", ".join(container.name for container in running)
            raise OperationError(
                f"target volume {target!r} is used by running containers ({names}): stop "
                "them, or add --stop-containers to have volkeep stop them for the restore"
            )
        created = existing is None
        with ExitStack() as marked:
            if created:
                labels = marked.enter_context(restoring_marker(ctx.state_dir, target))
                create_volume(api, target, labels)
            safety = _restore_into(
                ctx, api, policy, archive, target, existing, selected, running, request
            )
        log.info("restore finished", objects=manifest.entry_count, bytes=manifest.tar_size)
        return RestoreResult(key.id, repository.name, target, created, safety)


def _restore_into(
    ctx: Context,
    api: docker.APIClient,
    policy: Policy,
    archive: StoredArchive,
    target: str,
    existing: VolumeInfo | None,
    selected: Selection | None,
    running: list[ContainerInfo],
    request: RestoreRequest,
) -> str | None:
    """Steps 2 to 5 of a restore into the target (created if `existing` is None); return
    the safety archive's id, if one was taken. A created target is removed again on
    failure, one found empty is emptied again."""
    created = existing is None
    was_empty = created
    safety = None
    try:
        with containers_stopped(
            api, ctx.state_dir, policy.name, target, stop_order(running), policy.stop_timeout
        ):
            was_empty = created or is_empty(api, policy.helper_image, target, target)
            if not was_empty:
                if not request.force:
                    raise OperationError(
                        f"target volume {target!r} is not empty; use --force to replace "
                        "its content (it is saved first as a safety archive)"
                    )
                assert existing is not None
                safety = _save_and_check(ctx, api, policy, existing, archive)
                if selected is None:
                    if policy.exclude:  # they were never in the archive: say so
                        log.warning(
                            "the target's paths the policy excludes are deleted too; "
                            "they are kept only in the safety archive",
                            exclude=list(policy.exclude),
                            safety_archive=safety,
                        )
                    empty_volume(api, policy.helper_image, target)
            extract_into(api, archive, policy.helper_image, target, target, selected)
    except BaseException:
        if created:
            remove_volume(api, target)
        elif was_empty:
            with contextlib.suppress(OperationError, docker.errors.DockerException):
                empty_volume(api, policy.helper_image, target)
        raise
    return safety


def _save_and_check(
    ctx: Context,
    api: docker.APIClient,
    policy: Policy,
    existing: VolumeInfo,
    archive: StoredArchive,
) -> str:
    """Save the target's content as a safety archive in every storage of the policy while
    the archive to restore is checked whole; return the safety archive's id. Raise
    OperationError if either fails (nothing of the target is changed yet)."""
    source = BackupSource(
        policy.name,
        existing,
        policy.helper_image,
        policy.compression,
        ctx.compression_threads(),
        kind="safety",
        recipients=tuple(ctx.recipients(policy)),
    )
    with ThreadPoolExecutor(1, thread_name_prefix="volkeep-check") as pool:
        checking = pool.submit(verify_archive, archive)
        saved = back_up_volume(api, ctx.repositories(policy), source, spool_dir=ctx.state_dir)
        checking.result()
    log.info(
        "saved the target's content as a safety archive",
        safety_archive=saved.manifest.id,
        storages=[repository.name for repository in saved.repositories],
    )
    return saved.manifest.id
