"""The drill's comparison of a read-back tree with its manifest, without Docker."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from daemon.archive.compare import compare_trees
from daemon.archive.tarstream import Member

SUNDAY = 1_795_000_000
ROOT = Path(__file__).resolve().parents[2]


def file(path: str, content: str = "a", **fields: object) -> Member:
    member = Member(path, "file", 0o644, 1000, 1000, len(content), SUNDAY, sha256=content * 64)
    return replace(member, **fields)


def tree() -> list[Member]:
    return [
        Member(".", "dir", 0o755, 0, 0, 0, SUNDAY),
        Member("docs", "dir", 0o750, 999, 999, 0, SUNDAY + 1),
        file("docs/a.txt", "a"),
        file("docs/b.txt", "b"),
        Member("docs/link", "symlink", 0o777, 0, 0, 0, SUNDAY, link="a.txt"),
        Member("docs/same", "hardlink", 0o644, 1000, 1000, 0, SUNDAY, link="docs/a.txt"),
        Member("fifo", "fifo", 0o600, 0, 0, 0, SUNDAY),
    ]


def test_an_identical_tree_has_no_differences() -> None:
    comparison = compare_trees(tree(), tree())

    assert comparison.identical
    assert comparison.summary() == ""


def test_hard_link_groups_compare_as_sets_whichever_path_the_stream_stores_first() -> None:
    readback = tree()
    readback[2] = Member("docs/a.txt", "hardlink", 0o644, 1000, 1000, 0, SUNDAY, link="docs/same")
    readback[5] = file("docs/same", "a")
    readback[2], readback[5] = readback[5], readback[2]

    assert compare_trees(tree(), readback).identical


def test_a_hard_linked_symlink_compares_whichever_path_the_stream_stores_first() -> None:
    """A tmpfs lists a directory in another order than the disk the backup read."""
    link = Member("docs/link", "symlink", 0o777, 0, 0, 0, SUNDAY, link="a.txt")
    manifest = [*tree(), Member("docs/twin", "hardlink", 0o777, 0, 0, 0, SUNDAY, link="docs/link")]
    readback = [*tree(), replace(link, path="docs/twin")]
    readback[4] = Member("docs/link", "hardlink", 0o777, 0, 0, 0, SUNDAY, link="docs/twin")
    readback[4], readback[-1] = readback[-1], readback[4]

    assert compare_trees(manifest, readback).differences == []


def test_a_broken_hard_link_is_reported_on_both_paths() -> None:
    readback = tree()
    readback[5] = file("docs/same", "a")

    comparison = compare_trees(tree(), readback)

    assert comparison.differences == [
        "/docs/a.txt hard links /docs/same≠none",
        "/docs/same hard links /docs/a.txt≠none",
    ]


def test_each_attribute_difference_is_named_with_expected_and_actual_values() -> None:
    readback = tree()
    readback[1] = replace(readback[1], mode=0o700, uid=0, mtime=SUNDAY + 3601)
    readback[3] = replace(readback[3], sha256="c" * 64)
    readback[4] = replace(readback[4], link="b.txt")

    comparison = compare_trees(tree(), readback)

    assert comparison.differences == [
        "/docs mode 0750≠0700",
        "/docs owner 999:999≠0:999",
        "/docs mtime 2026-11-18T11:06:41Z≠2026-11-18T12:06:41Z",
        "/docs/b.txt content",
        "/docs/link link a.txt≠b.txt",
    ]
    assert (comparison.count, comparison.objects) == (5, 3)
    assert comparison.summary().startswith("3 objects differ: /docs mode 0750≠0700, ")


def test_missing_unexpected_and_retyped_objects() -> None:
    readback = [member for member in tree() if member.path != "docs/b.txt"]
    readback[-1] = file("fifo", "")
    readback.append(file("stray", "s"))

    comparison = compare_trees(tree(), readback)

    assert comparison.differences == [
        "/docs/b.txt missing",
        "/fifo type fifo≠file",
        "/stray unexpected",
    ]


def test_a_size_difference_is_not_also_reported_as_content() -> None:
    readback = tree()
    readback[3] = file("docs/b.txt", "bb")

    assert compare_trees(tree(), readback).differences == ["/docs/b.txt size 1≠2"]


def test_a_changed_hard_linked_file_shows_on_every_path_of_its_group() -> None:
    readback = tree()
    readback[2] = file("docs/a.txt", "z")

    assert compare_trees(tree(), readback).differences == [
        "/docs/a.txt content",
        "/docs/same content",
    ]


def test_mtimes_compare_in_whole_seconds() -> None:
    readback = tree()
    readback[1] = replace(readback[1], mtime=SUNDAY + 1.75)

    assert compare_trees(tree(), readback).identical


def test_the_root_and_unprintable_names_are_shown_on_one_line() -> None:
    expected = [*tree(), file("new\nline")]
    readback = [replace(tree()[0], mode=0o700), *tree()[1:]]

    assert compare_trees(expected, readback).differences == [
        "/ mode 0755≠0700",
        "'/new\\nline' missing",
    ]


def test_only_the_first_differences_are_named_and_the_rest_counted() -> None:
    expected = [file(f"f{number:02}") for number in range(25)]

    comparison = compare_trees(expected, [], shown=20)

    assert len(comparison.differences) == 20
    assert comparison.differences[0] == "/f00 missing"
    assert (comparison.count, comparison.objects) == (25, 25)
    assert comparison.summary().endswith("/f19 missing and 5 more differences")


# Streams: pairing in step, and sorting when the orders differ too much.


def volume(count: int) -> list[Member]:
    """A tree with directories, files, hard links (stored first and later) and symlinks."""
    members = [Member(".", "dir", 0o755, 0, 0, 0, SUNDAY)]
    for index in range(count):
        directory = f"d{index // 10}"
        if index % 10 == 0:
            members.append(Member(directory, "dir", 0o755, 0, 0, 0, SUNDAY))
        members.append(file(f"{directory}/f{index}", str(index % 7)))
        if index % 9 == 0:
            link = f"{directory}/l{index}"
            members.append(
                Member(link, "hardlink", 0o644, 1000, 1000, 0, SUNDAY, link=members[-1].path)
            )
        if index % 13 == 0:
            members.append(
                Member(f"{directory}/s{index}", "symlink", 0o777, 0, 0, 0, SUNDAY, link="x")
            )
    return members


def broken(members: list[Member]) -> list[Member]:
    """The tree read back wrong: one file gone, one stray, one changed, one link broken."""
    readback = [member for member in members if member.path != "d3/f31"]
    readback.append(file("d9/stray", "s"))
    readback = [replace(m, sha256="9" * 64) if m.path == "d5/f52" else m for m in readback]
    return [file("d0/l0", "0") if m.path == "d0/l0" else m for m in readback]


BROKEN = [
    "/d0/f0 hard links /d0/l0≠none",
    "/d0/l0 hard links /d0/f0≠none",
    "/d3/f31 missing",
    "/d5/f52 content",
    "/d9/stray unexpected",
]


def test_objects_a_little_out_of_order_pair_in_step() -> None:
    readback = volume(100)
    readback[10:30] = reversed(readback[10:30])

    assert compare_trees(volume(100), readback, window=40).identical


def test_streams_too_far_out_of_order_are_sorted_and_compared_just_the_same(
    tmp_path: Path,
) -> None:
    readback = broken(volume(100))
    random.Random(5).shuffle(readback)  # hard links may now come before their files

    in_step = compare_trees(volume(100), broken(volume(100)))
    sorted_ = compare_trees(volume(100), readback, window=5, run=7, spool_dir=tmp_path)

    assert in_step.differences == sorted_.differences == BROKEN
    assert (sorted_.count, sorted_.objects) == (in_step.count, in_step.objects) == (5, 5)
    assert sorted_.compared == in_step.compared == len(volume(100)) - 1
    assert sorted_.sorted and not in_step.sorted
    assert list(tmp_path.iterdir()) == []  # the spilled runs are gone


def test_a_manifest_said_to_hold_no_hard_links_is_read_once() -> None:
    readings = []

    class Counted:
        def __iter__(self) -> Iterator[Member]:
            readings.append(1)
            return iter(tree()[:5])

    assert compare_trees(Counted(), tree()[:5], hard_links=False).identical
    assert len(readings) == 1


def test_a_million_objects_compare_in_bounded_memory(tmp_path: Path) -> None:
    # In a process of its own, so that its peak RSS is the comparison's.
    script = (
        "import json; from tests.unit.test_compare import compare_a_million; "
        "print(json.dumps(compare_a_million()))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    result = json.loads(run.stdout)

    assert result["differences"] == [
        "/d0500/f0500000 missing",
        "/d0700/f0700000 content",
        "/d0999/stray unexpected",
    ]
    assert result["compared"] == 1_001_000
    assert result["growth"] < 32 << 20, f"grew by {result['growth'] / 2**20:.1f} MiB"


class Million:
    """A million small files, generated again at each iteration; `broken` leaves one out,
    adds one and changes one."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken

    def __iter__(self) -> Iterator[Member]:
        yield Member(".", "dir", 0o755, 0, 0, 0, SUNDAY)
        for index in range(1_000_000):
            directory = f"d{index // 1000:04}"
            if index % 1000 == 0:
                yield Member(directory, "dir", 0o755, 0, 0, 0, SUNDAY)
            if self.broken and index == 500_000:
                continue
            digest = "9" * 64 if self.broken and index == 700_000 else f"{index:064x}"
            yield Member(f"{directory}/f{index:07}", "file", 0o644, 0, 0, 9, SUNDAY, sha256=digest)
            if self.broken and index == 999_999:
                yield file(f"{directory}/stray")


def compare_a_million() -> dict[str, object]:
    before = _memory("VmRSS")
    comparison = compare_trees(Million(), Million(broken=True), hard_links=False)
    return {
        "differences": comparison.differences,
        "compared": comparison.compared,
        "growth": _memory("VmHWM") - before,
    }


def _memory(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no {field} in /proc/self/status")


def test_extended_attributes_compare_when_both_tars_record_them() -> None:
    expected = tree()
    expected[2] = file("docs/a.txt", "a", xattrs={"user.origin": "volkeep"})
    expected[3] = file("docs/b.txt", "b", xattrs={"user.kept": "yes"})
    readback = tree()
    readback[2] = file("docs/a.txt", "a", xattrs={"user.origin": "elsewhere"})
    readback[3] = file("docs/b.txt", "b")  # the restore lost it
    readback[6] = replace(readback[6], xattrs={"user.new": "1"})

    comparison = compare_trees(expected, readback, xattrs=True)

    assert comparison.differences == [
        "/docs/a.txt xattr user.origin",
        "/docs/b.txt xattr user.kept missing",
        "/docs/same xattr user.origin",  # a hard link of /docs/a.txt: the same file
        "/fifo xattr user.new unexpected",
    ]


def test_extended_attributes_are_not_compared_when_the_read_back_tar_cannot_record_them() -> None:
    expected = tree()
    expected[2] = file("docs/a.txt", "a", xattrs={"user.origin": "volkeep"})

    assert compare_trees(expected, tree()).identical
