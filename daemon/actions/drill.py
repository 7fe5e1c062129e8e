"""Restore drills: prove, object by object, that an archive restores.

For each volume the policy has archives of in its storage, under the volume's lock:

1. Choose the archives: `--archive ID`, or the policy's `drill.archive` (latest, random,
   oldest-unverified), at most `drill.max_per_run` of them.
2. Read the archive's manifest and check the archive whole (`verify_archive`): size and
   SHA-256, path safety, members against the manifest's entries.
3. Restore it into a fresh scratch volume through the restore code path (`extract_into`:
   the Engine's archive endpoint on a helper container, then the volume root's fix-up).
   The scratch volume is in the Docker host's memory (a tmpfs) when the archive fits the
   bound of `daemon.rules.scratch`, or `drill.scratch` asks for it; on disk otherwise, and
   again on disk when a restore into memory fails for other than the archive's fault.
4. Read the scratch volume back through a helper's tar stream, digesting files as they
   pass, and compare every object with the manifest's entries as both stream
   (`compare_trees`). A file's digest is the SHA-256 of its content; for a deduplicated
   archive whose entries carry none (`volkeep-entries-2`), its chunk-list digest: the
   recipe's chunk ids on the manifest's side, the bytes read back cut and named as the
   backup did on the other (`daemon.repository.contentdigests`).
5. Write the verdict beside the archive and in the run history; meanwhile the scratch
   volume is removed, on every path out, beside what follows (the next drill; the command
   waits for it before it exits): see `ScratchRemovals`. It carries volkeep's labels, so
   the next volkeep start removes it after a crash.

Nothing is copied outside the scratch volume: the archive streams from storage twice (the
check, the restore) and the restored tree streams once (a second time only if it comes
in an order too far from the manifest's: see daemon.archive.compare).
"""

from __future__ import annotations

import functools
import hashlib
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import requests
import structlog

from daemon import events
from daemon.actions.context import Context
from daemon.actions.failures import volume_failure
from daemon.actions.restore import extract_into
from daemon.archive.compare import WINDOW, Comparison, compare_trees
from daemon.archive.manifest import DEDUPLICATED
from daemon.archive.tarstream import ContentDigest, Member, TarFormatError, TarScanner
from daemon.config.keys import Identities
from daemon.config.model import DrillChoice, DrillConfig, DrillScratch, Policy
from daemon.engine.client import engine_failure
from daemon.engine.helpers import HelperCancelled, helper_labels
from daemon.engine.tarflavour import detect_flavour, keeps_xattrs, volume_tar
from daemon.engine.volumes import create_volume, held_mounted, host_memory, remove_volume
from daemon.errors import (
    ArchiveFault,
    KeyMissing,
    OperationError,
    StorageFailure,
    UsageError,
    combined_failure,
)
from daemon.repository.chunks import ChunkStore
from daemon.repository.contentdigests import RecipeDigests, read_back_digest
from daemon.repository.layout import ArchiveKey
from daemon.repository.locate import locate
from daemon.repository.packcheck import check_packs_in_turn
from daemon.repository.store import Repository
from daemon.repository.verify import MembersDiffer, StoredArchive
from daemon.rules.scratch import MemoryScratch, memory_scratch
from daemon.rules.verdict import DrillRecord, Outcome, drill_outcome
from daemon.terminal.progress import Progress

log = structlog.get_logger()
SCRATCH_PREFIX = "volkeep-drill-"
IN_MEMORY_WINDOW = 256  # see Scratch.window
NEVER = datetime.min.replace(tzinfo=UTC)


class DrillNotRun(OperationError):
    """A drill that could not reach a verdict (the engine, the storage, a missing key or
    volkeep itself failed): no verdict is recorded, the archive's last one stands."""

    def __init__(self, key: ArchiveKey, ended_by: OperationError) -> None:
        super().__init__(
            f"drill not run, no verdict (the archive's last one stands): {ended_by.message}",
            policy=key.policy,
            volume=key.volume,
            archive=key.id,
        )


class DrillFailed(OperationError):
    """A drill found the archive wanting, or could not prove it restorable."""

    def __init__(self, record: DrillRecord) -> None:
        super().__init__(
            record.reason or "drill failed",
            policy=record.policy,
            volume=record.volume,
            archive=record.archive,
        )
        self.record = record


def run_drill(
    ctx: Context,
    policy_name: str,
    volumes: list[str],
    archive_id: str | None,
    *,
    storage: str | None = None,
    host: str | None = None,
    report: Callable[[DrillRecord], None] | None = None,
) -> list[DrillRecord]:
    """Given a policy, the volumes asked for (none: every volume it has backups of in the
    drilled storage) and an archive id (None: the policy's drill choice), drill them one
    after another; return the verdicts, each also written beside its archive (in the
    storage drilled) and in the run history, and given to `report` as it is reached.

    The storage drilled: `storage`, else the policy's `drill.storage`; else, for an archive
    id, the first storage that holds it, and for the drill choice the first of the
    policy's storages. `host` drills another host's archives.

    Raise UsageError if an archive id is given for other than one volume. Every volume is
    attempted; raise OperationError at the end if any drill failed or could not run. A
    drill that could not run (DrillNotRun) records no verdict on the archive.
    """
    policy = ctx.policy(policy_name)
    chosen = storage or _drill_storage(policy)
    repositories = ctx.repositories(policy, storage=chosen, host=host)
    if volumes:
        names = volumes
    elif archive_id is not None:  # an archive whose manifest is gone is still found
        try:
            names = repositories[0].volumes(policy.name)
        except OSError as error:
            raise repositories[0].failure(error, "cannot list the archives") from None
    else:
        names = drillable_volumes(repositories[0], policy.name)
    if archive_id is not None and len(names) != 1:
        raise UsageError("--archive names an archive of one volume: add --volume")
    api = ctx.docker()
    records: list[DrillRecord] = []
    failures: list[OperationError] = []
    with ScratchRemovals(api) as removals:
        for name in names:
            with (
                structlog.contextvars.bound_contextvars(policy=policy.name, volume=name),
                volume_failure(failures, "drill", policy.name, name),
                ctx.volume_lock(name, f"drill of {policy.name}"),
            ):
                for repository, key in choose_archives(repositories, policy, name, archive_id):
                    try:
                        record = _recorded_drill(ctx, api, repository, policy, key, removals)
                    except DrillFailed as failure:
                        record = failure.record
                        failures.append(failure)
                    records.append(record)
                    if report is not None:
                        report(record)
    if failures:
        raise combined_failure(failures, "drill", policy.name)
    return records


def _drill_storage(policy: Policy) -> str | None:
    return policy.drill.storage if policy.drill else None


def drilled_repository(ctx: Context, policy: Policy) -> Repository:
    """Return the repository the policy's scheduled drills read: `drill.storage`, else the
    first of its storages."""
    return ctx.repositories(policy, storage=_drill_storage(policy))[0]


def drillable_volumes(repository: Repository, policy: str) -> list[str]:
    """Return the volumes the policy has backups of in the repository (a volume holding
    only safety archives has nothing to drill).

    Raise StorageFailure if the storage cannot be listed, OperationError if it holds no
    backup of the policy: a drill with nothing to drill has failed, not passed.
    """
    try:
        names = repository.volumes(policy)
        drillable = [volume for volume in names if repository.backups(policy, volume)]
    except OSError as error:
        raise repository.failure(error, "cannot list the archives") from None
    if not drillable:
        raise OperationError(
            f"nothing to drill: storage {repository.name!r} ({repository.describe()}) holds "
            "no backup of this policy; see that its backups run (volkeep list, volkeep status)",
            policy=policy,
        )
    return drillable


def choose_archives(
    repositories: list[Repository], policy: Policy, volume: str, archive_id: str | None
) -> list[tuple[Repository, ArchiveKey]]:
    """Given the repositories to drill from, a volume and an archive id (None: the policy's
    drill choice, in the first repository), return the archives to drill. Raise
    OperationError if there is none."""
    if archive_id is not None:
        return [locate(repositories, policy.name, volume, archive_id)]
    repository = repositories[0]
    settings = policy.drill or DrillConfig()
    try:
        keys = repository.backups(policy.name, volume)
    except OSError as error:
        raise repository.failure(error, "cannot list the archives") from None
    if not keys:
        raise OperationError(
            f"no archive in storage {repository.name!r}", policy=policy.name, volume=volume
        )
    last_drilled: dict[ArchiveKey, datetime] = {}
    if settings.archive == "oldest-unverified":
        for key in keys:
            if (record := repository.read_drill(key)) is not None:
                last_drilled[key] = record.finished
    picked = pick_archives(keys, settings.archive, settings.max_per_run, last_drilled)
    return [(repository, key) for key in picked]


def pick_archives(
    keys: list[ArchiveKey],
    choice: DrillChoice,
    count: int,
    last_drilled: dict[ArchiveKey, datetime],
    chance: random.Random | None = None,
) -> list[ArchiveKey]:
    """Given a volume's backups (newest first), return up to `count` of them to drill:

    - latest: the newest;
    - random: any, uniformly;
    - oldest-unverified: those never drilled, oldest first; then the others, least recently
      drilled first, so that every archive is drilled again in turn (a failed one too).
    """
    if choice == "latest":
        return keys[:count]
    if choice == "random":
        return (chance or random.SystemRandom()).sample(keys, min(count, len(keys)))

    def order(key: ArchiveKey) -> tuple[bool, datetime, ArchiveKey]:
        return key in last_drilled, last_drilled.get(key, NEVER), key

    return sorted(keys, key=order)[:count]


def _recorded_drill(
    ctx: Context,
    api: docker.APIClient,
    repository: Repository,
    policy: Policy,
    key: ArchiveKey,
    removals: ScratchRemovals,
) -> DrillRecord:
    """Given an archive (the caller holds its volume's lock), drill it and record the verdict
    beside the archive and in the run history; return it. Raise DrillFailed with the
    verdict if it failed; DrillNotRun if the drill could not run (it is recorded in the
    run history as a failed drill, and nothing beside the archive: an engine hiccup says
    nothing of the archive); StorageFailure if the verdict cannot be written."""
    with (
        structlog.contextvars.bound_contextvars(archive=key.id, storage=repository.name),
        ctx.history.operation("drill", policy.name, key.volume) as operation,
    ):
        operation.archive = key.id
        log.info("drill started", helper_image=policy.helper_image)
        record = drill_archive(
            api,
            repository,
            policy.helper_image,
            key,
            removals,
            ctx.identities(policy),
            ctx.state_dir,
            (policy.drill or DrillConfig()).scratch,
        )
        operation.bytes = record.bytes
        repository.write_drill(key, record)
        events.emit(events.DrillVerdict(record, repository.name))
        if not record.passed:
            log.error(
                "drill failed",
                reason=record.reason,
                differences=record.difference_count,
                seconds=round(record.duration, 2),
            )
            raise DrillFailed(record)
        log.info(
            "drill passed",
            bytes=record.bytes,
            restore_seconds=round(record.restore_seconds, 2),
            seconds=round(record.duration, 2),
        )
        return record


def drill_archive(
    api: docker.APIClient,
    repository: Repository,
    image: str,
    key: ArchiveKey,
    removals: ScratchRemovals,
    identities: Identities | None = None,
    spool_dir: Path | None = None,
    scratch: DrillScratch = "auto",
) -> DrillRecord:
    """Given an archive, check it, restore it into a scratch volume with the helper image
    (in memory or on disk, as `scratch` and `memory_scratch` say), compare what comes back
    with its manifest, and return the verdict (not yet recorded), the scratch volume's
    removal handed to `removals`. A comparison that must sort spills to `spool_dir` (the
    state dir).

    Failures of the archive are the verdict, not exceptions (`drill_outcome` says which).
    Raise DrillNotRun if anything else ended the drill: the engine, the storage, a missing
    key or volkeep itself, which is no verdict.
    """
    started = time.monotonic()
    restore_seconds, restored, comparison = 0.0, 0, Comparison()
    encrypted, sha256 = False, None
    ended_by: OperationError | None = None
    try:
        summary = repository.read_manifest(key, entries=False)
        encrypted, sha256 = summary.encryption is not None, summary.sha256
        manifest = repository.read_manifest(key, identities=identities)
        archive = StoredArchive(repository, key, manifest, identities, spool_dir)
        expected: Iterable[Member] = manifest.entries
        digest: Callable[[], ContentDigest] = hashlib.sha256
        if not manifest.content_digests:  # the recipe's chunk ids stand for them
            expected, digest = RecipeDigests(archive), read_back_digest(archive)
        host = host_memory(api) if scratch == "auto" else None
        in_memory = memory_scratch(scratch, manifest.tar_size, manifest.entry_count, host)
        restore_and_compare = functools.partial(
            _restore_and_compare, api, image, archive, removals, expected, digest, spool_dir
        )
        try:
            restore_ended, comparison = restore_and_compare(in_memory)
        except _MemoryFellShort as short:
            log.warning(
                "the restore into memory failed; drilling again on disk",
                error=short.failure.message,
            )
            restore_ended, comparison = restore_and_compare(None)
        restore_seconds, restored = restore_ended - started, manifest.tar_size
        log.info(
            "compared with the manifest",
            objects=comparison.compared,
            sorted=comparison.sorted,
            seconds=round(time.monotonic() - started - restore_seconds, 2),
        )
        if not comparison.identical:
            ended_by = ArchiveFault(comparison.summary())
        elif manifest.layout == DEDUPLICATED:
            ended_by = _check_packs_in_turn(repository, key, spool_dir)
    except MembersDiffer as error:
        comparison, ended_by = error.comparison, error
    except OperationError as error:
        ended_by = error
    except (docker.errors.APIError, requests.RequestException) as error:
        ended_by = engine_failure(error)
    outcome = drill_outcome(ended_by)
    if ended_by is not None and outcome is Outcome.NOT_RUN:
        raise DrillNotRun(key, ended_by)
    reason = ended_by.message if ended_by is not None else None
    if encrypted and comparison.count:
        reason = f"{comparison.count} objects differ from the manifest (their paths are not "
        reason += "recorded in clear: the archive is encrypted)"
    return DrillRecord(
        policy=key.policy,
        volume=key.volume,
        archive=key.id,
        passed=outcome is Outcome.PASSED,
        finished=datetime.now(UTC),
        duration=time.monotonic() - started,
        restore_seconds=restore_seconds,
        bytes=restored,
        reason=reason,
        # the record is clear text beside the archive: an encrypted archive's paths stay out
        differences=[] if encrypted else comparison.differences,
        difference_count=comparison.count,
        archive_sha256=sha256,
    )


def _check_packs_in_turn(
    repository: Repository, key: ArchiveKey, state_dir: Path | None
) -> ArchiveFault | None:
    """Check the packs of the archive's chunk repository whose turn it is against their
    names (`check_packs_in_turn`); return the fault to end the drill with if one is
    damaged, else None. Raise StorageFailure if the storage fails."""
    chunks = ChunkStore(repository, key.policy, key.namespace)
    try:
        checked = check_packs_in_turn(chunks, state_dir)
    except OSError as error:
        raise repository.failure(error, "cannot check the chunk repository's packs", key) from None
    log.info("packs checked in turn", packs=len(checked.checked), damaged=len(checked.damaged))
    if not checked.damaged:
        return None
    return ArchiveFault(
        f"the chunk repository {chunks.directory} is damaged: pack "
        f"{', '.join(checked.damaged)} is not the bytes its name was taken of (the sampled "
        "check of packs; the archives whose chunks it holds do not restore)"
    )


class _MemoryFellShort(Exception):
    """A restore into a scratch volume in memory failed for other than the archive's fault."""

    def __init__(self, failure: OperationError) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _restore_and_compare(
    api: docker.APIClient,
    image: str,
    archive: StoredArchive,
    removals: ScratchRemovals,
    expected: Iterable[Member],
    digest: Callable[[], ContentDigest],
    spool_dir: Path | None,
    in_memory: MemoryScratch | None,
) -> tuple[float, Comparison]:
    """Given an archive and its objects as the manifest describes them (`expected`, their
    content digested with `digest`), restore it into a fresh scratch volume (in memory with
    the limits `in_memory`, else on disk), read it back and compare; return when the restore
    ended (`time.monotonic()`) and the comparison. Raise _MemoryFellShort if the restore
    into memory failed and a disk could do better (`_memory_fell_short`); whatever else
    ended it as it is."""
    manifest, owner = archive.manifest, archive.key.volume
    started = time.monotonic()
    with ExitStack() as stack:
        try:  # a tmpfs the engine cannot mount fails here: the helper holding it starts
            scratch = stack.enter_context(scratch_volume(api, image, owner, removals, in_memory))
            # one pass: checked as it streams into the scratch volume
            extract_into(api, archive, image, scratch.name, owner)
        except (OperationError, docker.errors.APIError, requests.RequestException) as error:
            if in_memory is None or not _memory_fell_short(error):
                raise
            raise _MemoryFellShort(
                error if isinstance(error, OperationError) else engine_failure(error)
            ) from None
        restored = time.monotonic()
        log.info("restored", scratch=scratch.kind, seconds=round(restored - started, 2))
        found = ReadBack(api, image, scratch.name, owner, manifest.tar_size, spool_dir, digest)
        comparison = compare_trees(
            expected,
            found,
            hard_links=manifest.hardlinks != 0,
            spool_dir=spool_dir,
            xattrs=found.records_xattrs(manifest.tar_flavour),
            window=scratch.window,
        )
        scratch.still_held()
    return restored, comparison


def _memory_fell_short(error: BaseException) -> bool:
    """Given what ended a restore into a scratch volume in memory, say whether to drill again
    on disk: yes for a failure of the engine or a helper (the tmpfs full, or lacking what the
    archive needs); no for the archive's fault (that is the verdict), a storage failing, a
    key missing or volkeep stopping, which a disk would not change."""
    faults = (ArchiveFault, StorageFailure, KeyMissing, HelperCancelled)
    return not isinstance(error, faults)


@dataclass(frozen=True)
class Scratch:
    """A drill's scratch volume: its name, and in memory a check that it still holds what
    was restored."""

    name: str
    still_held: Callable[[], None]
    kind: str  # "memory" or "disk", for the log
    # how many objects the comparison lets wait for their match before it sorts both
    # streams instead: a tmpfs may list each directory newest first, the tree then comes
    # back in no order near the manifest's, and a long wait only reads it twice
    window: int = WINDOW


@contextmanager
def scratch_volume(
    api: docker.APIClient,
    image: str,
    source: str,
    removals: ScratchRemovals,
    in_memory: MemoryScratch | None = None,
) -> Iterator[Scratch]:
    """Create an empty volume labelled as the scratch volume of a drill of `source`, on disk
    or `in_memory` (kept mounted by a helper of `image` meanwhile), yield it, and hand it
    to `removals` on every path out, with the helper holding it (whose removal unmounts
    it: minutes for a million files, seconds for 200,000)."""
    name = f"{SCRATCH_PREFIX}{secrets.token_hex(6)}"
    create_volume(api, name, helper_labels(source, role="scratch"), in_memory)
    holder = ExitStack()
    try:
        if in_memory is None:
            yield Scratch(name, lambda: None, "disk")
        else:
            still_held = holder.enter_context(held_mounted(api, image, name, source))
            yield Scratch(name, still_held, "memory", IN_MEMORY_WINDOW)
    finally:
        removals.start(name, holder)


class ScratchRemovals:
    """The removal of drills' scratch volumes, each in a thread of its own beside what
    follows it: the verdict's recording and the start of the next drill. The Engine takes
    minutes to remove a volume of a million files (its `DELETE` call), holding meanwhile a
    lock that the next drill's creation of its scratch volume waits for. Leaving the block
    waits for them (not when interrupted: the labels let the next volkeep process remove
    them).

    A removal that fails is a warning naming the volume: the verdict stands, and the next
    volkeep process removes the volume.
    """

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ScratchRemovals:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None or issubclass(kind, Exception):
            for thread in self._threads:
                thread.join()

    def start(self, volume: str, holder: ExitStack) -> None:
        """Start removing the scratch volume, once `holder` has closed (it removes the
        helper holding a volume in memory)."""
        context = structlog.contextvars.get_contextvars()
        thread = threading.Thread(
            target=self._remove,
            args=(volume, holder, context),
            name="volkeep-scratch-removal",
            daemon=True,  # an interrupted command does not wait for it
        )
        thread.start()
        self._threads.append(thread)

    def _remove(self, volume: str, holder: ExitStack, context: dict[str, Any]) -> None:
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(**context, scratch_volume=volume):
            try:
                holder.close()
                remove_volume(self._api, volume)
            except (docker.errors.APIError, requests.RequestException) as error:
                log.warning(
                    "cannot remove the scratch volume; the next volkeep process removes it",
                    error=engine_failure(error).message,
                )
                return
            log.info("removed the scratch volume", seconds=round(time.monotonic() - started, 2))


@dataclass(frozen=True)
class ReadBack:
    """A volume's objects as a helper's tar stream describes them, regular files digested
    as they pass (with what `digest` returns: SHA-256 by default); each iteration streams
    them again. Iterating raises OperationError if the stream fails."""

    api: docker.APIClient
    image: str
    volume: str
    owner: str
    expected_size: int
    state_dir: Path | None = None  # where the helper's pipe goes (daemon.engine.pipe)
    digest: Callable[[], ContentDigest] = hashlib.sha256

    def records_xattrs(self, backed_up_with: str) -> bool:
        """Given the tar flavour that wrote the archive (its manifest's), say whether it and
        the tar that reads the volume back both record extended attributes: only then can
        they be compared (busybox tar records none)."""
        flavour = detect_flavour(self.api, self.image, self.state_dir)
        return keeps_xattrs(backed_up_with) and keeps_xattrs(flavour.name)

    def __iter__(self) -> Iterator[Member]:
        members: list[Member] = []
        scanner = TarScanner(done=members.append, digest=self.digest)
        progress = Progress(f"reading back {self.volume}", total=self.expected_size)
        flavour = detect_flavour(self.api, self.image, self.state_dir)
        try:
            for chunk in volume_tar(
                self.api, self.image, flavour, self.volume, self.owner, state_dir=self.state_dir
            ):
                scanner.feed(chunk)
                progress.advance(len(chunk))
                yield from members
                members.clear()
            scanner.close()
        except TarFormatError as error:
            raise OperationError(
                f"unreadable tar stream from the scratch volume: {error}"
            ) from None
        finally:
            progress.finish()
