"""Where an archive's files live in a storage, and what an archive id is (SPEC §4).

Each host writes under its own name: `<host>/<policy>/<volume>/<volume>-<id>.tar.zst`
beside `…-<id>.manifest.json` and `…-<id>.drill.json`. Repositories written before host
names existed (`<policy>/<volume>/…`) are read as the local host's archives.

An id is the UTC start time (`20261128T030000Z`), with `-2`, `-3`… when taken, and
`-safety` last for the copy a forced restore takes first: `is_safety` is the one rule that
tells a safety archive from a backup, `id_order` the one rule that orders ids. While an
archive is written, its id is claimed by a `…-<id>.claim.json` beside it
(`daemon.repository.ids`). docs/repository.md describes every name byte by byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

# An archive dated later than this past now was written by a host whose clock is ahead:
# it is not what `latest` means (SPEC §2), and list, status and backups warn about it.
FUTURE_TOLERANCE = timedelta(minutes=5)
MANIFEST_SUFFIX = ".manifest.json"
DRILL_SUFFIX = ".drill.json"
CLAIM_SUFFIX = ".claim.json"
SAFETY_MARK = "-safety"
_ID = re.compile(r"(\d{8}T\d{6}Z)(?:-(\d+))?(-safety)?")


def id_order(archive_id: str) -> tuple[str, int, bool, str]:
    """Given an archive id, return what it sorts by: its time, then its counter as a number
    (none is 1, so `…Z` < `…Z-2` < `…Z-10`), then a backup before the safety archive of the
    same counter. An id of another form sorts by its text."""
    match = _ID.fullmatch(archive_id)
    if match is None:
        return archive_id, 0, False, archive_id
    stamp, counter, safety = match.groups()
    return stamp, int(counter or 1), safety is not None, archive_id


@dataclass(frozen=True, order=True)
class ArchiveKey:
    """One archive: `namespace` is the host it was written under ("": before host names).
    Keys of one volume sort by `id_order`."""

    policy: str
    volume: str
    id: str = field(compare=False)  # the UTC start time, e.g. "20261128T030000Z"
    namespace: str = field(default="", compare=False)
    order: tuple[str, int, bool, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", id_order(self.id))

    @property
    def is_safety(self) -> bool:
        """The one rule: a safety archive's id ends in "-safety"."""
        return self.id.endswith(SAFETY_MARK)

    @property
    def time(self) -> datetime | None:
        """The UTC start time the id records, or None if it records none."""
        try:
            return datetime.strptime(self.id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None

    def in_the_future(self, now: datetime | None = None) -> bool:
        moment = self.time
        return moment is not None and moment > (now or datetime.now(UTC)) + FUTURE_TOLERANCE

    @property
    def directory(self) -> str:
        return volume_directory(self.namespace, self.policy, self.volume)

    def file_name(self, suffix: str) -> str:
        return f"{self.volume}-{self.id}{suffix}"

    def blob(self, suffix: str) -> str:
        return self.directory + self.file_name(suffix)


def newest_backup(keys: Iterable[ArchiveKey]) -> ArchiveKey | None:
    """Given committed archives of a volume, return what "latest" means (SPEC §2): the
    newest backup (no safety archive) not dated in the future; None if there is none."""
    present = (key for key in keys if not key.is_safety and not key.in_the_future())
    return max(present, default=None)


def volume_directory(namespace: str, policy: str, volume: str) -> str:
    return f"{namespace}/{policy}/{volume}/" if namespace else f"{policy}/{volume}/"


def split_name(name: str, volume: str) -> tuple[str, str] | None:
    """Given a file name in a volume's directory, return (archive id, suffix), or None if
    it is not a file volkeep writes."""
    prefix = f"{volume}-"
    if not name.startswith(prefix) or "/" in name:
        return None
    archive_id, dot, rest = name[len(prefix) :].partition(".")
    return (archive_id, dot + rest) if archive_id and dot else None
