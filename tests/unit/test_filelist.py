"""The backup's file list (`daemon.state.filelist`): the listing as a first backup's
members ask for it, in tar order, with the objects the tar did not hold passed over."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from daemon.actions.unchanged import MEMBER_TYPES
from daemon.state.filelist import READ_AHEAD, FileList, ListedRow, PreviousRow


def row(path: str, inode: int) -> ListedRow:
    return ListedRow(path, inode, 1, 10, 1_700_000_000, 1_700_000_000, 0o100644, 0, 0)


def listing(tmp_path: Path, count: int) -> FileList:
    files = FileList(tmp_path)
    for number in range(count):
        files.add_listed(row(f"./file-{number}", number))
    return files


def test_members_asked_in_tar_order_read_the_listing_a_batch_at_a_time(tmp_path: Path) -> None:
    count = 3 * READ_AHEAD + 5
    files = listing(tmp_path, count)
    statements: list[str] = []
    files._db.set_trace_callback(statements.append)  # what is asked of SQLite
    try:
        found = [files.listed(f"./file-{number}") for number in range(count)]
    finally:
        files.close()
    assert found == [row(f"./file-{number}", number) for number in range(count)]
    selects = [statement for statement in statements if statement.startswith("SELECT")]
    assert len(selects) == 4  # one per READ_AHEAD members, not one per member


def test_a_path_out_of_order_or_unlisted_is_looked_up_and_what_the_tar_skipped_passed_over(
    tmp_path: Path,
) -> None:
    files = listing(tmp_path, 10)
    try:
        assert files.listed("./file-0") == row("./file-0", 0)
        assert files.listed("./new-since-the-listing") is None
        assert files.listed("./file-1") == row("./file-1", 1)
        # file-2 and file-3 were removed before the tar came to them
        assert files.listed("./file-4") == row("./file-4", 4)
        assert files.listed("./file-5") == row("./file-5", 5)
        assert files.listed("./file-2") == row("./file-2", 2)  # out of order: still found
        assert [files.listed(f"./file-{number}") for number in range(6, 10)] == [
            row(f"./file-{number}", number) for number in range(6, 10)
        ]
        files.clear_listed()
        files.add_listed(row("./again", 11))
        assert files.listed("./again") == row("./again", 11)
        assert files.listed("./file-6") is None
    finally:
        files.close()


def test_a_previous_members_row_comes_back_from_plan_as_it_went_in(
    tmp_path: Path,
) -> None:
    members = [
        PreviousRow(0, "./a", "file", 0o644, 0, 0, 10, 1_700_000_000, None, None, None,
                    1, 1_700_000_000, True, 10, 20, 1024),
        PreviousRow(1, "./b", "symlink", 0o777, 1, 2, 0, 1_700_000_000.25, "a", None,
                    {"user.note": "kept"}, 2, None, False, 20, 30, 512),
    ]  # fmt: skip
    files = FileList(tmp_path)
    try:
        for seq, member in enumerate(members, start=1):
            files.add_listed(row(member.path, seq))
            files.add_previous(member)
            files.reuse(seq, member.position)
        assert files.to_read() == []
        planned = list(files.plan())
        assert planned == [(member.path, member) for member in members]
        first = planned[0][1]
        assert first is not None and type(first.mtime) is int  # an int stays an int
    finally:
        files.close()


def test_an_object_taken_twice_is_taken_from_the_last_member_named(tmp_path: Path) -> None:
    members = [
        PreviousRow(position, "./a", "file", 0o644, 0, 0, 10, 1_700_000_000, None, None, None,
                    1, 1_700_000_000, True, 10 * position, 10 * position + 10, 1024)
        for position in range(2)
    ]  # fmt: skip
    files = FileList(tmp_path)
    try:
        files.add_listed(row("./a", 1))
        for member in members:
            files.add_previous(member)
        # a path twice in the previous tar: paired twice, in its order
        assert list(files.unchanged(1_700_000_001, MEMBER_TYPES)) == [(1, 0), (1, 1)]
        files.reuse(1, 0)
        files.reuse(1, 1)
        assert list(files.plan()) == [("./a", members[1])]
    finally:
        files.close()


LISTED = ListedRow("./a", 7, 1, 10, 1_700_000_000, 1_700_000_000, 0o100644, 1, 2)
PREVIOUS = PreviousRow(0, "./a", "file", 0o644, 1, 2, 10, 1_700_000_000.75, None, None, None,
                       7, 1_700_000_000, True, 10, 20, 1024)  # fmt: skip


@pytest.mark.parametrize(
    ("listed", "previous", "taken"),
    [
        (LISTED, PREVIOUS, True),
        (LISTED, PREVIOUS._replace(type="hardlink", size=0), True),  # a later name
        (LISTED._replace(mode=stat.S_IFLNK | 0o777), PREVIOUS._replace(mode=0o777), False),
        (
            LISTED._replace(mode=stat.S_IFLNK | 0o777),
            PREVIOUS._replace(type="symlink", mode=0o777),
            True,
        ),
        (
            LISTED._replace(mode=stat.S_IFDIR | 0o755),
            PREVIOUS._replace(type="hardlink", mode=0o755),
            False,
        ),
        (
            LISTED._replace(mode=stat.S_IFDIR | 0o755, size=4096),
            PREVIOUS._replace(type="dir", mode=0o755),
            True,
        ),
        (LISTED._replace(mode=stat.S_IFSOCK | 0o644), PREVIOUS._replace(type="other"), False),
        (LISTED._replace(mode=0o100600), PREVIOUS, False),
        (LISTED._replace(uid=0), PREVIOUS, False),
        (LISTED._replace(gid=0), PREVIOUS, False),
        (LISTED._replace(size=11), PREVIOUS, False),
        (LISTED._replace(mtime=1_700_000_001), PREVIOUS, False),  # whole seconds, floored
        (LISTED._replace(inode=8), PREVIOUS, False),
        (
            LISTED._replace(ctime=1_700_000_001),
            PREVIOUS._replace(ctime=1_700_000_001),
            False,
        ),  # racy
        (LISTED, PREVIOUS._replace(ctime=1_699_999_999), False),
        (LISTED, PREVIOUS._replace(inode=None), False),  # no M line: not listed then
        (LISTED, PREVIOUS._replace(ctime=None), False),
        (LISTED, PREVIOUS._replace(held=False), False),  # a chunk not held
        (LISTED._replace(path="./b"), PREVIOUS, False),
    ],
)
def test_an_object_is_unchanged_if_its_listing_is_its_previous_members(
    tmp_path: Path, listed: ListedRow, previous: PreviousRow, taken: bool
) -> None:
    files = FileList(tmp_path)
    try:
        files.add_listed(listed)
        files.add_previous(previous)
        found = list(files.unchanged(1_700_000_001, MEMBER_TYPES))
    finally:
        files.close()
    assert found == ([(1, 0)] if taken else [])
