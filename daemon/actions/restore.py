"""Restore an archive into a volume.

1. Find the archive and lock the source volume (no prune removes the archive meanwhile)
   and the target; read the manifest of the first storage's copy that looks intact
   (`daemon.repository.locate`: committed, its archive file of the recorded size).
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

   How a restore extracts: dockerd extracts one tar on one thread. A whole restore (not
   --path) of an archive of SPLIT_MEMBERS members or SPLIT_BYTES bytes and more is cut at
   member boundaries into as many parallel streams as the Docker host has CPUs (at most
   MAX_STREAMS), each uploaded into its own helper mounting the target, and a last stream
   of the directories and hard links, kept aside (a spool file past a MiB) and uploaded
   once the archive has been read whole and checked and the others have ended, so that
   every directory ends with its recorded owner, mode and mtime (`daemon.archive.split`
   says why). The archive is read and checked once, in order, as in one stream; a fault,
   an engine failure or a cancelled helper on any stream stops them all, and the restore
   fails as it would in one stream. Smaller archives, and --path restores (which write
   over content already there), go in one stream.

   A copy found faulty (SHA-256 mismatch, cut, unsafe, not its manifest, its storage
   failing mid-read) is named in one line and the next storage's copy is used: checked
   whole again before a forced restore empties the target; or, when volkeep created or
   emptied the target, restored again into the target emptied once more. The common case
   pays nothing (the first copy is read once); a faulty copy costs what was read and
   written of it before the fault showed, at worst its whole size, which the SHA-256
   needs. No copy is read twice just in case: on S3 that would double every restore.
5. Create the symlinks the Engine refuses (relative targets that climb above the volume
   root: ordinary content, SPEC §5.5) as recorded, then give their parent directories and
   the volume root their recorded owner, mode and mtime.
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import docker
import structlog

from daemon.actions.backup import BackupSource, Published, back_up_volume, require_known_volume
from daemon.actions.context import Context
from daemon.archive.manifest import Manifest
from daemon.archive.select import Selection, leaves_the_target, select_members
from daemon.archive.split import END_MARKER, StreamSplit, extraction_streams
from daemon.archive.spool import READ_SIZE, SPOOL_MEMORY
from daemon.archive.tarstream import Include, Member
from daemon.config.keys import Identities
from daemon.config.model import Policy
from daemon.engine.containers import ContainerInfo, containers_using, stop_order
from daemon.engine.helpers import (
    QUEUE_DEPTH,
    WRITE_CAPABILITIES,
    Mount,
    helper_container,
    put_archive,
    run_helper,
)
from daemon.engine.journal import containers_stopped
from daemon.engine.leftovers import restoring_marker
from daemon.engine.parallel import put_archives
from daemon.engine.volumes import VolumeInfo, create_volume, inspect_volume, remove_volume
from daemon.errors import EngineFailure, OperationError, UsageError
from daemon.repository.locate import COPY_FAULTS, CopySearch, Located
from daemon.repository.verify import (
    StoredArchive,
    archive_chunks,
    routed_archive_chunks,
    verify_archive,
)
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
    """A restore done: the archive, the storage whose copy served, the target, and the
    safety archive taken first (with --force), if any."""

    archive: str
    storage: str
    target: str
    created_target: bool
    safety: Published | None

    def safety_shortfall(self) -> OperationError | None:
        """Return the error to exit with if the safety archive missed some of the policy's
        storages (SPEC promise 9: the restore went on, since one committed copy holds the
        previous content, but the storages that failed are named), else None."""
        if self.safety is None or not self.safety.failures:
            return None
        reasons = "; ".join(failure.message for failure in self.safety.failures)
        return OperationError(
            f"the target's previous content is only in {safety_whereabouts(self.safety)}: "
            f"{reasons}",
            policy=self.safety.manifest.policy,
            volume=self.target,
        )


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
        if member.path == ".":
            root = member
        to_a_deferred = member.type == "hardlink" and member.link in deferred_paths
        if leaves_the_target(member) or to_a_deferred:
            deferred.append(member)
            deferred_paths.add(member.path)
            return False
        return True

    progress = Progress(f"restoring into {target}", total=manifest.tar_size)
    streams = extraction_streams(
        _engine_cpus(api), manifest.entry_count, manifest.tar_size, whole=selected is None
    )
    mount = [Mount(target, TARGET, read_only=False)]
    with ExitStack() as helpers:
        containers = [
            helpers.enter_context(helper_container(api, image, ["true"], mount))
            for _ in range(streams)
        ]
        try:
            if streams == 1:
                # The next pieces are read, checked and decompressed while dockerd takes
                # these. Members not selected pass as headers alone: their chunks are not read.
                contents = selected.keeps if selected is not None else None
                pieces = read_ahead(archive_chunks(archive, include, contents))
                put_archive(api, containers[0], TARGET, _counted(pieces, progress))
            else:
                log.info("extracting in parallel streams", streams=streams)
                _extract_split(api, archive, containers, include, progress)
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


def _extract_split(
    api: docker.APIClient,
    archive: StoredArchive,
    containers: list[str],
    include: Include,
    progress: Progress,
) -> None:
    """Extract the whole archive into the (empty) target mounted by every helper of
    `containers`: split into parallel streams, one per helper, and a last stream kept aside
    (its directories and hard links, `daemon.archive.split`) and extracted by the first
    helper once the archive has been read whole and checked and every other stream has
    ended. Raise what `archive_chunks` raises, or the first upload's failure."""
    split = StreamSplit(len(containers))
    spool = str(archive.spool_dir) if archive.spool_dir else None
    with tempfile.SpooledTemporaryFile(SPOOL_MEMORY, dir=spool) as last:

        def dealt() -> Iterator[tuple[int, bytes]]:
            # checked here while the archive is read and decompressed a few pieces ahead
            # (in a thread of its own) and the helpers' queues are sent
            for stream, piece in routed_archive_chunks(archive, split.route, include):
                progress.advance(len(piece))
                if stream == split.last:
                    last.write(piece)
                else:
                    yield stream, piece
            for stream in range(len(containers)):
                yield stream, END_MARKER

        # the queues hold as many pieces in all as the one stream's: memory as in one stream
        depth = max(2, QUEUE_DEPTH // len(containers))
        put_archives(api, containers, TARGET, dealt(), depth)
        last.seek(0)
        put_archive(api, containers[0], TARGET, iter(functools.partial(last.read, READ_SIZE), b""))


def _engine_cpus(api: docker.APIClient) -> int | None:
    """Return the Docker host's CPU count (`docker info`'s NCPU), None if it does not say."""
    cpus = api.info().get("NCPU")
    return cpus if isinstance(cpus, int) and cpus > 0 else None


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
    `request` says (see the module's docstring for the steps), from the first storage that
    holds an intact copy of it (`CopySearch`). Raise OperationError if the restore failed;
    if a safety archive was taken by then, the message says where it is."""
    api = ctx.docker()
    repositories = ctx.repositories(policy, storage=request.storage, host=request.host)
    require_known_volume(api, policy, volume, repositories)
    search = CopySearch(repositories, policy.name, volume, archive_id)
    resolved = search.archive_id
    with (
        structlog.contextvars.bound_contextvars(
            policy=policy.name, volume=volume, archive=resolved, target=target
        ),
        ctx.volume_locks([volume, target], f"restore of {policy.name}/{volume} into {target}"),
    ):
        identities = ctx.identities(policy)
        first, manifest = search.first(lambda copy: _full_manifest(copy, identities))
        log.info("restore started", storage=first.repository.name, host=first.repository.host)
        selected = None
        if request.paths:
            selected = select_members(manifest.entries, request.paths)
            if not selected:
                raise UsageError(
                    f"no member of archive {resolved} matches --path {' '.join(request.paths)} "
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
        restoring = _Restoring(ctx, api, policy, search, identities, target, selected)
        with ExitStack() as marked:
            if created:
                labels = marked.enter_context(restoring_marker(ctx.state_dir, target))
                create_volume(api, target, labels)
            served = restoring.run(existing, running, request)
        log.info("restore finished", objects=manifest.entry_count, bytes=manifest.tar_size)
        return RestoreResult(resolved, served.repository.name, target, created, restoring.safety)


def _full_manifest(copy: Located, identities: Identities | None) -> Manifest:
    """Given a copy, return its manifest with its entries (opened with `identities`)."""
    return copy.repository.read_manifest(copy.key, identities=identities)


@dataclass
class _Restoring:
    """Steps 2 to 5 of one restore into `target`, from the copies `search` finds."""

    ctx: Context
    api: docker.APIClient
    policy: Policy
    search: CopySearch
    identities: Identities | None
    target: str
    selected: Selection | None
    safety: Published | None = None

    def run(
        self, existing: VolumeInfo | None, running: list[ContainerInfo], request: RestoreRequest
    ) -> Located:
        """Restore into the target (created if `existing` is None) and return the copy that
        served. A created target is removed again on failure, one found empty is emptied
        again; one whose content was saved as a safety archive keeps what the restore
        wrote, and the error names the safety archive."""
        api, policy, target = self.api, self.policy, self.target
        created = existing is None
        was_empty = created
        try:
            with containers_stopped(
                api,
                self.ctx.state_dir,
                policy.name,
                target,
                stop_order(running),
                policy.stop_timeout,
            ):
                was_empty = created or is_empty(api, policy.helper_image, target, target)
                if not was_empty:
                    if not request.force:
                        raise OperationError(
                            f"target volume {target!r} is not empty; use --force to replace "
                            "its content (it is saved first as a safety archive)"
                        )
                    assert existing is not None
                    self._save_and_check(existing)
                    if self.selected is None:
                        if policy.exclude:  # they were never in the archive: say so
                            log.warning(
                                "the target's paths the policy excludes are deleted too; "
                                "they are kept only in the safety archive",
                                exclude=list(policy.exclude),
                                safety_archive=self.safety and self.safety.manifest.id,
                            )
                        empty_volume(api, policy.helper_image, target)
                served, _ = self.search.first(self._extract)
        except BaseException as error:
            if created:
                remove_volume(api, target)
            elif was_empty:
                with contextlib.suppress(OperationError, docker.errors.DockerException):
                    empty_volume(api, policy.helper_image, target)
            self._say_where_the_safety_archive_is(error)
            raise
        return served

    def _stored(self, copy: Located) -> StoredArchive:
        manifest = _full_manifest(copy, self.identities)
        return StoredArchive(
            copy.repository, copy.key, manifest, self.identities, self.ctx.state_dir
        )

    def _extract(self, copy: Located) -> None:
        """Extract the copy into the target. If the copy turns out faulty, empty the target
        again (not for --path: the next copy writes the same members over) before the
        fault passes it over."""
        try:
            extract_into(
                self.api,
                self._stored(copy),
                self.policy.helper_image,
                self.target,
                self.target,
                self.selected,
            )
        except COPY_FAULTS:
            if self.selected is None:
                empty_volume(self.api, self.policy.helper_image, self.target)
            raise

    def _save_and_check(self, existing: VolumeInfo) -> None:
        """Save the target's content as a safety archive in every storage of the policy
        while the first intact copy of the archive is checked whole (the next copies after
        it, if it is not). Raise OperationError if either fails (nothing of the target is
        changed yet)."""
        ctx, policy = self.ctx, self.policy
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
            checking = pool.submit(
                self.search.first, lambda copy: verify_archive(self._stored(copy))
            )
            self.safety = back_up_volume(  # a one-file archive: it compares with none
                self.api, ctx.repositories(policy), source, previous=None, spool_dir=ctx.state_dir
            )
            log.info(
                "saved the target's content as a safety archive",
                safety_archive=self.safety.manifest.id,
                storages=[repository.name for repository in self.safety.repositories],
            )
            checking.result()

    def _say_where_the_safety_archive_is(self, error: BaseException) -> None:
        """A restore that fails or is interrupted after the safety archive was taken
        leaves it: say where it is, in the error's message and in the log."""
        if self.safety is None:
            return
        where = safety_whereabouts(self.safety)
        log.warning("the target's previous content is kept in the safety archive", where=where)
        if isinstance(error, OperationError):
            error.message += f"; the target's previous content is kept in {where}"


def safety_whereabouts(safety: Published) -> str:
    """Given a safety archive, return where it is: "safety archive ID in storage 'a', 'b'"."""
    storages = ", ".join(repr(repository.name) for repository in safety.repositories)
    label = "storage" if len(safety.repositories) == 1 else "storages"
    return f"safety archive {safety.manifest.id} in {label} {storages}"
