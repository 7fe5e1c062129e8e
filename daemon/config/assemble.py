"""Putting the policy files together into one Config.

Each file's top level is read here, and the rules that span files are applied: one
definition per policy and storage name, storages referenced from any file, at most one
`daemon:` block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from daemon.config.model import Config, DaemonSettings
from daemon.config.monitoring import exposed_urls
from daemon.config.nodes import (
    Converter,
    Entry,
    Invalid,
    child_path,
    describe,
    integer,
    invalid,
    location,
    mapping_entries,
    problem_at,
    read_record,
)
from daemon.config.schema import DAEMON, parse_policy, parse_storage
from daemon.config.values import defined_name
from daemon.errors import ConfigProblem

T = TypeVar("T")

SUPPORTED_VERSION = 1


@dataclass(frozen=True)
class Document:
    """One policy file, composed into its tree of YAML nodes."""

    file: Path
    root: yaml.Node


def version(node: yaml.Node, path: str) -> int:
    """Given the node of `version:`, return the version. Raise Invalid unless it is supported."""
    number = integer()(node, path)
    if number != SUPPORTED_VERSION:
        message = f"unsupported version {number}: this volkeep reads version {SUPPORTED_VERSION}"
        raise invalid(node, path, message)
    return number


def section(node: yaml.Node, path: str) -> yaml.Node:
    """Given the node of a top-level section, return it as is: sections are read across files."""
    return node


TOP_LEVEL: dict[str, Converter[Any]] = {
    "version": version,
    "daemon": section,
    "storage": section,
    "policies": section,
}


def assemble_config(documents: Sequence[Document]) -> tuple[Config, list[ConfigProblem]]:
    """Given the composed policy files, in reading order, return the Config made of their
    valid parts and every problem found in them."""
    problems: list[ConfigProblem] = []
    sections: list[dict[str, yaml.Node]] = []
    for document in documents:
        found_sections, found = top_level_sections(document.root)
        sections.append(found_sections)
        problems += found

    def nodes_of(name: str) -> list[yaml.Node]:
        return [found[name] for found in sections if name in found]

    storage_entries, found = named_entries(nodes_of("storage"), "storage", "storage")
    problems += found
    policy_entries, found = named_entries(nodes_of("policies"), "policies", "policy")
    problems += found
    storage_names = {entry.name for entry in storage_entries}
    storages, found = convert_entries(
        storage_entries, lambda entry: parse_storage(entry, child_path("storage", entry.name))
    )
    problems += found
    policies, found = convert_entries(
        policy_entries,
        lambda entry: parse_policy(entry, child_path("policies", entry.name), storage_names),
    )
    problems += found
    daemon, found = daemon_settings(nodes_of("daemon"))
    problems += found
    files = tuple(document.file for document in documents)
    warnings = tuple(
        warning for document in documents for warning in exposed_urls(document.file, document.root)
    )
    secrets = [problem for document in documents for problem in secret_problems(document.root)]
    if secrets:  # no other message may show the secret's text
        problems = secrets + [p for p in problems if SECRET_MARK not in p.message.upper()]
    return Config(storages, policies, daemon, files, warnings), problems


SECRET_MARK = "AGE-SECRET-KEY-"


def secret_problems(root: yaml.Node) -> list[ConfigProblem]:
    """Given a file's root node, return a problem for each value that holds a private key
    (an age identity): secrets come from files or the environment (SPEC §3a, promise 6)."""
    problems = []
    pending, seen = [root], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:  # an alias repeats a node, or holds itself
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if SECRET_MARK in str(node.value).upper():
                message = (
                    "an age identity (a secret key) does not belong in the policy text: "
                    "keep it in a file named by identity_file, readable by root only"
                )
                problems.append(problem_at(node, "", message))
        elif isinstance(node, yaml.SequenceNode):
            pending += node.value
        elif isinstance(node, yaml.MappingNode):
            pending += [part for pair in node.value for part in pair]
    return sorted(problems, key=lambda problem: (problem.file, problem.line))


def top_level_sections(root: yaml.Node) -> tuple[dict[str, yaml.Node], list[ConfigProblem]]:
    """Given the root node of a file, return its sections by name and the problems of its top
    level: not a mapping, unknown keys, a missing or unsupported version."""
    if not isinstance(root, yaml.MappingNode):
        message = (
            "expected a mapping with 'version: 1', 'storage' and 'policies' at the top level, "
            f"got {describe(root)}"
        )
        return {}, [problem_at(root, "", message)]
    values, problems = read_record(root, "", TOP_LEVEL, required=("version",))
    values.pop("version", None)
    return values, problems


def named_entries(
    nodes: Sequence[yaml.Node], path: str, what: str
) -> tuple[list[Entry], list[ConfigProblem]]:
    """Given the nodes of one section (`storage:` or `policies:`) from every file, return the
    named entries they hold and the problems: a section that is not a mapping, invalid names,
    a name defined twice. Only the first definition of a name is returned."""
    first: dict[str, Entry] = {}
    problems: list[ConfigProblem] = []
    for node in nodes:
        try:
            entries, found = mapping_entries(node, path)
        except Invalid as error:
            problems += error.problems
            continue
        problems += found
        for entry in entries:
            entry_path = child_path(path, entry.name)
            if entry.name in first:
                defined = location(first[entry.name].key_node)
                message = f"{what} {entry.name!r} already defined at {defined}"
                problems.append(problem_at(entry.key_node, entry_path, message))
                continue
            try:
                defined_name(what)(entry.key_node, entry_path)
            except Invalid as error:
                problems += error.problems
            first[entry.name] = entry
    return list(first.values()), problems


def convert_entries(
    entries: Sequence[Entry], convert: Callable[[Entry], T]
) -> tuple[dict[str, T], list[ConfigProblem]]:
    """Given named entries and how to convert one, return the valid ones by name and the
    problems of the others."""
    values: dict[str, T] = {}
    problems: list[ConfigProblem] = []
    for entry in entries:
        try:
            values[entry.name] = convert(entry)
        except Invalid as error:
            problems += error.problems
    return values, problems


def daemon_settings(nodes: Sequence[yaml.Node]) -> tuple[DaemonSettings, list[ConfigProblem]]:
    """Given the `daemon:` blocks of every file, return the settings they hold and the
    problems: invalid settings in any block, or more than one block."""
    problems = [
        problem_at(node, "daemon", f"daemon settings already defined at {location(nodes[0])}")
        for node in nodes[1:]
    ]
    parsed: list[DaemonSettings] = []
    for node in nodes:
        try:
            parsed.append(DAEMON(node, "daemon"))
        except Invalid as error:
            problems += error.problems
    return (parsed[0] if parsed else DaemonSettings()), problems
