"""List the archives of the storage, newest first. Reads only the storage (SPEC §2, §4)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

from daemon.actions.context import Context
from daemon.archive.manifest import Manifest
from daemon.archive.select import select_members
from daemon.archive.tarstream import Member
from daemon.config.model import Policy
from daemon.errors import OperationError, UsageError
from daemon.repository.layout import MANIFEST_SUFFIX, ArchiveKey, id_order
from daemon.repository.locate import locate
from daemon.repository.reads import read_each
from daemon.repository.store import Repository
from daemon.rules.verdict import DrillRecord, archive_verdict


@dataclass(frozen=True)
class ArchiveRow:
    """One committed archive of a storage; `problem` says what is wrong with it, if
    anything: an unreadable manifest (`manifest` is then None), a missing archive file."""

    storage: str
    key: ArchiveKey
    manifest: Manifest | None
    drill: DrillRecord | None
    problem: str | None = None

    @property
    def mark(self) -> str | None:
        """UNREADABLE or FILE MISSING, for a row with a problem."""
        if self.problem is None:
            return None
        return "UNREADABLE" if self.manifest is None else "FILE MISSING"

    def to_json(self) -> dict[str, object]:
        """The stable keys of `list --json`."""
        manifest = self.manifest
        return {
            "id": self.key.id,
            "storage": self.storage,
            "host": manifest.host if manifest else self.key.namespace,
            "policy": self.key.policy,
            "volume": self.key.volume,
            "created": manifest.started.isoformat() if manifest else None,
            "size": manifest.size if manifest else None,
            "tar_size": manifest.tar_size if manifest else None,
            "added_bytes": manifest.added_bytes if manifest else None,
            "sha256": manifest.sha256 if manifest else None,
            "compression": manifest.compression if manifest else None,
            "encrypted": manifest.encryption is not None if manifest else None,
            "kind": "safety" if self.key.is_safety else "backup",
            "drill": self.drill.to_json() if self.drill else {"verdict": "never"},
            "problem": self.problem,
            "state": self.mark or "ok",
        }


@dataclass(frozen=True)
class Listing:
    """The rows of `list`, newest first, and the storages that could not be read (each
    named in its error: `list` shows the others and exits 1)."""

    rows: list[ArchiveRow]
    unreadable: list[OperationError]


def list_archives(
    ctx: Context,
    policy: str | None = None,
    volume: str | None = None,
    *,
    storage: str | None = None,
    host: str | None = None,
) -> Listing:
    """Return the committed archives of one policy (or all) in each of its storages (or
    only `storage`), of this host or of `host`, newest first. An archive whose manifest
    cannot be read, or whose file is missing, is a row with its problem: `list` never
    hides an archive. A storage that cannot be listed hides none of the others' archives:
    it is in `unreadable` (SPEC promises 9 and 14).

    Raise UsageError for an unknown policy or a storage it does not use.
    """
    if policy is None and storage is not None:
        raise UsageError("--storage names one of a policy's storages: give the policy too")
    names = [policy] if policy else sorted(ctx.config.policies)
    rows: list[ArchiveRow] = []
    unreadable: list[OperationError] = []
    for settings in (ctx.policy(name) for name in names):
        for repository in ctx.repositories(settings, storage=storage, host=host):
            try:
                volumes = [volume] if volume else repository.volumes(settings.name)
                files = {
                    key: suffixes
                    for name in volumes
                    for key, suffixes in repository.files(settings.name, name).items()
                    if MANIFEST_SUFFIX in suffixes
                }
            except OSError as error:
                failure = repository.failure(error, "cannot list the archives")
                failure.policy = settings.name
                unreadable.append(failure)
                continue
            rows += read_each(partial(_row, repository), files.items())
    rows = _with_archive_verdicts(rows)
    rows.sort(key=lambda row: (row.manifest is not None, id_order(row.key.id)), reverse=True)
    return Listing(rows, unreadable)


def _with_archive_verdicts(rows: list[ArchiveRow]) -> list[ArchiveRow]:
    """Given the rows of every storage listed, return them each with the verdict that
    counts for its copy (`archive_verdict`): a verdict belongs to the archive, whichever
    storage's copy was drilled."""
    records: dict[tuple[str, str, str], list[DrillRecord]] = {}
    for row in rows:
        if row.drill is not None:
            records.setdefault(_archive(row), []).append(row.drill)
    return [
        row
        if row.manifest is None
        else replace(
            row, drill=archive_verdict(records.get(_archive(row), ()), row.manifest.sha256)
        )
        for row in rows
    ]


def _archive(row: ArchiveRow) -> tuple[str, str, str]:
    return row.key.policy, row.key.volume, row.key.id


def _row(repository: Repository, files: tuple[ArchiveKey, set[str]]) -> ArchiveRow:
    key, suffixes = files
    try:
        manifest = repository.read_manifest(key, entries=False)
    except OperationError as error:
        return ArchiveRow(repository.name, key, None, None, f"unreadable manifest: {error.message}")
    stored = manifest.archive_file[len(key.file_name("")) :]
    problem = None if stored in suffixes else "the archive file is missing"
    return ArchiveRow(repository.name, key, manifest, repository.read_drill(key), problem)


def archive_files(
    ctx: Context,
    policy: Policy,
    volume: str,
    archive_id: str | None,
    patterns: Sequence[str],
    *,
    storage: str | None = None,
    host: str | None = None,
) -> Iterable[Member]:
    """Return the objects one archive holds, streamed from its manifest (the sealed entries
    of an encrypted one need the policy's identity); with patterns, only those `restore
    --path` with them would restore. Raise OperationError if there is no such archive
    (iterating raises it if the manifest turns out damaged)."""
    repositories = ctx.repositories(policy, storage=storage, host=host)
    repository, key = locate(repositories, policy.name, volume, archive_id)
    manifest = repository.read_manifest(key, identities=ctx.identities(policy))
    if not patterns:
        return manifest.entries
    selection = select_members(manifest.entries, patterns)
    return (entry for entry in manifest.entries if selection.keeps(entry))


def drill_summary(drill: DrillRecord | None, now: datetime) -> str:
    """Return "passed 2d ago", "FAILED 3h ago" or "never"."""
    if drill is None:
        return "never"
    return f"{'passed' if drill.passed else 'FAILED'} {age(now - drill.finished)} ago"


def age(delta: timedelta) -> str:
    """Given a duration, return it roughly, in its largest unit: "2d", "3h", "5m", "40s"."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
