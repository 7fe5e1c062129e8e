"""What a whole storage holds, host by host: one listing of every key, sorted into host
namespaces, their policies and volumes, and the host records (`daemon.repository.hosts`).
`volkeep hosts`, `fleet status`, cross-host drills and the hints of a `list` or `restore`
that finds nothing come here; nothing here writes.

Keys are told apart by their depth (docs/repository.md): `<host>/.volkeep-host.json` is a
marker, `<host>/<policy>/<volume>/<file>` an archive's file, and `<policy>/<volume>/<file>`
one of the layout before host names (shown as the namespace "").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.repository.hosts import MARKER, HostRecord, read_record
from daemon.repository.layout import DRILL_SUFFIX, MANIFEST_SUFFIX, ArchiveKey, split_name
from daemon.storage.base import BlobStore

# The namespace of the layout before host names, as the inventory names it.
BEFORE_HOST_NAMES = ""


@dataclass
class VolumeFiles:
    """One volume's archives in one namespace: each id's key with the suffixes of its
    files."""

    files: dict[ArchiveKey, set[str]] = field(default_factory=dict)

    def committed(self) -> list[ArchiveKey]:
        """Return the committed archives (backups and safety), newest first."""
        keys = (key for key, suffixes in self.files.items() if MANIFEST_SUFFIX in suffixes)
        return sorted(keys, reverse=True)

    def drilled(self) -> list[ArchiveKey]:
        """Return the committed archives that have a drill record."""
        return [key for key in self.committed() if DRILL_SUFFIX in self.files[key]]


@dataclass
class Namespace:
    """One host's part of a storage; `record` is its marker (None: it has none, or
    `record_problem` says why it could not be read)."""

    host: str
    volumes: dict[tuple[str, str], VolumeFiles] = field(default_factory=dict)
    record: HostRecord | None = None
    record_problem: str | None = None
    marked: bool = False  # a marker is listed

    def policies(self) -> list[str]:
        named = {policy for policy, _ in self.volumes}
        if self.record is not None:
            named |= set(self.record.policies)
        return sorted(named)


def survey(store: BlobStore, *, records: bool = True) -> dict[str, Namespace]:
    """Given a store, return its namespaces by host name (the layout before host names under
    ""), each with its volumes' archive files and (if `records`) its record. Raise OSError
    if the store cannot be listed; a record that cannot be read is a namespace's
    `record_problem`."""
    namespaces: dict[str, Namespace] = {}

    def add(host: str, policy: str, volume: str, name: str) -> None:
        split = split_name(name, volume)
        if split is not None:
            namespace = namespaces.setdefault(host, Namespace(host))
            files = namespace.volumes.setdefault((policy, volume), VolumeFiles()).files
            files.setdefault(ArchiveKey(policy, volume, split[0], host), set()).add(split[1])

    # one directory at a time, down to the volumes' files: never a policy's chunk
    # repository (`_chunks/`, which no volume name can be), which may hold many packs
    for top in store.list_directory(""):
        for name in store.list_directory(top) if top.endswith("/") else ():
            if name == MARKER:
                namespaces.setdefault(top[:-1], Namespace(top[:-1])).marked = True
            elif name.endswith("/"):
                for inner in store.list_directory(top + name):
                    if not inner.endswith("/"):  # <policy>/<volume>/<file>: before host names
                        add(BEFORE_HOST_NAMES, top[:-1], name[:-1], inner)
                    elif not inner.startswith("_"):  # <host>/<policy>/<volume>/
                        for file in store.list_directory(top + name + inner):
                            add(top[:-1], name[:-1], inner[:-1], file)
    for namespace in namespaces.values():
        if records and namespace.marked:
            try:
                namespace.record = read_record(store, namespace.host)
            except ValueError as error:
                namespace.record_problem = str(error)
    return dict(sorted(namespaces.items()))


def hosts_holding(store: BlobStore, policy: str, volume: str | None) -> list[str]:
    """Return the hosts that hold a committed archive of the policy (of the volume, if
    given) in the store, by name ("" for the layout before host names). Raise OSError."""
    return [
        namespace.host
        for namespace in survey(store, records=False).values()
        if any(
            files.committed()
            for (named_policy, named_volume), files in namespace.volumes.items()
            if named_policy == policy and volume in (None, named_volume)
        )
    ]
