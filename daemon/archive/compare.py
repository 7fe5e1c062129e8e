"""Compare a tree read back from a volume with the manifest written at backup time.

Pure: it sees two streams of `Member`s and says, object by object, what differs: presence,
type, mode, owner, size, content digest, link target, hard-link grouping, mtime and, when
both tars record them (`xattrs`), extended attributes.

Two things are not differences. Which path of a hard-linked group the tar stream stores
as the file and which as links depends on directory order, so groups compare as sets of
paths. Mtimes compare in whole seconds: busybox tar writes no more, and the volume root's
mtime is restored to the second. Extended attributes belong to the file, not the path: a
hard link carries the attributes of the file its group stores.

Memory does not grow with the number of objects. Objects pair by path. The manifest's
entries come in the order of the backup's tar stream, the members read back in the order
of the helper's tar over the restored tree: the same tool over the same tree, nearly
always the same order. So the two streams are paired in step, an object that comes early
on one side waiting for its match on the other; should more than WINDOW objects wait,
both streams are read again, each sorted by path (an external merge sort: sorted runs of
RUN objects spilled to temporary files in `spool_dir`), and paired as two sorted streams.

Hard links hold memory by the hard link, not by the object: a first pass over the
manifest's entries (skipped when the manifest counts none) finds the hard-linked paths, so
that the content of the file each group stores is kept when it passes, for the links that
follow it, and the groups are compared once both streams have passed. A link the restore
made to a path the manifest does not link is reported as a hard-link difference with its
content uncompared (which path of it came first is not known when it passes).
"""

from __future__ import annotations

import heapq
import marshal
import math
import struct
import tempfile
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import zip_longest
from pathlib import Path
from typing import IO, Any

import zstandard

from daemon.archive.tarstream import Member

SHOWN = 20  # differences named in a verdict; the rest are counted
WINDOW = 10_000  # objects waiting for their match before the streams are sorted instead
RUN = 20_000  # objects sorted in memory at a time when sorting
SPILL_BATCH = 256  # objects per compressed record of a spilled run (what merging holds)
UNKNOWN = -1  # the size of a hard link whose stored file's content was not kept

Indexed = tuple[int, Member]  # an object and its place in its stream
Pair = tuple[Indexed | None, Indexed | None]  # the manifest's object, the object read back


@dataclass(frozen=True)
class Comparison:
    differences: list[str] = field(default_factory=list)  # the first SHOWN, in manifest order
    count: int = 0  # differences in all
    objects: int = 0  # objects with at least one difference
    compared: int = 0  # objects found on both sides and compared
    sorted: bool = False  # whether the streams were too far out of step and were sorted

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


class _OutOfStep(Exception):
    """Too many objects wait for their match: the streams are not in the same order."""


def compare_trees(
    expected: Iterable[Member],
    actual: Iterable[Member],
    shown: int = SHOWN,
    *,
    hard_links: bool = True,
    xattrs: bool = False,
    window: int = WINDOW,
    run: int = RUN,
    spool_dir: Path | None = None,
) -> Comparison:
    """Given the manifest's entries and the members read back (each in stream order, and
    each iterable again, giving the same members), return every difference between them,
    naming the first `shown`. `hard_links=False` says that the manifest holds no hard
    link, which spares a pass over it; `xattrs` that both streams record extended
    attributes (an object without any then has none), so that they are compared."""
    linked = _linked_paths(expected) if hard_links else frozenset()
    try:
        with _Sides(expected, actual, linked) as sides:
            pairs = _in_step(sides.expected, sides.actual, window)
            return _compare(pairs, sides, shown, xattrs)
    except _OutOfStep:
        pass
    with (
        _Sides(expected, actual, linked) as sides,
        _Sorted(sides.expected, run, spool_dir) as expected_sorted,
        _Sorted(sides.actual, run, spool_dir) as actual_sorted,
    ):
        pairs = _merged(expected_sorted, actual_sorted)
        return replace(_compare(pairs, sides, shown, xattrs), sorted=True)


def _linked_paths(members: Iterable[Member]) -> frozenset[str]:
    """Return every path of a hard-linked group of the stream: the links and their files."""
    paths: set[str] = set()
    for member in members:
        if member.type == "hardlink" and member.link is not None:
            paths.update((member.path, member.link))
    return frozenset(paths)


# What the paths of a hard-linked group share: type, link target, size, digest, attributes
_Shared = tuple[str, str | None, int, str | None, dict[str, str] | None]
UNSTORED: _Shared = ("file", None, UNKNOWN, None, None)  # a link to a path the stream lacks


class _Side:
    """One stream's objects in its own order, each with its place, hard links resolved: a
    link is the object it shares (a file, a symbolic link...), with its own header's
    metadata."""

    def __init__(self, members: Iterable[Member], linked: frozenset[str]) -> None:
        self._members = iter(members)
        self._linked = linked
        self.first: dict[str, str] = {}  # hard-linked path -> the path stored as the object
        # type, link target, size, digest and extended attributes of those: which of a
        # group's paths a stream stores is the order its tar met them in, which differs
        # between file systems (a tmpfs lists a directory in another order than ext4)
        self._stored: dict[str, _Shared] = {}
        self.objects = self._resolved()

    def _resolved(self) -> Generator[Indexed, None, None]:
        for index, member in enumerate(self._members):
            if member.type == "hardlink" and member.link is not None:
                first = self.first.get(member.link, member.link)
                self.first[member.path] = self.first[first] = first
                kind, link, size, digest, xattrs = self._stored.get(first, UNSTORED)
                member = replace(
                    member, type=kind, link=link, size=size, sha256=digest, xattrs=xattrs
                )
            elif member.path in self._linked:
                shared = (member.type, member.link, member.size, member.sha256, member.xattrs)
                self._stored[member.path] = shared
            yield index, member

    def groups(self) -> dict[str, frozenset[str]]:
        """Each hard-linked path's group of paths, as far as the stream has passed."""
        members: dict[str, set[str]] = {}
        for path, first in self.first.items():
            members.setdefault(first, set()).add(path)
        return {path: frozenset(members[first]) for path, first in self.first.items()}

    def close(self) -> None:
        self.objects.close()
        close = getattr(self._members, "close", None)
        if close is not None:
            close()


class _Sides:
    """Both streams, opened together and closed together on every way out."""

    def __init__(
        self, expected: Iterable[Member], actual: Iterable[Member], linked: frozenset[str]
    ) -> None:
        self.linked = linked
        self.expected_side = _Side(expected, linked)
        try:
            self.actual_side = _Side(actual, linked)
        except BaseException:
            self.expected_side.close()
            raise
        self.expected = self.expected_side.objects
        self.actual = self.actual_side.objects

    def __enter__(self) -> _Sides:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.expected_side.close()
        finally:
            self.actual_side.close()


def _in_step(expected: Iterator[Indexed], actual: Iterator[Indexed], window: int) -> Iterator[Pair]:
    """Pair two streams read side by side; raise _OutOfStep when more than `window`
    objects wait for their match."""
    waiting_expected: dict[str, Indexed] = {}
    waiting_actual: dict[str, Indexed] = {}
    for left, right in zip_longest(expected, actual):
        if left is not None and right is not None and left[1].path == right[1].path:
            yield left, right
            continue
        if left is not None:
            if (match := waiting_actual.pop(left[1].path, None)) is not None:
                yield left, match
            else:
                waiting_expected[left[1].path] = left
        if right is not None:
            if (match := waiting_expected.pop(right[1].path, None)) is not None:
                yield match, right
            else:
                waiting_actual[right[1].path] = right
        if len(waiting_expected) + len(waiting_actual) > window:
            raise _OutOfStep
    yield from ((left, None) for left in waiting_expected.values())
    yield from ((None, right) for right in waiting_actual.values())


def _merged(expected: Iterator[Indexed], actual: Iterator[Indexed]) -> Iterator[Pair]:
    """Pair two streams sorted by path."""
    left, right = next(expected, None), next(actual, None)
    while left is not None or right is not None:
        if right is None or (left is not None and left[1].path < right[1].path):
            yield left, None
            left = next(expected, None)
        elif left is None or right[1].path < left[1].path:
            yield None, right
            right = next(actual, None)
        else:
            yield left, right
            left, right = next(expected, None), next(actual, None)


_LENGTH = struct.Struct("<I")


class _Sorted:
    """A stream's objects sorted by path (then by place), with at most `run` of them in
    memory: each run is sorted, spilled compressed to an unnamed temporary file, and the
    runs are merged."""

    def __init__(self, objects: Iterator[Indexed], run: int, spool_dir: Path | None) -> None:
        self._runs: list[IO[bytes]] = []
        self._objects = objects
        self._run = run
        self._spool_dir = spool_dir

    def __enter__(self) -> Iterator[Indexed]:
        chunk: list[tuple[str, int, tuple[Any, ...]]] = []
        try:
            for index, member in self._objects:
                chunk.append((member.path, index, _fields(member)))
                if len(chunk) >= self._run:
                    self._spill(chunk)
                    chunk = []
            if self._runs:
                self._spill(chunk)
                return self._merge()
        except BaseException:
            self.__exit__()
            raise
        chunk.sort()
        return ((index, Member(*fields)) for _, index, fields in chunk)

    def _spill(self, chunk: list[tuple[str, int, tuple[Any, ...]]]) -> None:
        chunk.sort()
        spilled = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 (closed on exit)
        self._runs.append(spilled)
        compressor = zstandard.ZstdCompressor(level=1)
        for start in range(0, len(chunk), SPILL_BATCH):
            record = compressor.compress(marshal.dumps(chunk[start : start + SPILL_BATCH]))
            spilled.write(_LENGTH.pack(len(record)) + record)
        spilled.seek(0)

    def _merge(self) -> Iterator[Indexed]:
        for _, index, fields in heapq.merge(*(_unspilled(run) for run in self._runs)):
            yield index, Member(*fields)

    def __exit__(self, *exc_info: object) -> None:
        for spilled in self._runs:
            spilled.close()


def _fields(member: Member) -> tuple[Any, ...]:
    return (
        member.path,
        member.type,
        member.mode,
        member.uid,
        member.gid,
        member.size,
        member.mtime,
        member.link,
        member.sha256,
        member.xattrs,
    )


def _unspilled(spilled: IO[bytes]) -> Iterator[tuple[str, int, tuple[Any, ...]]]:
    decompressor = zstandard.ZstdDecompressor()
    while header := spilled.read(_LENGTH.size):
        record = spilled.read(_LENGTH.unpack(header)[0])
        yield from marshal.loads(decompressor.decompress(record))


class _Tally:
    """The differences counted, and the first `shown` objects that differ in manifest
    order (the manifest's objects by their place, then those found only read back)."""

    def __init__(self, shown: int) -> None:
        self.shown = shown
        self.count = 0
        self.objects = 0
        self.compared = 0
        self._heap: list[tuple[tuple[int, int], str]] = []  # keys negated: the last on top
        self._named: dict[str, tuple[tuple[int, int], list[str]]] = {}

    def add(self, key: tuple[int, int], path: str, found: list[str], *, new: bool = True) -> None:
        """Count an object's differences (`new`: the first found for it)."""
        if not found:
            return
        self.count += len(found)
        self.objects += new
        if path in self._named:
            self._named[path][1].extend(found)
        elif new:
            self._named[path] = (key, list(found))
            heapq.heappush(self._heap, ((-key[0], -key[1]), path))
            if len(self._heap) > self.shown:
                _, dropped = heapq.heappop(self._heap)
                del self._named[dropped]

    def result(self) -> Comparison:
        differences: list[str] = []
        for path, (_, found) in sorted(self._named.items(), key=lambda item: item[1][0]):
            differences += (f"{_display(path)} {what}" for what in found)
        return Comparison(differences[: self.shown], self.count, self.objects, self.compared)


def _compare(pairs: Iterator[Pair], sides: _Sides, shown: int, xattrs: bool) -> Comparison:
    tally = _Tally(shown)
    # The hard-linked paths met: their place, whether both sides hold them, whether they
    # differ already. Their groups are compared once both streams have passed.
    linked: dict[str, tuple[tuple[int, int], bool, bool]] = {}
    for left, right in pairs:
        expected, actual = left[1] if left else None, right[1] if right else None
        if left is not None:
            key, path = (0, left[0]), left[1].path
        else:
            assert right is not None  # a pair has one side at least
            key, path = (1, right[0]), right[1].path
        found = list(_differences(expected, actual, xattrs))
        both = expected is not None and actual is not None
        tally.compared += both
        if path in sides.linked or path in sides.actual_side.first:
            linked[path] = (key, both, bool(found))
        tally.add(key, path, found)
    expected_groups = sides.expected_side.groups()
    actual_groups = sides.actual_side.groups()
    for path in expected_groups.keys() | actual_groups.keys():
        # A path linked only read back, and met before it turned out linked, is taken as
        # present on both sides and placed after the others.
        key, both, differed = linked.get(path, ((2, 0), True, False))
        expected_group = expected_groups.get(path, frozenset({path}))
        actual_group = actual_groups.get(path, frozenset({path}))
        if both and expected_group != actual_group:
            what = f"hard links {_others(expected_group, path)}≠{_others(actual_group, path)}"
            tally.add(key, path, [what], new=not differed)
    return tally.result()


def _differences(expected: Member | None, actual: Member | None, xattrs: bool) -> Iterator[str]:
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
    # UNKNOWN: a link whose stored file's content and attributes were not kept (its group
    # tells)
    kept = UNKNOWN not in (expected.size, actual.size)
    if kept and expected.size != actual.size:
        yield f"size {expected.size}≠{actual.size}"
    elif kept and expected.sha256 != actual.sha256:
        yield "content"
    if kept and xattrs:
        yield from _xattr_differences(expected.xattrs or {}, actual.xattrs or {})
    if expected.link != actual.link:
        yield f"link {expected.link}≠{actual.link}"
    if math.floor(expected.mtime) != math.floor(actual.mtime):
        yield f"mtime {_time(expected.mtime)}≠{_time(actual.mtime)}"


def _xattr_differences(expected: dict[str, str], actual: dict[str, str]) -> Iterator[str]:
    """Name each extended attribute that differs; values are not shown (they may be
    binary, or long)."""
    for name in sorted(expected.keys() | actual.keys()):
        shown = name if name.isprintable() else repr(name)
        if name not in actual:
            yield f"xattr {shown} missing"
        elif name not in expected:
            yield f"xattr {shown} unexpected"
        elif expected[name] != actual[name]:
            yield f"xattr {shown}"


def _display(path: str) -> str:
    """Given a member path, return it as seen from the volume root, control characters
    escaped so that a verdict stays one line."""
    shown = "/" if path == "." else f"/{path}"
    return shown if shown.isprintable() else repr(shown)


def _others(group: frozenset[str], path: str) -> str:
    return "+".join(_display(other) for other in sorted(group - {path})) or "none"


def _time(mtime: float) -> str:
    return datetime.fromtimestamp(math.floor(mtime), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
