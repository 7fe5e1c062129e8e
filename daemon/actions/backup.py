"""Back up volumes: helper tar → parse and digest → compress → hash → publish → manifest → prune."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import docker
import requests
import structlog

from daemon.actions.context import Context
from daemon.actions.prune import prune_after_backup
from daemon.archive.compression import SUFFIXES, compressor
from daemon.archive.digest import HashingWriter
from daemon.archive.exclude import MemberFilter
from daemon.archive.manifest import Manifest
from daemon.archive.tarstream import Member, TarFormatError, TarScanner
from daemon.archive.verify import backup_keys, read_manifest
from daemon.config.model import Compression, Policy
from daemon.docker.client import engine_failure
from daemon.docker.containers import containers_to_stop, containers_using
from daemon.docker.tarflavour import detect_flavour, volume_tar
from daemon.docker.volumes import VolumeInfo, require_volume, select_volumes
from daemon.errors import OperationError, UsageError, combined_failure
from daemon.hooks import after_hooks, run_before_hooks
from daemon.journal import containers_stopped
from daemon.progress import Progress
from daemon.recovery import remove_garbage
from daemon.storage import Storage

log = structlog.get_logger()


def storage_failure(storage: Storage, error: OSError) -> OperationError:
    """Given the error writing to a storage raised, return the error to report."""
    return OperationError(
        f"cannot write to storage {storage.name!r} ({storage.describe()}): "
        f"{error.strerror or error}"
    )


def archive_stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class BackupSource:
    """What to back up and how: the volume, and the policy settings that shape the archive."""

    policy: str
    volume: VolumeInfo
    image: str
    compression: Compression
    exclude: tuple[str, ...] = ()
    kind: str = "backup"


def _expected_size(storage: Storage, source: BackupSource) -> int | None:
    """Return the tar size of the volume's last backup: the estimate progress shows."""
    keys = backup_keys(storage, source.policy, source.volume.name)
    if not keys:
        return None
    try:
        return read_manifest(storage, keys[0], entries=False).tar_size
    except OperationError:
        return None


def back_up_volume(
    api: docker.APIClient,
    storage: Storage,
    source: BackupSource,
    on_stream_end: Callable[[], None] | None = None,
) -> Manifest:
    """Stream the volume through a helper's tar into a new archive and publish it.

    The archive is written under a temporary name and published only once complete; the
    manifest is written last. `on_stream_end` is called once the helper's tar has ended
    well, before the archive is completed (containers stopped for the backup start again
    there). Raise OperationError if anything fails, leaving nothing listed behind. The
    caller holds the volume's lock.
    """
    flavour = detect_flavour(api, source.image)
    started = datetime.now(UTC)
    stamp = archive_stamp(started) + ("-safety" if source.kind == "safety" else "")
    try:
        key = storage.allocate_id(source.policy, source.volume.name, stamp)
        upload = storage.new_archive(key, SUFFIXES[source.compression.algorithm])
    except OSError as error:
        raise storage_failure(storage, error) from None
    archive_file = key.file_name(SUFFIXES[source.compression.algorithm])
    with structlog.contextvars.bound_contextvars(volume=source.volume.name, archive=key.id):
        log.info("backup started", kind=source.kind, tar=flavour.name, storage=storage.name)
        try:
            stored = HashingWriter(upload)
            packer = compressor(source.compression, stored)
            selection = MemberFilter(source.exclude)
            entries: list[Member] = []
            scanner = TarScanner(emit=packer.write, include=selection.include, done=entries.append)
            progress = Progress(f"backing up {source.volume.name}", _expected_size(storage, source))
            for chunk in volume_tar(api, source.image, flavour, source.volume.name):
                scanner.feed(chunk)
                progress.advance(len(chunk))
            if on_stream_end is not None:
                on_stream_end()
            progress.finish()
            scanner.close()
            packer.finish()
            upload.commit()
        except TarFormatError as error:
            upload.abort()
            raise OperationError(f"unreadable tar stream from the helper: {error}") from None
        except (docker.errors.APIError, requests.RequestException) as error:
            upload.abort()  # (Docker's errors are OSErrors too: they must come first)
            raise engine_failure(error) from None
        except OSError as error:
            upload.abort()
            raise storage_failure(storage, error) from None
        except BaseException:
            upload.abort()
            raise
        for path, why in selection.skipped:
            log.warning("left out of the archive", path=path, why=why)
        manifest = Manifest(
            id=key.id,
            kind=source.kind,
            policy=source.policy,
            volume=source.volume.name,
            volume_driver=source.volume.driver,
            volume_labels=source.volume.labels,
            host=socket.gethostname(),
            started=started,
            finished=datetime.now(UTC),
            archive_file=archive_file,
            size=stored.size,
            sha256=stored.hexdigest(),
            compression=source.compression.algorithm,
            compression_level=source.compression.level,
            tar_flavour=flavour.name,
            tar_size=scanner.offset,
            exclude=list(source.exclude),
            entries=entries,
        )
        try:
            storage.write_manifest(key, manifest.json_chunks())
        except OSError as error:
            raise OperationError(
                f"cannot write the manifest to storage {storage.name!r}: {error.strerror or error}"
            ) from None
        log.info(
            "backup published",
            size=stored.size,
            tar_size=scanner.offset,
            objects=len(entries),
            excluded=selection.excluded,
            seconds=round((manifest.finished - started).total_seconds(), 2),
        )
        return manifest


def policy_volumes(api: docker.APIClient, policy: Policy, requested: list[str]) -> list[str]:
    """Given a policy and the volumes asked for on the command line (none: all), return the
    names to work on; named volumes that do not exist stay in, to fail loudly.

    Raise UsageError for a requested volume the policy does not cover.
    """
    matched = [volume.name for volume in select_volumes(api, policy.selector)]
    covered = list(dict.fromkeys([*policy.selector.names, *matched]))
    for name in requested:
        if name not in covered:
            raise UsageError(f"policy {policy.name!r} does not cover volume {name!r}")
    return requested or covered


def back_up_one(ctx: Context, policy: Policy, storage: Storage, name: str) -> Manifest:
    """The steps of one volume's scheduled or manual backup, in order (caller holds the lock)."""
    api = ctx.docker()
    volume = require_volume(api, name, policy.name)
    remove_garbage(storage, policy.name, name)
    source = BackupSource(
        policy.name, volume, policy.helper_image, policy.compression, policy.exclude
    )
    hooks = policy.hooks_for(name)
    with after_hooks(api, hooks.after):
        run_before_hooks(api, hooks.before)
        detect_flavour(api, policy.helper_image)  # a missing image fails before any stop
        stopping = containers_to_stop(containers_using(api, name), policy.stop_containers)
        with containers_stopped(
            api, ctx.state_dir, policy.name, name, stopping, policy.stop_timeout
        ) as start_again:
            manifest = back_up_volume(api, storage, source, on_stream_end=start_again)
        prune_after_backup(ctx, policy, storage, name)
    return manifest


def run_backup(ctx: Context, policy_name: str, requested: list[str]) -> list[Manifest]:
    """Back up the policy's volumes (or the requested ones), one after another.

    Every volume is attempted; raise OperationError at the end if any failed.
    """
    policy = ctx.policy(policy_name)
    storage = ctx.storage(policy)
    manifests = []
    failures: list[OperationError] = []
    for name in policy_volumes(ctx.docker(), policy, requested):
        with structlog.contextvars.bound_contextvars(policy=policy.name, volume=name):
            try:
                with (
                    ctx.volume_lock(name, f"backup of {policy.name}"),
                    ctx.history.operation("backup", policy.name, name) as operation,
                ):
                    manifest = back_up_one(ctx, policy, storage, name)
                    operation.archive, operation.bytes = manifest.id, manifest.size
                    manifests.append(manifest)
            except OperationError as error:
                error.policy, error.volume = policy.name, name
                log.error("backup failed", error=error.message)
                failures.append(error)
    if failures:
        raise combined_failure(failures, "backup", policy.name)
    return manifests
