"""Converters of the single values the policy schema holds: names, durations, schedules,
time zones, paths and patterns.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path, PurePosixPath

import yaml

from daemon.config.model import COMPOSE_PROJECT_LABEL, Schedule, VolumeSelector
from daemon.config.nodes import (
    Converter,
    choice,
    integer,
    invalid,
    is_scalar,
    non_empty_string,
    string,
    wrong_type,
)
from daemon.config.schedule import parse_duration, parse_schedule
from daemon.config.suggest import did_you_mean

# Names become file and directory names (locks, archives: "<volume>-<id>.manifest.json",
# at most 255 bytes), so they are bounded here, where the operator reads the error.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{1,199}")
IMAGE_REFERENCE = re.compile(r"[a-z0-9][^\s]{0,254}")


def defined_name(what: str) -> Converter[str]:
    """Given what a name names ("policy", "storage"), return a converter of such names."""

    def convert(node: yaml.Node, path: str) -> str:
        text = string(node, path)
        if not NAME.fullmatch(text):
            raise invalid(
                node,
                path,
                f"invalid {what} name {shorten(text)!r}: up to 100 letters, digits, '_', '.' "
                "and '-', starting with a letter or a digit",
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
            f"invalid volume name {shorten(text)!r}: 2 to 200 letters, digits, '_', '.' and '-', "
            "starting with a letter or a digit",
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


def outside_the_volume(pattern: str) -> str | None:
    """Given a pattern relative to the volume's root (an exclude, a restore --path), return
    why it points outside the volume, or None."""
    if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
        return f"{pattern!r} must stay inside the volume: no leading '/', no '..'"
    return None


def exclude_pattern(node: yaml.Node, path: str) -> str:
    """Given a node holding a pattern relative to the volume's root, return the pattern."""
    text = non_empty_string(node, path)
    why = outside_the_volume(text)
    if why is not None:
        raise invalid(node, path, why)
    return text


def label_selector(node: yaml.Node, path: str) -> tuple[str, str | None]:
    """Given "key=value" or "key", return the label key and value (None: the key must exist)."""
    text = non_empty_string(node, path)
    key, equals, value = text.partition("=")
    if not key.strip():
        raise invalid(node, path, f"label {text!r} needs a key: 'key=value' or 'key'")
    return key, value if equals else None


def match_selector(
    *,
    label: tuple[str, str | None] | None = None,
    name: str | None = None,
    compose_project: str | None = None,
) -> VolumeSelector:
    """Given the label, name glob or Compose project of a `match:` block, return the
    VolumeSelector; a Compose project is its label on the volumes Compose created."""
    if compose_project is not None:
        return VolumeSelector(label_key=COMPOSE_PROJECT_LABEL, label_value=compose_project)
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


def host_name(node: yaml.Node, path: str) -> str:
    """Given the name a host writes its archives under, return it (a single path segment)."""
    return defined_name("host")(node, path)


BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bucket_name(node: yaml.Node, path: str) -> str:
    """Given an S3 bucket name, return it. Raise Invalid unless S3 accepts it."""
    text = string(node, path)
    if not BUCKET_NAME.fullmatch(text) or ".." in text:
        raise invalid(
            node,
            path,
            f"invalid bucket name {text!r}: 3 to 63 characters, lowercase letters, digits, "
            "'.' and '-', starting and ending with a letter or a digit",
        )
    return text


def key_prefix(node: yaml.Node, path: str) -> str:
    """Given a key prefix ("prod/", "prod"), return it ending in "/" ("" for none)."""
    text = string(node, path).strip("/")
    if any(part in ("", ".", "..") for part in text.split("/")) and text:
        raise invalid(node, path, f"invalid prefix {text!r}: no empty, '.' or '..' segments")
    return f"{text}/" if text else ""


# The S3 storage classes an archive body may go to: each is read at once, like STANDARD
# (INTELLIGENT_TIERING too, unless the bucket opts in to its archive tiers: docs/storages.md).
STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "REDUCED_REDUNDANCY",
    "EXPRESS_ONEZONE",
)
# Classes whose objects need a restore request, hours long, before each read.
ARCHIVAL_STORAGE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


def storage_class(node: yaml.Node, path: str) -> str:
    """Given an S3 storage class, return it. Raise Invalid for an unknown one, and for one
    whose objects cannot be read without a restore request first (restores and drills
    could not read the archives)."""
    text = string(node, path)
    if text in ARCHIVAL_STORAGE_CLASSES:
        raise invalid(
            node,
            path,
            f"storage class {text!r} needs a restore request, hours long, before each read: "
            "restores and drills could not read the archives; use GLACIER_IR or STANDARD_IA",
        )
    return choice(STORAGE_CLASSES, "storage class")(node, path)


def endpoint_url(node: yaml.Node, path: str) -> str:
    """Given an S3 endpoint, return it. Raise Invalid unless it is an http(s) URL without
    credentials in it."""
    text = non_empty_string(node, path)
    scheme, _, rest = text.partition("://")
    if "@" in rest.split("/", 1)[0]:
        raise invalid(
            node, path, "credentials do not belong in the endpoint URL: use credentials_file"
        )
    if scheme not in ("http", "https") or not rest:
        raise invalid(node, path, f"endpoint must be an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def secret_in_policy(instead: str) -> Converter[object]:
    """Given where a secret belongs, return a converter that refuses any value under the key
    it converts, saying so (and never showing the value)."""

    def convert(node: yaml.Node, path: str) -> object:
        raise invalid(node, path, f"secrets do not belong in the policy text: use {instead}")

    return convert


def shorten(text: str, limit: int = 60) -> str:
    """Given a value to quote in a message, return it cut to `limit` characters."""
    return text if len(text) <= limit else f"{text[:limit]}…"


def image_reference(node: yaml.Node, path: str) -> str:
    """Given a helper image reference ("busybox:1.36", "registry/x/tar@sha256:…"), return it.
    Raise Invalid unless it has the shape of one (lowercase start, no spaces, at most 255
    characters)."""
    text = non_empty_string(node, path)
    if not IMAGE_REFERENCE.fullmatch(text):
        raise invalid(
            node,
            path,
            f"invalid image reference {shorten(text)!r}: at most 255 characters without "
            "spaces, like 'busybox:1.36'",
        )
    return text
