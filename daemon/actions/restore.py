"""Restore an archive into a volume.

1. Find the archive and read its manifest.
2. Check it whole before touching any volume: SHA-256 and size against the manifest, every
   member header against the path-safety rules and against the manifest's entries.
3. Prepare the target: create it if missing; a non-empty target needs --force, and then its
   content is first saved as a safety archive and the target emptied.
4. Stream the archive again, decompressed, into the Engine's archive endpoint on a helper
   container that mounts the target (dockerd extracts it, keeping ownership, modes and the
   mtimes of directories and symlinks, which busybox tar would drop); re-check the SHA-256.
5. Give the volume root its recorded owner, mode and mtime (the Engine skips the root).
A target volkeep created is removed again if the restore fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import docker
import structlog

from daemon.actions.backup import BackupSource, back_up_volume
from daemon.actions.context import Context
from daemon.archive.verify import Verified, archive_chunks, verify_archive
from daemon.config.model import Policy
from daemon.docker.helpers import (
    WRITE_CAPABILITIES,
    Mount,
    helper_container,
    put_archive,
    run_helper,
)
from daemon.docker.volumes import create_volume, inspect_volume, remove_volume
from daemon.errors import OperationError
from daemon.progress import Progress
from daemon.readahead import read_ahead
from daemon.repository import locate

log = structlog.get_logger()
TARGET = "/dst"


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
    api: docker.APIClient, checked: Verified, image: str, target: str, owner: str
) -> None:
    """Stream the checked archive into the target volume through the Engine's archive
    endpoint, then give the volume root its recorded owner, mode and mtime."""
    manifest = checked.manifest
    progress = Progress(f"restoring into {target}", total=manifest.tar_size)
    with helper_container(api, image, ["true"], [Mount(target, TARGET, read_only=False)]) as helper:
        try:
            # The next pieces are read, checked and decompressed while dockerd takes these.
            pieces = read_ahead(archive_chunks(checked))
            put_archive(api, helper, TARGET, _counted(pieces, progress))
        except docker.errors.APIError as error:
            raise OperationError(
                f"the Docker engine failed to extract: {error.explanation}"
            ) from None
    progress.finish()
    root = next((entry for entry in manifest.entries if entry.path == "."), None)
    if root is None:
        return
    fix_root = 'chown "$1" /dst && chmod "$2" /dst && touch -m -d "@$3" /dst'
    command = ["sh", "-c", fix_root, "volkeep", f"{root.uid}:{root.gid}", f"{root.mode:o}"]
    command.append(str(int(root.mtime)))
    mounts = [Mount(target, TARGET, read_only=False)]
    code, _, stderr = run_helper(
        api, image, command, mounts, capabilities=WRITE_CAPABILITIES, owner=owner
    )
    if code != 0:
        raise OperationError(f"cannot restore the volume root's owner and mode: {stderr}")


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
    force: bool,
    *,
    storage: str | None = None,
    host: str | None = None,
) -> RestoreResult:
    """Restore the archive (`None` or "latest": the newest) of `volume` into `target`, from
    `storage` (None: the first of the policy's storages that holds it), of this host or of
    `host`. The source volume is locked too, so that no prune removes the archive while it
    is read."""
    api = ctx.docker()
    repository, key = locate(
        ctx.repositories(policy, storage=storage, host=host), policy.name, volume, archive_id
    )
    with (
        structlog.contextvars.bound_contextvars(
            policy=policy.name, volume=volume, archive=key.id, target=target
        ),
        ctx.volume_locks([volume, target], f"restore of {policy.name}/{volume} into {target}"),
    ):
        log.info("restore started", storage=repository.name, host=repository.host)
        identities = ctx.identities(policy)
        manifest = repository.read_manifest(key, identities=identities)
        checked = verify_archive(repository, key, manifest, identities)
        existing = inspect_volume(api, target)
        created = existing is None
        safety = None
        if created:
            create_volume(api, target)
        try:
            if existing is not None and not is_empty(api, policy.helper_image, target, target):
                if not force:
                    raise OperationError(
                        f"target volume {target!r} is not empty; use --force to replace its "
                        "content (it is saved first as a safety archive)"
                    )
                source = BackupSource(
                    policy.name,
                    existing,
                    policy.helper_image,
                    policy.compression,
                    kind="safety",
                    recipients=tuple(ctx.recipients(policy)),
                )
                saved = back_up_volume(api, ctx.repositories(policy), source)
                safety = saved.manifest.id
                log.info(
                    "saved the target's content as a safety archive",
                    safety_archive=safety,
                    storages=[saved_in.name for saved_in in saved.repositories],
                )
                empty_volume(api, policy.helper_image, target)
            extract_into(api, checked, policy.helper_image, target, target)
        except BaseException:
            if created:
                remove_volume(api, target)
            raise
        log.info("restore finished", objects=len(manifest.entries), bytes=manifest.tar_size)
        return RestoreResult(key.id, repository.name, target, created, safety)
