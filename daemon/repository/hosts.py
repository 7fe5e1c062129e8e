"""The host record: `<host>/.volkeep-host.json`, the marker that claims a host's namespace
for one machine and tells the fleet what that host backs up and when (docs/fleet.md
describes it byte by byte).

- Claim. Before its first write or prune in a storage, a host reads its marker: absent, it
  creates it with a conditional create (the first writer wins; a namespace written by a
  volkeep older than markers is claimed so, with a warning); claimed by this machine, it is
  rewritten if what it says changed; claimed by another machine (a cloned VM, a copied
  `daemon.host`), nothing is written and the operation fails (`NamespaceClaimed`).
- Content. Host name, machine id (derived: `daemon.system.machine`), tool version, and per
  policy its named volumes, schedules and time zone: what `fleet status` needs to
  tell an overdue backup without the host's config. Never a secret, never a path.
- A marker whose host was renamed (`volkeep rename-host`) names its new name: the old
  namespace stays readable (`--host OLD`), and no volkeep writes under it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import structlog

from daemon.errors import OperationError
from daemon.storage.base import BlobExists, BlobMissing, BlobStore

log = structlog.get_logger()

MARKER = ".volkeep-host.json"
RECORD_FORMAT = 1
SHOWN = 12  # hex digits of a machine id shown in messages


def marker_blob(host: str) -> str:
    """Given a host name, return where its marker is."""
    return f"{host}/{MARKER}"


@dataclass(frozen=True)
class PolicyRecord:
    """What a host's record says of one of its policies that uses the storage."""

    volumes: tuple[str, ...] = ()  # the volumes it names (those a match selects: not here)
    schedule: str | None = None  # the backup schedule as written ("0 3 * * *"); None: none
    drill_schedule: str | None = None
    timezone: str = "UTC"
    encrypted: bool = False
    drill_hosts: tuple[str, ...] = ()  # whose archives its scheduled drills cover

    def to_json(self) -> dict[str, object]:
        return {
            "volumes": list(self.volumes),
            "schedule": self.schedule,
            "drill_schedule": self.drill_schedule,
            "timezone": self.timezone,
            "encrypted": self.encrypted,
            "drill_hosts": list(self.drill_hosts),
        }

    @classmethod
    def from_json(cls, document: dict[str, object]) -> PolicyRecord:
        """Raise ValueError if a known field has the wrong type; unknown fields are
        skipped (a later version's)."""
        return cls(
            volumes=tuple(_strings(document.get("volumes", []))),
            schedule=_optional_string(document.get("schedule")),
            drill_schedule=_optional_string(document.get("drill_schedule")),
            timezone=_optional_string(document.get("timezone")) or "UTC",
            encrypted=document.get("encrypted") is True,
            drill_hosts=tuple(_strings(document.get("drill_hosts", []))),
        )


@dataclass(frozen=True)
class HostRecord:
    host: str
    machine: str  # the derived machine id (`daemon.system.machine`)
    tool_version: str
    policies: dict[str, PolicyRecord] = field(default_factory=dict)
    claimed: datetime = field(default_factory=lambda: datetime.now(UTC))  # the first claim
    written: datetime = field(default_factory=lambda: datetime.now(UTC))
    renamed_to: str | None = None

    def says_the_same(self, other: HostRecord) -> bool:
        """Whether two records differ only in when they were written."""
        return replace(self, written=other.written, claimed=other.claimed) == other

    def to_bytes(self) -> bytes:
        document = {
            "format": RECORD_FORMAT,
            "host": self.host,
            "machine": self.machine,
            "tool_version": self.tool_version,
            "claimed": _stamp(self.claimed),
            "written": _stamp(self.written),
            "renamed_to": self.renamed_to,
            "policies": {name: self.policies[name].to_json() for name in sorted(self.policies)},
        }
        return json.dumps(document, indent=1, sort_keys=False).encode() + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> HostRecord:
        """Given a record as `to_bytes` wrote it (this version, an earlier or a later one),
        return it. Raise ValueError if it cannot be read."""
        try:
            document = json.loads(raw)
            policies = document.get("policies") or {}
            return cls(
                host=_string(document["host"]),
                machine=_string(document["machine"]),
                tool_version=_string(document.get("tool_version", "")),
                policies={
                    _string(name): PolicyRecord.from_json(dict(entry))
                    for name, entry in dict(policies).items()
                },
                claimed=datetime.fromisoformat(document["claimed"]),
                written=datetime.fromisoformat(document["written"]),
                renamed_to=_optional_string(document.get("renamed_to")),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"unreadable host record: {error!r}") from None


class NamespaceClaimed(OperationError):
    """A host name that another machine's marker claims in a storage: nothing is written."""


def read_record(store: BlobStore, host: str) -> HostRecord | None:
    """Return the host's record in the store, or None if it has none. Raise ValueError if
    it cannot be read, OSError if the store fails."""
    try:
        return HostRecord.from_bytes(store.get(marker_blob(host)))
    except BlobMissing:
        return None


def claim_namespace(store: BlobStore, wanted: HostRecord) -> None:
    """Make the store's marker of `wanted.host` say `wanted`, if that host name is free or
    this machine's (see the module's doc).

    Raise NamespaceClaimed, before anything is written, if another machine claims the name,
    if its host was renamed, or if its marker cannot be read; OSError if the store fails.
    """
    existing = _readable_record(store, wanted.host)
    if existing is None:
        if any(True for _ in store.list(f"{wanted.host}/")):
            log.warning(
                "claiming a host namespace that has no marker (written by a volkeep before "
                "0.4, or its marker was deleted)",
                host=wanted.host,
                storage=store.name,
            )
        try:
            store.put(marker_blob(wanted.host), wanted.to_bytes(), exclusive=True)
            return
        except BlobExists:  # another process was first: judge its claim
            existing = _readable_record(store, wanted.host)
            if existing is None:
                raise _refusal(store, wanted.host, "lost its marker as it was claimed") from None
    if existing.machine != wanted.machine:
        raise _refusal(
            store,
            wanted.host,
            f"is claimed by machine {existing.machine[:SHOWN]}…; this machine is "
            f"{wanted.machine[:SHOWN]}…: set daemon.host to a name of its own, or, if this "
            "machine replaces that one (a rebuild), run `volkeep adopt-host`",
        )
    if existing.renamed_to is not None:
        raise _refusal(
            store,
            wanted.host,
            f"was renamed {existing.renamed_to!r} (volkeep rename-host): set "
            f"daemon.host: {existing.renamed_to}",
        )
    if not existing.says_the_same(wanted):
        store.put(marker_blob(wanted.host), replace(wanted, claimed=existing.claimed).to_bytes())


def replace_record(store: BlobStore, record: HostRecord) -> None:
    """Write the record whatever the store's marker says (an operator's word: adopt-host,
    rename-host). Raise OSError if the store fails."""
    store.put(marker_blob(record.host), record.to_bytes())


def _readable_record(store: BlobStore, host: str) -> HostRecord | None:
    try:
        return read_record(store, host)
    except ValueError as error:
        raise _refusal(
            store,
            host,
            f"has an unreadable marker {marker_blob(host)} ({error}): "
            "`volkeep adopt-host` writes a new one",
        ) from None


def _refusal(store: BlobStore, host: str, why: str) -> NamespaceClaimed:
    return NamespaceClaimed(
        f"storage {store.name!r} ({store.describe()}): host name {host!r} {why}; nothing "
        "was written"
    )


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {value!r}")
    return value


def _optional_string(value: object) -> str | None:
    return None if value is None else _string(value)


def _strings(value: object) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, found {value!r}")
    return [_string(item) for item in value]
