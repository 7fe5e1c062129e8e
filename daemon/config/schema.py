"""The policy file format: what each key may hold, and the model object it becomes.

The tables below are the schema. Each key maps to a converter (see `nodes`) of the value
written there; `values` holds the converters of single values.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import yaml

from daemon.archive.encryption import EncryptionError, parse_recipient
from daemon.config.model import (
    AgeEncryption,
    Compression,
    CompressionAlgorithm,
    DaemonSettings,
    DrillChoice,
    DrillConfig,
    ExecHook,
    Hook,
    Hooks,
    LocalStorageConfig,
    Policy,
    PolicyStorage,
    RetentionRules,
    RunHook,
    S3StorageConfig,
    StorageConfig,
    VolumeSelector,
)
from daemon.config.monitoring import METRICS, NOTIFY
from daemon.config.nodes import (
    Converter,
    Entry,
    Invalid,
    boolean,
    child_path,
    choice,
    integer,
    invalid,
    list_of,
    mapping_entries,
    non_empty_string,
    problem_at,
    record,
    source_of,
    string,
    value_of,
)
from daemon.config.values import (
    absolute_path,
    bucket_name,
    duration,
    endpoint_url,
    exclude_pattern,
    host_name,
    key_prefix,
    label_selector,
    match_selector,
    schedule,
    seconds,
    secret_in_policy,
    storage_reference,
    timezone,
    volume_name,
)

# The levels each compression algorithm accepts, and how to say so.
COMPRESSION_LEVELS: dict[str, tuple[Collection[int], str]] = {
    "zstd": ((*range(-5, 0), *range(1, 23)), "1 to 22, or -5 to -1"),
    "gzip": (range(1, 10), "1 to 9"),
    "none": ((), "none"),
}


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
    raise invalid(value_of(node, "level"), f"{path}.level", message)


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
        "storage": non_empty_string,
    },
    into=DrillConfig,
)


def age_recipient(node: yaml.Node, path: str) -> str:
    """Given an age public key (`age1…`, `ssh-ed25519 …`), return it. Raise Invalid if it is
    none (the message never echoes what looks like a secret)."""
    text = non_empty_string(node, path)
    try:
        return parse_recipient(text).text
    except EncryptionError as error:
        raise invalid(node, path, str(error)) from None


AGE = record(
    {
        "recipients": list_of(age_recipient, non_empty=True, unique=True),
        "recipients_file": absolute_path,
        "identity_file": absolute_path,
        "identity": secret_in_policy("identity_file (a file readable by root only)"),
    },
    into=AgeEncryption,
    exactly_one_of=("recipients", "recipients_file"),
)
ENCRYPTION = record({"age": AGE}, into=lambda age: age, required=("age",))
MATCH = record(
    {"label": label_selector, "name": non_empty_string, "compose_project": non_empty_string},
    into=match_selector,
    exactly_one_of=("label", "name", "compose_project"),
)
DAEMON = record(
    {
        "max_parallel": integer(minimum=1),
        "shutdown_timeout": duration(allow_zero=True),
        "host": host_name,
        "metrics": METRICS,
    },
    into=DaemonSettings,
)
STORAGE_TYPES = ("local", "s3")
STORAGE_TYPE = choice(STORAGE_TYPES, "storage type")
# Keys under which people write credentials: each is refused with the way to do it instead.
CREDENTIAL_KEYS = (
    "access_key",
    "access_key_id",
    "aws_access_key_id",
    "secret_key",
    "secret_access_key",
    "aws_secret_access_key",
    "session_token",
    "aws_session_token",
    "password",
)
STORAGE_FIELDS: dict[str, dict[str, Converter[Any]]] = {
    "local": {"type": STORAGE_TYPE, "path": absolute_path},
    "s3": {
        "type": STORAGE_TYPE,
        "bucket": bucket_name,
        "prefix": key_prefix,
        "endpoint": endpoint_url,
        "region": non_empty_string,
        "path_style": boolean,
        "credentials_file": absolute_path,
        "profile": non_empty_string,
        "ca_bundle": absolute_path,
        "storage_class": non_empty_string,
        **dict.fromkeys(
            CREDENTIAL_KEYS,
            secret_in_policy("credentials_file (or the AWS_* environment variables)"),
        ),
    },
}
STORAGE_CONFIGS = {"local": LocalStorageConfig, "s3": S3StorageConfig}
STORAGE_REQUIRED = {"local": ("type", "path"), "s3": ("type", "bucket")}


def policy_fields(storage_names: Collection[str]) -> dict[str, Converter[Any]]:
    """Given the storages defined in any file, return the converter of each key of a policy."""
    return {
        "volumes": list_of(volume_name, non_empty=True, unique=True),
        "match": MATCH,
        "schedule": schedule,
        "timezone": timezone,
        "storage": policy_storages(storage_names),
        "compression": compression,
        "exclude": list_of(exclude_pattern),
        "stop_containers": boolean,
        "stop_timeout": seconds(allow_zero=True),
        "helper_image": non_empty_string,
        "retention": RETENTION,
        "drill": DRILL,
        "hooks": HOOKS,
        "volume_hooks": volume_hooks,
        "encryption": ENCRYPTION,
        "notify": NOTIFY,
    }


def volume_hooks(node: yaml.Node, path: str) -> dict[str, Hooks]:
    """Given a mapping of volume names to hooks ({before: [...], after: [...]}), return it."""
    entries, problems = mapping_entries(node, path)
    hooks: dict[str, Hooks] = {}
    for entry in entries:
        entry_path = child_path(path, entry.name)
        try:
            hooks[volume_name(entry.key_node, entry_path)] = HOOKS(entry.value_node, entry_path)
        except Invalid as error:
            problems += error.problems
    if problems:
        raise Invalid(problems)
    return hooks


def policy_storages(storage_names: Collection[str]) -> Converter[tuple[PolicyStorage, ...]]:
    """Given the storages defined in any file, return a converter of a policy's `storage`:
    one name, or a list of names and {name: ..., retention: {...}} entries (a storage with
    its own keep rules, replacing the policy's there)."""
    reference = storage_reference(storage_names)

    def one(node: yaml.Node, path: str) -> PolicyStorage:
        if isinstance(node, yaml.MappingNode):
            fields = {"name": reference, "retention": RETENTION}
            return record(fields, into=PolicyStorage, required=("name",))(node, path)
        return PolicyStorage(reference(node, path))

    several = list_of(one, expected="a storage name or a list of them", non_empty=True)

    def convert(node: yaml.Node, path: str) -> tuple[PolicyStorage, ...]:
        if not isinstance(node, yaml.SequenceNode):
            return (PolicyStorage(reference(node, path)),)
        storages = several(node, path)
        names = [storage.name for storage in storages]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise invalid(
                    node.value[index], f"{path}[{index}]", f"storage {name!r} is listed twice"
                )
        return storages

    return convert


def check_drilled_storage(
    node: yaml.Node, path: str, drilled: str, storages: tuple[PolicyStorage, ...]
) -> None:
    """Raise Invalid if the drill's storage is not one the policy writes to."""
    names = [storage.name for storage in storages]
    if drilled not in names:
        drill_node = value_of(node, "drill")
        raise invalid(
            value_of(drill_node, "storage"),
            child_path(child_path(path, "drill"), "storage"),
            f"the policy does not write to storage {drilled!r} (it uses: {', '.join(names)})",
        )


def check_hooked_volumes(node: yaml.Node, path: str, volumes: Collection[str]) -> None:
    """Given a policy's node with `volume_hooks` and the volumes it lists, raise Invalid for
    each hooked volume it does not back up: those hooks would never run."""
    hooked, _ = mapping_entries(value_of(node, "volume_hooks"), "")
    problems = [
        problem_at(
            entry.key_node,
            child_path(child_path(path, "volume_hooks"), entry.name),
            f"volume {entry.name!r} is not in this policy's volumes: its hooks would never run",
        )
        for entry in hooked
        if entry.name not in volumes
    ]
    if problems:
        raise Invalid(problems)


def parse_storage(entry: Entry, path: str) -> StorageConfig:
    """Given the entry of a storage under `storage:`, return its StorageConfig: the keys a
    storage takes depend on its `type`."""
    node = entry.value_node
    entries, _ = mapping_entries(node, path)
    type_node = next((found.value_node for found in entries if found.name == "type"), None)
    if type_node is None:
        raise invalid(
            node, child_path(path, "type"), f"missing key 'type' ({' or '.join(STORAGE_TYPES)})"
        )
    kind = STORAGE_TYPE(type_node, child_path(path, "type"))

    def build(**values: Any) -> StorageConfig:
        values.pop("type")
        config: StorageConfig = STORAGE_CONFIGS[kind](
            name=entry.name, source=source_of(entry.key_node), **values
        )
        return config

    convert = record(STORAGE_FIELDS[kind], into=build, required=STORAGE_REQUIRED[kind])
    return convert(node, path)


def parse_policy(entry: Entry, path: str, storage_names: Collection[str]) -> Policy:
    """Given the entry of a policy under `policies:` and the storages defined in any file,
    return its Policy."""

    def build(
        *,
        volumes: tuple[str, ...] = (),
        match: VolumeSelector | None = None,
        storage: tuple[PolicyStorage, ...],
        **values: Any,
    ) -> Policy:
        selector = match or VolumeSelector(names=volumes)
        if volumes and "volume_hooks" in values:
            check_hooked_volumes(entry.value_node, path, volumes)
        drill = values.get("drill")
        if drill is not None and drill.storage is not None:
            check_drilled_storage(entry.value_node, path, drill.storage, storage)
        return Policy(
            name=entry.name,
            source=source_of(entry.key_node),
            selector=selector,
            storages=storage,
            **values,
        )

    convert = record(
        policy_fields(storage_names),
        into=build,
        required=("storage",),
        exactly_one_of=("volumes", "match"),
    )
    return convert(entry.value_node, path)
