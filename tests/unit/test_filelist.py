"""The backup's file list (`daemon.state.filelist`): the listing as a first backup's
members ask for it, in tar order, with the objects the tar did not hold passed over."""

from __future__ import annotations

from pathlib import Path

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


def test_a_previous_members_row_comes_back_from_pairs_and_plan_as_it_went_in(
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
        for number, member in enumerate(members):
            files.add_listed(row(member.path, number))
            files.add_previous(member)
        paired = list(files.pairs())
        assert [previous for _, _, previous in paired] == members
        first = paired[0][2]
        assert first is not None and type(first.mtime) is int  # an int stays an int
        for seq, _, previous in paired:
            assert previous is not None
            files.reuse(seq, previous.position)
        assert files.to_read() == []
        assert list(files.plan()) == [(member.path, member) for member in members]
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
        [(seq, _, _), _] = files.pairs()  # a path twice in the previous tar: paired twice
        files.reuse(seq, 0)
        files.reuse(seq, 1)
        assert list(files.plan()) == [("./a", members[1])]
    finally:
        files.close()
