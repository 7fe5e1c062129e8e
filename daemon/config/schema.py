"""The policy file format: what each key may hold, and the model object it becomes.

The tables of fields below are the schema; the functions are the converters of the
values that need more than a type check (durations, schedules, volume names...).
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from daemon.config.model import (
    Compression,
    CompressionAlgorithm,
    DaemonSettings,
    DrillChoice,
    DrillConfig,
    ExecHook,
    Hook,
    Hooks,
    Policy,
    RetentionRules,
    RunHook,
    Schedule,
    StorageConfig,
    VolumeSelector,
)
from daemon.config.nodes import (
    Converter,
    Entry,
    boolean,
    choice,
    integer,
    invalid,
    is_scalar,
    list_of,
    non_empty_string,
    record,
    source_of,
    string,
    value_node,
    wrong_type,
)
from daemon.config.schedule import parse_duration, parse_schedule
from daemon.config.suggest import did_you_mean

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")

# The levels each compression algorithm accepts, and how to say so.
COMPRESSION_LEVELS: dict[str, tuple[Collection[int], str]] = {
    "zstd": ((*range(-5, 0), *range(1, 23)), "1 to 22, or -5 to -1"),
    "gzip": (range(1, 10), "1 to 9"),
    "none": ((), "none"),
}


def defined_name(what: str) -> Converter[str]:
    """Given what a name names ("policy", "storage"), return a converter of such names."""

    def convert(node: yaml.Node, path: str) -> str:
        text = string(node, path)
        if not NAME.fullmatch(text):
            raise invalid(
                node,
                path,
                f"invalid {what} name {text!r}: use letters, digits, '_', '.' and '-', "
                "starting with a letter or a digit",
            )
        return text

    return convert


def volume_name(node: yaml.Node, path: str) -> str:
    """Given a node naming a Docker volume, return the name. Raise Invalid if Docker refuses it."""
    text = string(node, path)
    if not VOLUME_NAME.fullmatch(text):
        raise invalid(
            node,
            path,
            f"invalid volume name {text!r}: Docker volume names are at least 2 characters, "
            "letters, digits, '_', '.' and '-', starting with a letter or a digit",
        )
    return text


def duration(*, allow_zero: bool = False) -> Converter[timedelta]:
    """Given whether zero is allowed, return a converter of durations: "30s", "10m", "1h30m",
    or a number of seconds."""

    def convert(node: yaml.Node, path: str) -> timedelta:
        if is_scalar(node, "int"):
            text = f"{integer(minimum=0)(node, path)}s"
        elif is_scalar(node, "str"):
            text = node.value
        else:
            raise wrong_type(node, path, "a duration like '30s', '10m', '2h' or seconds")
        try:
            amount = parse_duration(text)
        except ValueError as error:
            raise invalid(node, path, str(error)) from None
        if amount <= timedelta(0) and not allow_zero:
            raise invalid(node, path, "must be longer than 0")
        return amount

    return convert


def seconds(*, allow_zero: bool = False) -> Converter[float]:
    """Given whether zero is allowed, return a converter of durations into seconds."""
    convert_duration = duration(allow_zero=allow_zero)

    def convert(node: yaml.Node, path: str) -> float:
        return convert_duration(node, path).total_seconds()

    return convert


def schedule(node: yaml.Node, path: str) -> Schedule:
    """Given a node holding a cron expression, "@every 6h" or "@daily", return its Schedule."""
    try:
        return parse_schedule(string(node, path))
    except ValueError as error:
        raise invalid(node, path, str(error)) from None


def timezone(node: yaml.Node, path: str) -> str:
    """Given a node holding an IANA time zone name ("Europe/Paris"), return the name."""
    text = string(node, path)
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = did_you_mean(text, known_timezones())
        raise invalid(node, path, f"unknown time zone {text!r}{hint}") from None
    return text


@functools.cache
def known_timezones() -> frozenset[str]:
    """Return the IANA time zone names this host knows, read once."""
    return frozenset(zoneinfo.available_timezones())


def absolute_path(node: yaml.Node, path: str) -> Path:
    """Given a node holding an absolute path, return the Path. Raise Invalid if relative."""
    text = non_empty_string(node, path)
    if not text.startswith("/"):
        raise invalid(node, path, f"must be an absolute path, got {text!r}")
    return Path(text)


def exclude_pattern(node: yaml.Node, path: str) -> str:
    """Given a node holding a pattern relative to the volume's root, return the pattern."""
    text = non_empty_string(node, path)
    if text.startswith("/") or ".." in PurePosixPath(text).parts:
        raise invalid(node, path, f"{text!r} must stay inside the volume: no leading '/', no '..'")
    return text


def compression(node: yaml.Node, path: str) -> Compression:
    """Given "zstd", "gzip", "none" or {algorithm: ..., level: ...}, return the Compression."""
    if not isinstance(node, yaml.MappingNode):
        return Compression(ALGORITHM(node, path))
    chosen = COMPRESSION(node, path)
    levels, allowed = COMPRESSION_LEVELS[chosen.algorithm]
    if chosen.level is None or chosen.level in levels:
        return chosen
    message = (
        "compression 'none' takes no level"
        if chosen.algorithm == "none"
        else f"{chosen.algorithm} level must be {allowed}, got {chosen.level}"
    )
    raise invalid(value_node(node, "level"), f"{path}.level", message)


def label_selector(node: yaml.Node, path: str) -> tuple[str, str | None]:
    """Given "key=value" or "key", return the label key and value (None: the key must exist)."""
    text = non_empty_string(node, path)
    key, equals, value = text.partition("=")
    if not key.strip():
        raise invalid(node, path, f"label {text!r} needs a key: 'key=value' or 'key'")
    return key, value if equals else None


def match_selector(
    *, label: tuple[str, str | None] | None = None, name: str | None = None
) -> VolumeSelector:
    """Given the label or name glob of a `match:` block, return the VolumeSelector."""
    if label is not None:
        return VolumeSelector(label_key=label[0], label_value=label[1])
    return VolumeSelector(name_glob=name)


def storage_reference(storage_names: Collection[str]) -> Converter[str]:
    """Given the storages defined in any file, return a converter of a reference to one."""

    def convert(node: yaml.Node, path: str) -> str:
        text = string(node, path)
        if text not in storage_names:
            defined = ", ".join(sorted(storage_names))
            known = f"defined: {defined}" if defined else "no storage is defined"
            hint = did_you_mean(text, storage_names)
            raise invalid(node, path, f"unknown storage {text!r}{hint}; {known}")
        return text

    return convert


def only_hook(**hooks: Hook) -> Hook:
    """Given the one hook of a hook entry, by its kind ("exec" or "run"), return it."""
    (hook,) = hooks.values()
    return hook


def run_hook(node: yaml.Node, path: str) -> RunHook:
    """Given [argv...] or {command: [argv...], timeout: ...}, return the RunHook."""
    if isinstance(node, yaml.MappingNode):
        return RUN_HOOK(node, path)
    return RunHook(command=ARGUMENTS(node, path))


ALGORITHMS: tuple[CompressionAlgorithm, ...] = ("zstd", "gzip", "none")
DRILL_CHOICES: tuple[DrillChoice, ...] = ("latest", "random", "oldest-unverified")
ALGORITHM = choice(ALGORITHMS, "compression")
COMPRESSION = record(
    {"algorithm": ALGORITHM, "level": integer()}, into=Compression, required=("algorithm",)
)
ARGUMENTS = list_of(
    string, expected="a list of arguments (no shell), like [pg_dump, -U, app]", non_empty=True
)
RUN_HOOK = record({"command": ARGUMENTS, "timeout": seconds()}, into=RunHook, required=("command",))
EXEC_HOOK = record(
    {
        "container": non_empty_string,
        "command": ARGUMENTS,
        "user": non_empty_string,
        "timeout": seconds(),
    },
    into=ExecHook,
    required=("container", "command"),
)
HOOK = record({"exec": EXEC_HOOK, "run": run_hook}, into=only_hook, exactly_one_of=("exec", "run"))
HOOKS = record({"before": list_of(HOOK), "after": list_of(HOOK)}, into=Hooks)
RETENTION = record(
    {
        "keep_last": integer(minimum=1),
        "keep_hourly": integer(minimum=1),
        "keep_daily": integer(minimum=1),
        "keep_weekly": integer(minimum=1),
        "keep_monthly": integer(minimum=1),
        "keep_yearly": integer(minimum=1),
        "keep_within": duration(),
    },
    into=RetentionRules,
)
DRILL = record(
    {
        "schedule": schedule,
        "archive": choice(DRILL_CHOICES, "drill archive choice"),
        "max_per_run": integer(minimum=1),
    },
    into=DrillConfig,
)
MATCH = record(
    {"label": label_selector, "name": non_empty_string},
    into=match_selector,
    exactly_one_of=("label", "name"),
)
DAEMON = record(
    {"max_parallel": integer(minimum=1), "shutdown_timeout": duration(allow_zero=True)},
    into=DaemonSettings,
)
STORAGE_FIELDS: dict[str, Converter[Any]] = {
    "type": choice(("local",), "storage type"),
    "path": absolute_path,
}


def policy_fields(storage_names: Collection[str]) -> dict[str, Converter[Any]]:
    """Given the storages defined in any file, return the converter of each key of a policy."""
    return {
        "volumes": list_of(volume_name, non_empty=True, unique=True),
        "match": MATCH,
        "schedule": schedule,
        "timezone": timezone,
        "storage": storage_reference(storage_names),
        "compression": compression,
        "exclude": list_of(exclude_pattern),
        "stop_containers": boolean,
        "stop_timeout": seconds(allow_zero=True),
        "helper_image": non_empty_string,
        "retention": RETENTION,
        "drill": DRILL,
        "hooks": HOOKS,
    }


def parse_storage(entry: Entry, path: str) -> StorageConfig:
    """Given the entry of a storage under `storage:`, return its StorageConfig."""

    def build(**values: Any) -> StorageConfig:
        return StorageConfig(name=entry.name, source=source_of(entry.key_node), **values)

    return record(STORAGE_FIELDS, into=build, required=("type", "path"))(entry.value_node, path)


def parse_policy(entry: Entry, path: str, storage_names: Collection[str]) -> Policy:
    """Given the entry of a policy under `policies:` and the storages defined in any file,
    return its Policy."""

    def build(
        *, volumes: tuple[str, ...] = (), match: VolumeSelector | None = None, **values: Any
    ) -> Policy:
        selector = match or VolumeSelector(names=volumes)
        return Policy(
            name=entry.name, source=source_of(entry.key_node), selector=selector, **values
        )

    convert = record(
        policy_fields(storage_names),
        into=build,
        required=("storage",),
        exactly_one_of=("volumes", "match"),
    )
    return convert(entry.value_node, path)
