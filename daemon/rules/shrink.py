"""The shrink guard (SPEC promise 13): a volume that lost most of its content never makes
retention delete the newest archive taken before the loss, until an operator accepts the
shrink or the longest keep window has passed.

A pure module over plain data; `daemon.rules.retention.protected_reasons` asks it.

What counts as a shrink. Each backup's manifest summary records, since format 1, how many
objects the volume held (`entries.count`) and the tar's size (`tar.size`: the files'
content plus a 512-byte header per object and padding). A backup *shrank* against the
backup before it when it holds

- fewer than half the objects, and the one before held at least `MIN_OBJECTS`, or
- fewer than half the tar bytes, and the one before held at least `MIN_TAR_BYTES`.

Objects catch a tree of small files deleted; bytes catch a few large files emptied. The
floors keep a volume of a handful of small files (a config volume edited by hand) from
tripping the guard at each edit. A removed and re-created volume (`docker compose down -v;
up`) backs up as one object and about 1.5 kB of tar, so anything past the floors trips it.
The two measures are read from every manifest ever written: no format change was needed,
and archives written before the guard existed take part. A loss spread over many backups,
each keeping more than half of the one before, is no shrink: the guard looks at one step.

What it keeps. For each shrink between two consecutive backups still in the storage, both
stay: the one before (`REASON_BEFORE`, the newest copy of the lost content) and the one
after (`REASON_AFTER`, the evidence of the loss: without it, a later prune could no longer
see the shrink and would let the one before go). Deleting anything else never separates
them, so a prune deletes nothing that a second prune would not.

What lifts it, for a shrink whose archive before was taken at time T:

- an operator's acceptance (`Acceptance`, recorded in the storage) of a shrink seen at or
  after T: accepting a shrink accepts every loss before it;
- the longest keep window (`longest_window`) having passed since T: by then the policy
  would no longer have promised T's content anyway. `keep_last` has no window: with only
  `keep_last`, the guard holds until an operator accepts.
"""

from __future__ import annotations

import builtins
import itertools
import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from daemon import __version__
from daemon.config.model import RetentionRules

MIN_OBJECTS = 10
MIN_TAR_BYTES = 1 << 20
REASON_BEFORE = "newest before a shrink"
REASON_AFTER = "first after a shrink"
ACCEPTANCE_FORMAT = 1
# days in the longest month and year: a window never ends before the calendar rule would
WINDOW_DAYS = {"keep_hourly": 1 / 24, "keep_daily": 1, "keep_weekly": 7, "keep_monthly": 31,
               "keep_yearly": 366}  # fmt: skip


@dataclass(frozen=True)
class Content:
    """What one backup of a volume held, as its manifest's summary counts it."""

    objects: int  # file system objects: the tar's members
    tar_bytes: int  # the tar's size: the files' content, headers and padding


def shrank(before: Content, after: Content) -> bool:
    """Given what a backup held and what the next backup of the volume holds, return
    whether the volume lost most of its content in between (see the module's docstring)."""
    lost_objects = before.objects >= MIN_OBJECTS and after.objects * 2 < before.objects
    lost_bytes = before.tar_bytes >= MIN_TAR_BYTES and after.tar_bytes * 2 < before.tar_bytes
    return lost_objects or lost_bytes


class Backup(Protocol):
    """A committed backup as retention sees it (`daemon.rules.retention.Candidate`)."""

    @property
    def id(self) -> str: ...

    @property
    def created(self) -> datetime: ...

    @property
    def content(self) -> Content | None: ...


@dataclass(frozen=True)
class Shrink:
    """Two consecutive backups of a volume, the second holding most of the first's content
    no more."""

    before: str  # the archive id of the newest backup taken before the loss
    before_created: datetime
    before_content: Content
    after: str  # the archive id of the first backup after it
    after_created: datetime
    after_content: Content

    def describe(self) -> str:
        """The shrink as a reason and a log line say it."""
        was, now = self.before_content, self.after_content
        return (
            f"on {self.after_created.astimezone(UTC):%Y-%m-%d %H:%M} UTC, {self.after}: objects "
            f"{was.objects} -> {now.objects}, tar bytes {was.tar_bytes} -> {now.tar_bytes}"
        )


@dataclass(frozen=True)
class Guard:
    """What lifts the guard of a volume in one storage: the acceptances recorded there
    (archives taken before `accepted_before` are free of it) and the longest keep window
    of the storage's rules (None: none, the guard holds until accepted)."""

    accepted_before: datetime | None = None
    window: timedelta | None = None

    def holds(self, shrink: Shrink, now: datetime) -> bool:
        """Given a shrink and the current time, return whether it still protects."""
        if self.accepted_before is not None and shrink.before_created < self.accepted_before:
            return False
        return self.window is None or shrink.before_created + self.window >= now


UNTIL_ACCEPTED = Guard()  # no acceptance, no window: the guard holds until accepted


def between(before: Backup, after: Backup) -> Shrink | None:
    """Given two consecutive backups of a volume, return the shrink between them, or None
    if there is none (or the content of one is unknown)."""
    if before.content is None or after.content is None:
        return None
    if not shrank(before.content, after.content):
        return None
    return Shrink(before.id, before.created, before.content, after.id, after.created, after.content)


def shrinks(backups: Sequence[Backup]) -> list[Shrink]:
    """Given committed backups of one volume (those with unknown content take no part),
    return each shrink between two consecutive ones, oldest first."""
    known = sorted(
        (backup for backup in backups if backup.content is not None),
        key=lambda backup: (backup.created, backup.id),
    )
    found = (between(before, after) for before, after in itertools.pairwise(known))
    return [shrink for shrink in found if shrink is not None]


def pending(backups: Sequence[Backup], guard: Guard, now: datetime) -> list[Shrink]:
    """Given committed backups of one volume that are not dated in the future, the guard
    and the current time, return the shrinks that still protect their archives, oldest
    first."""
    return [found for found in shrinks(backups) if guard.holds(found, now)]


def protected_reasons(
    backups: Sequence[Backup], guard: Guard, now: datetime
) -> dict[str, tuple[str, ...]]:
    """Given committed backups of one volume that are not dated in the future, the guard
    and the current time, return the ids the guard protects, each with why."""
    protected: dict[str, tuple[str, ...]] = {}
    for found in pending(backups, guard, now):
        reasons = (
            (found.before, f"{REASON_BEFORE} {found.describe()}"),
            (found.after, f"{REASON_AFTER} (kept with {found.before} until it goes)"),
        )
        for archive, reason in reasons:
            protected[archive] = (*protected.get(archive, ()), reason)
    return protected


def longest_window(rules: RetentionRules) -> timedelta | None:
    """Given a storage's keep rules, return the longest time they keep history for:
    `keep_within`, or N hours, days, weeks, months (31 days) or years (366 days) of a
    calendar rule; None if no rule has a window (`keep_last` alone, or no rule)."""
    windows = [rules.keep_within] if rules.keep_within is not None else []
    for key, days in WINDOW_DAYS.items():
        count: int | None = getattr(rules, key)
        if count is not None:
            windows.append(timedelta(days=count * days))
    return max(windows, default=None)


@dataclass(frozen=True)
class Acceptance:
    """An operator's acceptance of a volume's shrink, recorded in the storage (the format
    is in docs/retention.md): the archives taken before the shrinking backup started are
    free of the guard."""

    policy: str
    volume: str
    shrink: Shrink  # the newest shrink pending when it was accepted
    accepted: datetime
    host: str = field(default_factory=socket.gethostname)  # the host that accepted
    tool_version: str = __version__

    def to_bytes(self) -> builtins.bytes:
        found = self.shrink
        document = {
            "format": ACCEPTANCE_FORMAT,
            "policy": self.policy,
            "volume": self.volume,
            "before": {"archive": found.before, "started": found.before_created.isoformat(),
                       **vars(found.before_content)},
            "after": {"archive": found.after, "started": found.after_created.isoformat(),
                      **vars(found.after_content)},
            "accepted": self.accepted.isoformat(),
            "host": self.host,
            "tool_version": self.tool_version,
        }  # fmt: skip
        return json.dumps(document, indent=1).encode() + b"\n"

    @classmethod
    def from_bytes(cls, raw: builtins.bytes) -> Acceptance:
        """Given a record as `to_bytes` wrote it (or a later version, with more keys),
        return it. Raise ValueError if it is not one this version can read."""
        try:
            document = json.loads(raw)
            if document["format"] != ACCEPTANCE_FORMAT:
                raise ValueError(f"unknown acceptance format {document['format']!r}")
            before, after = document["before"], document["after"]
            found = Shrink(
                before["archive"],
                _aware(before["started"]),
                _content(before),
                after["archive"],
                _aware(after["started"]),
                _content(after),
            )
            return cls(
                document["policy"],
                document["volume"],
                found,
                _aware(document["accepted"]),
                document["host"],
                document["tool_version"],
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"unreadable shrink acceptance: {error!r}") from None


def guard(rules: RetentionRules, acceptances: Iterable[Acceptance]) -> Guard:
    """Given a storage's keep rules and the acceptances recorded there for a volume,
    return the volume's guard in that storage."""
    accepted = max((acceptance.shrink.after_created for acceptance in acceptances), default=None)
    return Guard(accepted, longest_window(rules))


def _aware(text: Any) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"a time without its timezone: {text!r}")
    return moment


def _content(document: dict[str, Any]) -> Content:
    objects, tar_bytes = document["objects"], document["tar_bytes"]
    if not isinstance(objects, int) or not isinstance(tar_bytes, int):
        raise ValueError("objects and tar_bytes must be integers")
    return Content(objects, tar_bytes)
