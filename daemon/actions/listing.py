"""List the archives of the storage, newest first. Reads only the storage (SPEC §2, §4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.actions.context import Context
from daemon.archive.manifest import Manifest
from daemon.archive.records import DrillRecord
from daemon.archive.select import select_members
from daemon.archive.tarstream import Member
from daemon.config.model import Policy
from daemon.errors import OperationError, UsageError
from daemon.repository import ArchiveKey, locate


@dataclass(frozen=True)
class ArchiveRow:
    storage: str
    key: ArchiveKey
    manifest: Manifest
    drill: DrillRecord | None

    def to_json(self) -> dict[str, object]:
        """The stable keys of `list --json`."""
        return {
            "id": self.key.id,
            "storage": self.storage,
            "host": self.manifest.host,
            "policy": self.key.policy,
            "volume": self.key.volume,
            "created": self.manifest.started.isoformat(),
            "size": self.manifest.size,
            "sha256": self.manifest.sha256,
            "compression": self.manifest.compression,
            "encrypted": self.manifest.encryption is not None,
            "kind": "safety" if self.key.is_safety else "backup",
            "drill": self.drill.to_json() if self.drill else {"verdict": "never"},
        }


def list_archives(
    ctx: Context,
    policy: str | None = None,
    volume: str | None = None,
    *,
    storage: str | None = None,
    host: str | None = None,
) -> list[ArchiveRow]:
    """Return the committed archives of one policy (or all) in each of its storages (or
    only `storage`), of this host or of `host`, newest first.

    Raise UsageError for an unknown policy or a storage it does not use; OperationError
    naming the storage if one cannot be read. Unreadable manifests are skipped.
    """
    if policy is None and storage is not None:
        raise UsageError("--storage names one of a policy's storages: give the policy too")
    policies = (
        [ctx.policy(policy)]
        if policy
        else [ctx.policy(name) for name in sorted(ctx.config.policies)]
    )
    rows = []
    for settings in policies:
        for repository in ctx.repositories(settings, storage=storage, host=host):
            try:
                names = [volume] if volume else repository.volumes(settings.name)
                keys = [key for name in names for key in repository.archives(settings.name, name)]
            except OSError as error:
                raise repository.failure(error, "cannot list the archives") from None
            for key in keys:
                try:
                    manifest = repository.read_manifest(key, entries=False)
                except OperationError:
                    continue
                rows.append(ArchiveRow(repository.name, key, manifest, repository.read_drill(key)))
    rows.sort(key=lambda row: row.manifest.started, reverse=True)
    return rows


def archive_files(
    ctx: Context,
    policy: Policy,
    volume: str,
    archive_id: str | None,
    patterns: Sequence[str],
    *,
    storage: str | None = None,
    host: str | None = None,
) -> list[Member]:
    """Return the objects one archive holds, from its manifest (the sealed entries of an
    encrypted one need the policy's identity); with patterns, only those `restore --path`
    with them would restore. Raise OperationError if there is no such archive."""
    repositories = ctx.repositories(policy, storage=storage, host=host)
    repository, key = locate(repositories, policy.name, volume, archive_id)
    manifest = repository.read_manifest(key, identities=ctx.identities(policy))
    if not patterns:
        return manifest.entries
    chosen = select_members(manifest.entries, patterns)
    return [entry for entry in manifest.entries if entry.path in chosen]


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
