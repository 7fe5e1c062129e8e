"""Reading YAML nodes into plain values, each problem addressed by file, line and key path.

A converter is a function that, given a node and its dotted key path, returns a plain
value, or raises `Invalid` carrying one problem for each thing wrong under that node.
Converters for mappings collect the problems of every key before raising, so that one
run reports every mistake in a file, not only the first.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple, TypeGuard, TypeVar

import yaml
from yaml.constructor import SafeConstructor

from daemon.config.model import Source
from daemon.config.suggest import did_you_mean
from daemon.errors import ConfigProblem

T = TypeVar("T")
Word = TypeVar("Word", bound=str)
Converter = Callable[[yaml.Node, str], T]

TAG = "tag:yaml.org,2002:"
KINDS = {
    f"{TAG}str": "a string",
    f"{TAG}int": "an integer",
    f"{TAG}float": "a number",
    f"{TAG}bool": "a boolean",
    f"{TAG}timestamp": "a date",
    f"{TAG}binary": "binary data",
}
SCALARS = SafeConstructor()


class Invalid(Exception):
    """The problems found under one node; never empty."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__(problems)
        self.problems = problems


class Entry(NamedTuple):
    """One key of a mapping: its name, the node of the key and the node of its value."""

    name: str
    key_node: yaml.Node
    value_node: yaml.Node


def problem_at(node: yaml.Node, path: str, message: str) -> ConfigProblem:
    """Given a node, its key path and what is wrong with it, return the addressed problem."""
    mark = node.start_mark
    return ConfigProblem(mark.name, mark.line + 1, mark.column + 1, path, message)


def invalid(node: yaml.Node, path: str, message: str) -> Invalid:
    """Given a node, its key path and what is wrong with it, return the exception to raise."""
    return Invalid([problem_at(node, path, message)])


def source_of(node: yaml.Node) -> Source:
    """Given a node, return the file and line it was written at."""
    return Source(node.start_mark.name, node.start_mark.line + 1)


def location(node: yaml.Node) -> str:
    """Given a node, return "file:line" for a message that points at it."""
    source = source_of(node)
    return f"{source.file}:{source.line}"


def child_path(path: str, key: str) -> str:
    """Given a key path and a key under it, return the dotted path of that key."""
    return f"{path}.{key}" if path else key


def is_scalar(node: yaml.Node, kind: str) -> TypeGuard[yaml.ScalarNode]:
    """Given a node and a YAML core type ("str", "int", "bool"...), return whether it is one."""
    return isinstance(node, yaml.ScalarNode) and node.tag == f"{TAG}{kind}"


def describe(node: yaml.Node) -> str:
    """Given a node, return what it is for a message: "a list", "an integer (3)", "null"."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if is_scalar(node, "null"):
        return "nothing (null)"
    text = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return f"{KINDS.get(node.tag, f'a value tagged {node.tag}')} ({text!r})"


def wrong_type(node: yaml.Node, path: str, expected: str) -> Invalid:
    """Given a node of the wrong type and the type expected, return the exception to raise."""
    quote = isinstance(node, yaml.ScalarNode) and not is_scalar(node, "null")
    hint = "; put it in quotes to make it a string" if quote and expected == "a string" else ""
    return invalid(node, path, f"expected {expected}, got {describe(node)}{hint}")


def string(node: yaml.Node, path: str) -> str:
    """Given a string node, return its text. Raise Invalid for any other node."""
    if is_scalar(node, "str"):
        text: str = node.value
        return text
    raise wrong_type(node, path, "a string")


def non_empty_string(node: yaml.Node, path: str) -> str:
    """Given a string node holding more than blanks, return its text. Raise Invalid if not."""
    text = string(node, path)
    if not text.strip():
        raise invalid(node, path, "must not be empty")
    return text


def boolean(node: yaml.Node, path: str) -> bool:
    """Given a boolean node (true, false), return its value. Raise Invalid for any other node."""
    if is_scalar(node, "bool"):
        return SCALARS.construct_yaml_bool(node)
    raise wrong_type(node, path, "true or false")


def integer(minimum: int | None = None, maximum: int | None = None) -> Converter[int]:
    """Given bounds, return a converter of integer nodes within them (booleans are no integers)."""

    def convert(node: yaml.Node, path: str) -> int:
        if not is_scalar(node, "int"):
            raise wrong_type(node, path, "an integer")
        try:
            number = SCALARS.construct_yaml_int(node)
        except ValueError:
            raise invalid(node, path, f"invalid integer {node.value!r}") from None
        if minimum is not None and number < minimum:
            raise invalid(node, path, f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise invalid(node, path, f"must be at most {maximum}, got {number}")
        return number

    return convert


def choice(options: Collection[Word], what: str) -> Converter[Word]:
    """Given the accepted words and what they name, return a converter of one of those words."""

    def convert(node: yaml.Node, path: str) -> Word:
        word = string(node, path)
        for option in options:
            if option == word:
                return option
        hint = did_you_mean(word, options)
        known = ", ".join(options)
        raise invalid(node, path, f"unknown {what} {word!r}{hint}; expected one of: {known}")

    return convert


def list_of(
    item: Converter[T], *, expected: str = "a list", non_empty: bool = False, unique: bool = False
) -> Converter[tuple[T, ...]]:
    """Given a converter of one item, return a converter of a list of such items.

    `non_empty` refuses an empty list; `unique` refuses an item written twice.
    """

    def convert(node: yaml.Node, path: str) -> tuple[T, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise wrong_type(node, path, expected)
        if non_empty and not node.value:
            raise invalid(node, path, "must not be empty")
        values: list[T] = []
        problems: list[ConfigProblem] = []
        for index, item_node in enumerate(node.value):
            item_path = f"{path}[{index}]"
            try:
                value = item(item_node, item_path)
            except Invalid as error:
                problems += error.problems
                continue
            if unique and value in values:
                problems.append(problem_at(item_node, item_path, f"{value!r} is listed twice"))
            values.append(value)
        if problems:
            raise Invalid(problems)
        return tuple(values)

    return convert


def mapping_entries(
    node: yaml.Node, path: str, seen: frozenset[int] = frozenset()
) -> tuple[list[Entry], list[ConfigProblem]]:
    """Given a mapping node, return its entries and the problems with its keys.

    Merge keys ("<<: *defaults") are expanded, the keys written in the mapping itself taking
    precedence. Keys that are not strings and keys written twice are problems, and only
    the first of two same keys is returned. Raise Invalid if `node` is not a mapping.
    """
    if not isinstance(node, yaml.MappingNode):
        raise wrong_type(node, path, "a mapping")
    entries: dict[str, Entry] = {}
    merged: list[yaml.Node] = []
    problems: list[ConfigProblem] = []
    for key_node, value_node in node.value:
        if key_node.tag == f"{TAG}merge":
            many = isinstance(value_node, yaml.SequenceNode)
            merged += value_node.value if many else [value_node]
        elif not is_scalar(key_node, "str"):
            problems.append(
                problem_at(key_node, path, f"keys must be strings, not {describe(key_node)}")
            )
        elif key_node.value in entries:
            first = entries[key_node.value].key_node
            message = f"duplicate key {key_node.value!r} (first at line {source_of(first).line})"
            problems.append(problem_at(key_node, child_path(path, key_node.value), message))
        else:
            entries[key_node.value] = Entry(key_node.value, key_node, value_node)
    seen = seen | {id(node)}
    for source in merged:
        if id(source) in seen:
            continue
        try:
            # the merged mapping's own key problems are reported where it is written
            inherited, _ = mapping_entries(source, child_path(path, "<<"), seen)
        except Invalid as error:
            problems += error.problems
            continue
        for entry in inherited:
            entries.setdefault(entry.name, entry)
    return list(entries.values()), problems


def value_of(node: yaml.Node, key: str) -> yaml.Node:
    """Given a mapping node known to be valid and one of its keys, return that key's value node."""
    return next(entry.value_node for entry in mapping_entries(node, "")[0] if entry.name == key)


def read_record(
    node: yaml.Node,
    path: str,
    fields: Mapping[str, Converter[Any]],
    *,
    required: Collection[str] = (),
    exactly_one_of: Collection[str] = (),
) -> tuple[dict[str, Any], list[ConfigProblem]]:
    """Given a mapping node and the converter of each key it may hold, return the values of
    its valid keys and the problems found.

    Problems: unknown, duplicate or missing keys, invalid values, and, when `exactly_one_of`
    is given, none or several of those keys. Raise Invalid if `node` is not a mapping.
    """
    entries, problems = mapping_entries(node, path)
    values: dict[str, Any] = {}
    for entry in entries:
        entry_path = child_path(path, entry.name)
        if entry.name not in fields:
            hint = did_you_mean(entry.name, fields)
            problems.append(
                problem_at(entry.key_node, entry_path, f"unknown key {entry.name!r}{hint}")
            )
            continue
        try:
            values[entry.name] = fields[entry.name](entry.value_node, entry_path)
        except Invalid as error:
            problems += error.problems
    names = [entry.name for entry in entries]
    for name in required:
        if name not in names:
            problems.append(problem_at(node, child_path(path, name), f"missing key {name!r}"))
    problems += exclusive_key_problems(node, path, entries, exactly_one_of)
    return values, problems


def exclusive_key_problems(
    node: yaml.Node, path: str, entries: list[Entry], exclusive: Collection[str]
) -> list[ConfigProblem]:
    """Given a mapping's node and entries, and keys of which it needs exactly one, return the
    problem when it has none or several of them."""
    given = [entry for entry in entries if entry.name in exclusive]
    alternatives = " or ".join(repr(name) for name in exclusive)
    if exclusive and not given:
        return [problem_at(node, path, f"needs one of {alternatives}")]
    if len(given) > 1:
        second = given[1]
        message = f"{given[0].name!r} and {second.name!r} exclude each other: give only one"
        return [problem_at(second.key_node, child_path(path, second.name), message)]
    return []


def record(
    fields: Mapping[str, Converter[Any]],
    into: Callable[..., T],
    *,
    required: Collection[str] = (),
    exactly_one_of: Collection[str] = (),
) -> Converter[T]:
    """Given the converter of each key of a mapping and what to build from their values
    (called with them as keyword arguments), return a converter of such mappings."""

    def convert(node: yaml.Node, path: str) -> T:
        values, problems = read_record(
            node, path, fields, required=required, exactly_one_of=exactly_one_of
        )
        if problems:
            raise Invalid(problems)
        return into(**values)

    return convert
