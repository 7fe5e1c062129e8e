"""List the archives of the storage, newest first. Reads only the storage (SPEC §2, §4)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.archive.manifest import Manifest, ManifestError
from daemon.archive.records import DrillRecord, read_drill_record
from daemon.config.model import Config
from daemon.errors import UsageError
from daemon.storage import ArchiveKey, open_storage


@dataclass(frozen=True)
class ArchiveRow:
    key: ArchiveKey
    manifest: Manifest
    drill: DrillRecord | None

    def to_json(self) -> dict[str, object]:
        """The stable keys of `list --json`."""
        return {
            "id": self.key.id,
            "policy": self.key.policy,
            "volume": self.key.volume,
            "created": self.manifest.started.isoformat(),
            "size": self.manifest.size,
            "sha256": self.manifest.sha256,
            "compression": self.manifest.compression,
            "encrypted": self.manifest.encryption is not None,
            "kind": self.manifest.kind,
            "drill": self.drill.to_json() if self.drill else {"verdict": "never"},
        }


def list_archives(
    config: Config, policy: str | None = None, volume: str | None = None
) -> list[ArchiveRow]:
    """Return the committed archives of one policy (or all), newest first.

    Raise UsageError for an unknown policy. Unreadable manifests are skipped.
    """
    if policy is not None and policy not in config.policies:
        raise UsageError(f"unknown policy {policy!r}")
    names = [policy] if policy else sorted(config.policies)
    rows = []
    for name in names:
        storage = open_storage(config.storages[config.policies[name].storage])
        for key in storage.committed(name, volume):
            try:
                manifest = Manifest.from_json(storage.read_manifest(key), entries=False)
            except (OSError, ManifestError):
                continue
            rows.append(ArchiveRow(key, manifest, read_drill_record(storage, key)))
    rows.sort(key=lambda row: row.manifest.started, reverse=True)
    return rows


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
