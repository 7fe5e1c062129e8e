"""The drill's comparison of a read-back tree with its manifest, without Docker."""

from __future__ import annotations

from dataclasses import replace

from daemon.archive.compare import compare_trees
from daemon.archive.tarstream import Member

SUNDAY = 1_795_000_000


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
