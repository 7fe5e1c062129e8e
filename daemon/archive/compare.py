"""Compare a tree read back from a volume with the manifest written at backup time.

Pure: it sees two lists of `Member`s and says, object by object, what differs: presence,
type, mode, owner, size, content digest, link target, hard-link grouping and mtime.

Two things are not differences. Which path of a hard-linked group the tar stream stores
as the file and which as links depends on directory order, so groups compare as sets of
paths. Mtimes compare in whole seconds: busybox tar writes no more, and the volume root's
mtime is restored to the second.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from daemon.archive.tarstream import Member

SHOWN = 20  # differences named in a verdict; the rest are counted


@dataclass(frozen=True)
class Comparison:
    differences: list[str] = field(default_factory=list)  # the first SHOWN, in manifest order
    count: int = 0  # differences in all
    objects: int = 0  # objects with at least one difference

    @property
    def identical(self) -> bool:
        return self.count == 0

    def summary(self) -> str:
        """Return "3 objects differ: /x content, /y mode 0644≠0600, /z missing", with the
        number left unnamed at the end; "" when identical."""
        if self.identical:
            return ""
        verb = "object differs" if self.objects == 1 else "objects differ"
        text = f"{self.objects} {verb}: {', '.join(self.differences)}"
        if self.count > len(self.differences):
            text += f" and {self.count - len(self.differences)} more differences"
        return text


def compare_trees(
    expected: Sequence[Member], actual: Sequence[Member], shown: int = SHOWN
) -> Comparison:
    """Given the manifest's entries and the members read back (each in stream order),
    return every difference between them, naming the first `shown`."""
    expected_objects, expected_groups = _resolve(expected)
    actual_objects, actual_groups = _resolve(actual)
    paths = [*expected_objects, *(path for path in actual_objects if path not in expected_objects)]
    differences: list[str] = []
    count = objects = 0
    for path in paths:
        found = list(
            _differences(
                expected_objects.get(path),
                actual_objects.get(path),
                expected_groups.get(path, frozenset({path})),
                actual_groups.get(path, frozenset({path})),
            )
        )
        if found:
            objects += 1
            count += len(found)
            differences.extend(
                f"{_display(path)} {what}" for what in found[: shown - len(differences)]
            )
    return Comparison(differences, count, objects)


def _resolve(members: Sequence[Member]) -> tuple[dict[str, Member], dict[str, frozenset[str]]]:
    """Given members in stream order, return each path's object (a hard link as the file it
    shares, with its own header's metadata) and each hard-linked path's group of paths."""
    objects: dict[str, Member] = {}
    first_path: dict[str, str] = {}  # hard-linked path -> the path stored as the file
    for member in members:
        if member.type == "hardlink" and member.link is not None:
            first = first_path.get(member.link, member.link)
            first_path[member.path] = first_path[first] = first
            stored = objects.get(first)
            objects[member.path] = replace(
                member,
                type="file",
                link=None,
                size=stored.size if stored else 0,
                sha256=stored.sha256 if stored else None,
            )
        else:
            objects[member.path] = member
    groups: dict[str, set[str]] = {}
    for path, first in first_path.items():
        groups.setdefault(first, set()).add(path)
    return objects, {path: frozenset(groups[first]) for path, first in first_path.items()}


def _differences(
    expected: Member | None,
    actual: Member | None,
    expected_group: frozenset[str],
    actual_group: frozenset[str],
) -> Iterator[str]:
    if actual is None:
        yield "missing"
        return
    if expected is None:
        yield "unexpected"
        return
    if expected.type != actual.type:
        yield f"type {expected.type}≠{actual.type}"
        return
    if expected.mode != actual.mode:
        yield f"mode {expected.mode:04o}≠{actual.mode:04o}"
    if (expected.uid, expected.gid) != (actual.uid, actual.gid):
        yield f"owner {expected.uid}:{expected.gid}≠{actual.uid}:{actual.gid}"
    if expected.size != actual.size:
        yield f"size {expected.size}≠{actual.size}"
    elif expected.sha256 != actual.sha256:
        yield "content"
    if expected.link != actual.link:
        yield f"link {expected.link}≠{actual.link}"
    if math.floor(expected.mtime) != math.floor(actual.mtime):
        yield f"mtime {_time(expected.mtime)}≠{_time(actual.mtime)}"
    if expected_group != actual_group:
        path = expected.path
        yield f"hard links {_others(expected_group, path)}≠{_others(actual_group, path)}"


def _display(path: str) -> str:
    """Given a member path, return it as seen from the volume root, control characters
    escaped so that a verdict stays one line."""
    shown = "/" if path == "." else f"/{path}"
    return shown if shown.isprintable() else repr(shown)


def _others(group: frozenset[str], path: str) -> str:
    return "+".join(_display(other) for other in sorted(group - {path})) or "none"


def _time(mtime: float) -> str:
    return datetime.fromtimestamp(math.floor(mtime), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
