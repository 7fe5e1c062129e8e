"""Back up volumes: helper tar → parse and digest → compress → hash → publish → manifest → prune.

Two layouts (the policy's `format`): one archive file per backup (`tar`: the tar, zstd,
age), or deduplicated (`dedup`: a recipe and chunks in packs, `daemon.actions.chunked`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import requests
import structlog

from daemon import events
from daemon.actions.chunked import RECIPE_SUFFIX, ChunkedArchive
from daemon.actions.context import Context
from daemon.actions.failures import volume_failure
from daemon.actions.prune import prune_after_backup
from daemon.actions.shrink import notice_shrink
from daemon.actions.unchanged import VolumeReading, read_volume
from daemon.archive.compression import SUFFIXES, compressor
from daemon.archive.digest import HashingWriter
from daemon.archive.encryption import SUFFIX as AGE_SUFFIX
from daemon.archive.encryption import encrypting_writer
from daemon.archive.exclude import MemberFilter
from daemon.archive.manifest import DEDUPLICATED, SINGLE, Manifest, ManifestWriter
from daemon.archive.sealing import LEVEL as SECTION_LEVEL
from daemon.archive.tarstream import TarFormatError, TarScanner
from daemon.config.keys import Identities, Recipient, recipient_strings
from daemon.config.model import FULL_READ_EVERY, Compression, Policy, VolumeSelector
from daemon.engine.client import engine_failure
from daemon.engine.containers import (
    ContainerInfo,
    containers_to_stop,
    containers_using,
    live_databases,
)
from daemon.engine.hooks import after_hooks, run_before_hooks
from daemon.engine.journal import containers_stopped
from daemon.engine.tarflavour import detect_flavour, volume_tar
from daemon.engine.volumes import VolumeInfo, require_volume, select_volumes, volume_usage
from daemon.errors import OperationError, UsageError, combined_failure
from daemon.repository.copies import Copies
from daemon.repository.ids import allocate_key
from daemon.repository.locate import Located, newest_readable_backup
from daemon.repository.store import Repository
from daemon.terminal.progress import Progress

log = structlog.get_logger()


def archive_stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class BackupSource:
    """What to back up and how: the volume, and the policy settings that shape the archive."""

    policy: str
    volume: VolumeInfo
    image: str
    compression: Compression
    threads: int  # compression threads: the CPUs available shared by max_parallel operations
    exclude: tuple[str, ...] = ()
    kind: str = "backup"
    recipients: tuple[Recipient, ...] = ()  # age public keys; none: not encrypted
    layout: str = SINGLE  # DEDUPLICATED: a recipe and chunks (`archive_layout`)
    identities: Identities | None = None  # to open a deduplicated repository's records
    full_read_every: timedelta = FULL_READ_EVERY  # deduplicated: read every file this often


def archive_layout(policy: Policy) -> str:
    """Given a policy, return the layout its backups write: deduplicated for its archive
    format dedup (the default), else one archive file (docs/format-dedup.md, "Choosing the
    format")."""
    return DEDUPLICATED if policy.archive_format() == "dedup" else SINGLE


@dataclass(frozen=True)
class Published:
    """A new archive: its manifest, the storages that hold it, and those that failed."""

    manifest: Manifest
    repositories: list[Repository]
    failures: list[OperationError]


def back_up_volume(
    api: docker.APIClient,
    repositories: list[Repository],
    source: BackupSource,
    on_stream_end: Callable[[], None] | None = None,
    *,
    previous: Located | None,
    spool_dir: Path | None = None,
) -> Published:
    """Stream the volume through a helper's tar into a new archive in every repository and
    publish each copy.

    Each copy is written under a temporary name and published only once complete; its
    manifest is written last (its entries wait meanwhile in memory up to a MiB, then in an
    unnamed file in `spool_dir`, the state dir, which also holds the helper's pipe).
    `on_stream_end` is called once the helper's tar has ended well, before the archives are
    completed (containers stopped for the backup start again there). `previous`, the
    volume's newest readable backup (`newest_readable_backup`; None: none, or none to
    compare with), is what a deduplicated backup reads only the changes since and what the
    progress on a terminal expects the size of. Raise OperationError
    if no copy could be published, leaving nothing listed behind; a copy that failed while
    others were published is in `failures`. The caller holds the volume's lock.
    """
    flavour = detect_flavour(api, source.image, spool_dir)
    started = datetime.now(UTC)
    deduplicated = source.layout == DEDUPLICATED
    body = RECIPE_SUFFIX if deduplicated else SUFFIXES[source.compression.algorithm]
    suffix = body + (AGE_SUFFIX if source.recipients else "")
    key = allocate_key(
        repositories,
        source.policy,
        source.volume.name,
        archive_stamp(started),
        safety=source.kind == "safety",
    )
    with (
        structlog.contextvars.bound_contextvars(volume=source.volume.name, archive=key.id),
        # a deduplicated archive's recipe identifies each file's content: no SHA-256 per file
        ManifestWriter(spool_dir, source.recipients, digests=not deduplicated) as entries,
    ):
        storages = [repository.name for repository in repositories]
        log.info(
            "backup started",
            kind=source.kind,
            tar=flavour.name,
            storages=storages,
            compression_threads=source.threads,
        )
        copies = Copies(repositories, key, suffix)
        sealing = None
        chunked = None
        reading = None
        files = None
        try:
            selection = MemberFilter(source.exclude)
            if deduplicated:
                reading = VolumeReading(
                    api,
                    source.image,
                    flavour,
                    source.volume.name,
                    lambda marks: ChunkedArchive(
                        copies,
                        source.policy,
                        source.recipients,
                        source.identities,
                        spool_dir,
                        marks,
                    ),
                    spool_dir,
                )
                chunked = reading.chunked
                stored = chunked.stored  # the tar goes to `chunked.scanner`: one parse
            else:
                # the codec chain: tar → zstd → age → SHA-256 of the stored bytes → each copy
                stored = HashingWriter(copies)
                if source.recipients:
                    sealing = encrypting_writer(stored, source.recipients)
                packer = compressor(source.compression, sealing or stored, source.threads)
                scanner = TarScanner(emit=packer.write, include=selection.include, done=entries.add)
            progress = Progress(f"backing up {source.volume.name}")
            if progress.enabled:  # on a terminal: the previous archive's size, or a du
                progress.total = (
                    previous.manifest.tar_size
                    if previous is not None
                    else volume_usage(api, source.image, source.volume.name)
                )
            if reading is not None:
                files = read_volume(
                    reading,
                    previous,
                    source.identities,
                    source.exclude,
                    source.full_read_every,
                    reading.chunked.scanner,
                    entries,
                    selection,
                    progress,
                )
            else:
                # inline: the stream's generator ends (and its helper goes) as an error leaves
                for chunk in volume_tar(
                    api, source.image, flavour, source.volume.name, state_dir=spool_dir
                ):
                    scanner.feed(chunk)
                    progress.advance(len(chunk))
                scanner.close()
            if on_stream_end is not None:
                on_stream_end()
            progress.finish()
            entries.finish()
            if chunked is not None:
                chunked.finish()  # packs, then the index
            else:
                packer.finish()
            if sealing is not None:
                sealing.finish()
            copies.commit()
        except TarFormatError as error:
            copies.abort()
            raise OperationError(f"unreadable tar stream from the helper: {error}") from None
        except (docker.errors.APIError, requests.RequestException) as error:
            copies.abort()
            raise engine_failure(error) from None
        except BaseException:
            copies.abort()
            raise
        finally:
            if sealing is not None:
                sealing.close()
            if reading is not None:
                reading.close()
            if chunked is not None:
                chunked.close()
        for path, why in selection.skipped:
            log.warning("left out of the archive", path=path, why=why)
        manifest = Manifest(
            id=key.id,
            kind=source.kind,
            policy=source.policy,
            volume=source.volume.name,
            volume_driver=source.volume.driver,
            volume_labels=source.volume.labels,
            host=key.namespace,
            started=started,
            finished=datetime.now(UTC),
            archive_file=key.file_name(suffix),
            size=stored.size,
            sha256=stored.hexdigest(),
            compression="zstd" if deduplicated else source.compression.algorithm,
            compression_level=SECTION_LEVEL if deduplicated else source.compression.level,
            encryption="age" if source.recipients else None,
            recipients=recipient_strings(source.recipients),
            tar_flavour=flavour.name,
            tar_size=chunked.tar_size if chunked is not None else scanner.offset,
            exclude=list(source.exclude),
            entry_count=entries.count,
            hardlinks=entries.hardlinks,
            layout=source.layout,
            tar_sha256=chunked.tar_sha256 if chunked is not None else None,
            chunk_counts=chunked.counts() if chunked is not None else None,
            files=files,
            content_digests=entries.digests,
        )
        copies.publish(lambda: entries.chunks(manifest))
        log.info(
            "backup published",
            storages=[repository.name for repository in copies.published],
            size=stored.size,
            tar_size=manifest.tar_size,
            added=manifest.added_bytes,
            read=files.read_bytes if files is not None else manifest.tar_size,
            reused=files.reused if files is not None else 0,
            objects=entries.count,
            entries_bytes=entries.spool_bytes,
            excluded=selection.excluded,
            seconds=round((manifest.finished - started).total_seconds(), 2),
        )
        return Published(manifest, copies.published, copies.failures)


def policy_volumes(api: docker.APIClient, policy: Policy, requested: list[str]) -> list[str]:
    """Given a policy and the volumes asked for on the command line (none: all), return the
    names to work on; named volumes that do not exist stay in, to fail loudly.

    Raise UsageError for a requested volume the policy does not cover, OperationError if
    the policy selects no volume at all: a backup of nothing has failed, not succeeded.
    """
    covered = covered_volumes(api, policy)
    for name in requested:
        if name not in covered:
            raise UsageError(f"policy {policy.name!r} does not cover volume {name!r}")
    if not covered:
        raise OperationError(
            f"the policy selects no volume: none on this Docker host matches "
            f"{describe_match(policy.selector)}; label or create the volumes to back up, or "
            "change the policy's match",
            policy=policy.name,
        )
    return requested or covered


def covered_volumes(api: docker.APIClient, policy: Policy) -> list[str]:
    """Given a policy, return the volumes it covers now: its names, then what its match
    selects."""
    matched = [volume.name for volume in select_volumes(api, policy.selector)]
    return list(dict.fromkeys([*policy.selector.names, *matched]))


def require_known_volume(
    api: docker.APIClient, policy: Policy, volume: str, repositories: list[Repository]
) -> None:
    """Given a volume named on the command line to read archives of, raise UsageError if
    the policy does not cover it and none of the storages holds an archive of it: the name
    is a typo (exit 2, as `backup --volume` says). A storage that cannot be listed leaves
    the question to the operation."""
    if volume in covered_volumes(api, policy):
        return
    for repository in repositories:
        try:
            if repository.archives(policy.name, volume):
                return
        except OSError:
            return
    raise UsageError(
        f"policy {policy.name!r} does not cover volume {volume!r}, and no storage holds an "
        "archive of it (see volkeep list)"
    )


def describe_match(selector: VolumeSelector) -> str:
    """Given a policy's match, return it as the policy file writes it."""
    label = selector.label_key
    if label is not None and selector.label_value is not None:
        label += f"={selector.label_value}"
    parts = [f"label: {label}"] if label is not None else []
    parts += [f"name: {selector.name_glob}"] if selector.name_glob is not None else []
    return "{" + ", ".join(parts) + "}"


LIVE_DATABASE_ADVICE = (
    "stop it during the backup (stop_containers: true, or the container label "
    "volkeep.stop-during-backup=true), or dump the database in a before hook"
)


def unguarded_databases(
    policy: Policy, volume: str, containers: list[ContainerInfo]
) -> list[ContainerInfo]:
    """Given a volume of the policy and the containers that mount it, return the running
    database containers its backup would copy under: neither stopped, nor after a before
    hook (which may dump the database)."""
    if policy.hooks_for(volume).before:
        return []
    return live_databases(containers, policy.stop_containers)


def back_up_one(
    ctx: Context, policy: Policy, repositories: list[Repository], name: str
) -> Published:
    """The steps of one volume's scheduled or manual backup, in order (caller holds the lock).

    A volume that lost most of its content since its last backup is warned about and
    announced. Retention then runs in each storage that holds the new archive, by its own
    rules (and the shrink guard)."""
    api = ctx.docker()
    volume = require_volume(api, name, policy.name)
    layout = archive_layout(policy)
    source = BackupSource(
        policy.name,
        volume,
        policy.helper_image,
        policy.compression,
        ctx.compression_threads(),
        policy.exclude,
        recipients=tuple(ctx.recipients(policy)),
        layout=layout,
        identities=ctx.identities(policy) if layout == DEDUPLICATED else None,
        full_read_every=policy.full_read_every,
    )
    found = newest_readable_backup(repositories, policy.name, name)  # read before any stop
    previous = found.manifest if found is not None else None
    hooks = policy.hooks_for(name)
    with after_hooks(api, hooks.after):
        run_before_hooks(api, hooks.before)
        # a missing image fails before any stop
        detect_flavour(api, policy.helper_image, ctx.state_dir)
        users = containers_using(api, name)
        for container in unguarded_databases(policy, name, users):
            log.warning(
                "a running database's volume is backed up live: its files may not be consistent",
                container=container.name,
                image=container.image,
                advice=LIVE_DATABASE_ADVICE,
            )
        stopping = containers_to_stop(users, policy.stop_containers)
        with containers_stopped(
            api, ctx.state_dir, policy.name, name, stopping, policy.stop_timeout
        ) as start_again:
            events.containers_stopped(policy.name, name, [c.name for c in stopping])
            published = back_up_volume(
                api,
                repositories,
                source,
                on_stream_end=start_again,
                previous=found,
                spool_dir=ctx.state_dir,
            )
        events.containers_started(policy.name, name, [c.name for c in stopping])
        notice_shrink(previous, published.manifest)
        for repository in published.repositories:
            prune_after_backup(ctx, policy, repository, name, repositories)
    return published


def run_backup(
    ctx: Context,
    policy_name: str,
    requested: list[str],
    report: Callable[[Published], None],
) -> list[Published]:
    """Back up the policy's volumes (or the requested ones), one after another, each into
    every storage of the policy; give `report` each new archive as it is published.

    Every volume is attempted; a failed one is logged as it happens. Raise OperationError
    at the end, naming each, if any failed, or if a storage failed to take its copy (naming
    the storage): its one line is how the command line tells of a failure.
    """
    policy = ctx.policy(policy_name)
    repositories = ctx.repositories(policy)
    results = []
    failures: list[OperationError] = []
    for name in policy_volumes(ctx.docker(), policy, requested):
        with (
            structlog.contextvars.bound_contextvars(policy=policy.name, volume=name),
            volume_failure(failures, "backup", policy.name, name),
            ctx.volume_lock(name, f"backup of {policy.name}"),
            ctx.history.operation("backup", policy.name, name) as operation,
        ):
            published = back_up_one(ctx, policy, repositories, name)
            operation.archive = published.manifest.id
            operation.bytes = published.manifest.size
            results.append(published)
            report(published)
            if published.failures:
                raise partial_failure(published.failures)
    if failures:
        raise combined_failure(failures, "backup", policy.name)
    return results


def partial_failure(failures: list[OperationError]) -> OperationError:
    """Given the storages that failed to take their copy of an archive others hold, return
    the error that says so."""
    reasons = "; ".join(failure.message for failure in failures)
    return OperationError(f"published, but not in every storage: {reasons}")
