"""Which members `restore --path` writes, decided member by member as the archive streams."""

from __future__ import annotations

from daemon.archive.select import select_members
from daemon.archive.tarstream import Member


def entries() -> list[Member]:
    def node(path: str, kind: str = "file", link: str | None = None) -> Member:
        return Member(path, kind, 0o755 if kind == "dir" else 0o644, 0, 0, 0, 0, link=link)

    return [
        node(".", "dir"),
        node("app", "dir"),
        node("app/config.yml"),
        node("app/uploads", "dir"),
        node("app/uploads/a.png"),
        node("app/uploads/deep", "dir"),
        node("app/uploads/deep/b.png"),
        node("data", "dir"),
        node("data/store.db"),
        node("data/mirror.conf", "hardlink", link="app/config.yml"),
    ]


def kept(patterns: list[str]) -> list[str]:
    selection = select_members(entries(), patterns)
    return [entry.path for entry in entries() if selection.keeps(entry)]


def test_a_matched_directory_brings_everything_under_it_and_its_parents() -> None:
    assert kept(["uploads/"]) == [
        "app",
        "app/uploads",
        "app/uploads/a.png",
        "app/uploads/deep",
        "app/uploads/deep/b.png",
    ]


def test_a_hard_link_brings_the_file_it_links_to_and_never_the_root() -> None:
    assert kept(["*.conf"]) == ["app", "app/config.yml", "data", "data/mirror.conf"]


def test_a_selection_holds_what_its_members_bring_not_the_members() -> None:
    selection = select_members(entries(), ["uploads/"])

    assert selection and selection.count == 4
    assert selection.added == {"app"}
    assert not select_members(entries(), ["*.txt"])
