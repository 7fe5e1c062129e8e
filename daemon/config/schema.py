"""The policy file format: what each key may hold, and the model object it becomes.

The tables below are the schema. Each key maps to a converter (see `nodes`) of the value
written there; `values` holds the converters of single values. Beside each table, its
`..._HELP` table says what each key means, with an example: the JSON Schema that editors
read is generated from both (`daemon.config.json_schema`, `volkeep schema`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Any, NamedTuple

import yaml

from daemon.config.keys import EncryptionError, parse_recipient
from daemon.config.model import (
    DEDUP_NEEDS_IDENTITY,
    AgeEncryption,
    Compression,
    CompressionAlgorithm,
    DaemonSettings,
    DrillChoice,
    DrillConfig,
    DrillScratch,
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
    can_deduplicate,
)

# SECRET_SOURCE and METRICS are named here so that the JSON Schema defines each once, with
# its help below
from daemon.config.monitoring import METRICS as METRICS
from daemon.config.monitoring import NOTIFY, metrics_settings
from daemon.config.monitoring import SECRET_SOURCE as SECRET_SOURCE
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
    image_reference,
    key_prefix,
    label_selector,
    match_selector,
    schedule,
    seconds,
    secret_in_policy,
    storage_class,
    storage_reference,
    timezone,
    volume_name,
)


class Help(NamedTuple):
    """What a key means, and an example of what it may hold (editors show both)."""

    text: str
    example: object


DURATION_FORMS = "a duration like '30s', '10m' or '1h30m', or a number of seconds"

# The keys of a file's top level (read in `assemble`).
TOP_LEVEL_HELP = {
    "version": Help("Format version of this file. Required; 1 is the only version so far.", 1),
    "daemon": Help(
        "Process-wide settings. Optional, and allowed in one file only.",
        {"max_parallel": 1, "shutdown_timeout": "10m"},
    ),
    "storage": Help(
        "Where archives are written, by name (letters, digits, '_', '.', '-'). A storage "
        "defined in one file can be used by the policies of any other file.",
        {"local": {"type": "local", "path": "/var/backups/volkeep"}},
    ),
    "policies": Help(
        "Backup policies by name (letters, digits, '_', '.', '-'): which volumes, when, "
        "where to, and which archives to keep.",
        {"app": {"volumes": ["app_db"], "schedule": "0 3 * * *", "storage": "local"}},
    ),
}

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
DRILL_SCRATCHES: tuple[DrillScratch, ...] = ("auto", "disk", "memory")
ALGORITHM = choice(ALGORITHMS, "compression")
COMPRESSION = record(
    {"algorithm": ALGORITHM, "level": integer()}, into=Compression, required=("algorithm",)
)
COMPRESSION_HELP = {
    "algorithm": Help("Compression algorithm: zstd, gzip or none.", "zstd"),
    "level": Help("Compression level: zstd 1 to 22 (or -5 to -1, faster), gzip 1 to 9.", 3),
}
ARGUMENTS = list_of(
    string, expected="a list of arguments (no shell), like [pg_dump, -U, app]", non_empty=True
)
RUN_HOOK = record({"command": ARGUMENTS, "timeout": seconds()}, into=RunHook, required=("command",))
RUN_HOOK_HELP = {
    "command": Help(
        "The command to run on the host, as a list of arguments (never through a shell).",
        ["logger", "volkeep backed up app"],
    ),
    "timeout": Help(f"How long the command may run before it is killed: {DURATION_FORMS}.", "5m"),
}
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
EXEC_HOOK_HELP = {
    "container": Help("Name of the running container to run the command in.", "app_db"),
    "command": Help(
        "The command to run in the container, as a list of arguments (no shell).",
        ["pg_dump", "-U", "app", "-f", "/var/lib/postgresql/data/dump.sql"],
    ),
    "user": Help("The user to run the command as, inside the container.", "postgres"),
    "timeout": Help(f"How long the command may run before the hook fails: {DURATION_FORMS}.", "5m"),
}
HOOK = record({"exec": EXEC_HOOK, "run": run_hook}, into=only_hook, exactly_one_of=("exec", "run"))
HOOK_HELP = {
    "exec": Help(
        "Run a command inside a running container, through the Docker API.",
        {"container": "app_db", "command": ["pg_dump", "-U", "app", "-f", "/dump.sql"]},
    ),
    "run": Help(
        "Run a command on the host: a list of arguments, or {command: [...], timeout: ...}.",
        ["sync"],
    ),
}
HOOKS = record({"before": list_of(HOOK), "after": list_of(HOOK)}, into=Hooks)
HOOKS_HELP = {
    "before": Help(
        "Hooks run before the volume's backup, before containers are stopped; one that fails "
        "aborts the volume's backup.",
        [{"run": ["sync"]}],
    ),
    "after": Help(
        "Hooks run after the volume's backup, once containers are started again, even when "
        "the backup failed.",
        [{"run": ["logger", "volkeep backed up app"]}],
    ),
}
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
RETENTION_HELP = {
    "keep_last": Help("Keep the N most recent archives.", 5),
    "keep_hourly": Help("Keep one archive per hour, for the N most recent hours.", 24),
    "keep_daily": Help("Keep one archive per day, for the N most recent days.", 7),
    "keep_weekly": Help("Keep one archive per week, for the N most recent weeks.", 4),
    "keep_monthly": Help("Keep one archive per month, for the N most recent months.", 6),
    "keep_yearly": Help("Keep one archive per year, for the N most recent years.", 1),
    "keep_within": Help(f"Keep every archive newer than this: {DURATION_FORMS}.", "10d"),
}


def drilled_host(node: yaml.Node, path: str) -> str:
    """Given an entry of `drill.hosts`, return it: a host name, or "*" (every host)."""
    if isinstance(node, yaml.ScalarNode) and node.value == "*":
        return "*"
    return host_name(node, path)


DRILL = record(
    {
        "schedule": schedule,
        "archive": choice(DRILL_CHOICES, "drill archive choice"),
        "max_per_run": integer(minimum=1),
        "storage": non_empty_string,
        "hosts": list_of(drilled_host, non_empty=True, unique=True),
        "scratch": choice(DRILL_SCRATCHES, "drill scratch"),
    },
    into=DrillConfig,
)
DRILL_HELP = {
    "schedule": Help(
        "When to drill: a 5-field cron expression, '@every 6h' or '@daily' and the like.",
        "30 4 * * 0",
    ),
    "archive": Help(
        "Which archive to drill: latest, random (any), or oldest-unverified (the never "
        "drilled ones, oldest first; then the least recently drilled).",
        "latest",
    ),
    "max_per_run": Help("How many archives of each volume one drill checks.", 1),
    "storage": Help(
        "Which of the policy's storages to drill from (default: the first it lists).", "local"
    ),
    "hosts": Help(
        "Drill other hosts' archives of this policy in that storage instead of this host's: "
        "each scheduled drill takes the least recently drilled volume of these hosts (name "
        "this host too to include it; '*': every host the storage holds).",
        ["web-1", "web-2"],
    ),
    "scratch": Help(
        "Where a drill restores the archive: auto (in the Docker host's memory when the "
        "archive fits a quarter of it and 2 GiB, else on disk), disk, or memory (whatever its "
        "size). A drill that runs out of memory starts again on disk (docs/drills.md).",
        "auto",
    ),
}


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


def age_encryption(node: yaml.Node, path: str) -> AgeEncryption:
    """Given an `age:` block, return its settings with the place of `identity_file`, so that
    `validate` can point at it when the file cannot open the archives."""
    settings = AGE(node, path)
    if settings.identity_file is None:
        return settings
    return replace(settings, identity_source=source_of(value_of(node, "identity_file")))


AGE_HELP = {
    "recipients": Help(
        "Public keys to encrypt to: age (age1...) or ssh-ed25519 / ssh-rsa keys.",
        ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"],
    ),
    "recipients_file": Help(
        "Instead of recipients: a file of public keys, one a line.",
        "/etc/volkeep/recipients.txt",
    ),
    "identity_file": Help(
        "The file of private keys (age identities) that opens the archives, readable by root "
        "only; needed only to restore and drill.",
        "/etc/volkeep/age-identity.txt",
    ),
}
ENCRYPTION = record({"age": age_encryption}, into=lambda age: age, required=("age",))
ENCRYPTION_HELP = {
    "age": Help(
        "Encrypt archives with age: readable with `age -d -i KEY | zstd -d | tar -x`.",
        {"recipients": ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]},
    ),
}
MATCH = record(
    {"label": label_selector, "name": non_empty_string, "compose_project": non_empty_string},
    into=match_selector,
    exactly_one_of=("label", "name", "compose_project"),
)
MATCH_HELP = {
    "label": Help(
        "Every volume with this label: 'key=value', or just 'key' (any value).",
        "volkeep.policy=app",
    ),
    "name": Help("Every volume whose name matches this shell pattern.", "app_*"),
    "compose_project": Help(
        "Every volume of this Docker Compose project (label com.docker.compose.project).",
        "app",
    ),
}
DAEMON = record(
    {
        "max_parallel": integer(minimum=1),
        "shutdown_timeout": duration(allow_zero=True),
        "host": host_name,
        "splay": duration(allow_zero=True),
        "metrics": metrics_settings,
    },
    into=DaemonSettings,
)
DAEMON_HELP = {
    "max_parallel": Help("How many backups or drills may run at the same time.", 1),
    "shutdown_timeout": Help(
        f"On SIGTERM, how long running operations may take to finish: {DURATION_FORMS}.", "10m"
    ),
    "host": Help(
        "The name this host writes its archives under in a storage (default: its host name).",
        "web-1",
    ),
    "splay": Help(
        "Delay every cron schedule of this host by a fixed offset within this window, the "
        "same at every start (derived from the host name), so that many hosts with the same "
        f"schedule do not reach the storage at once (default 0: on time): {DURATION_FORMS}.",
        "30m",
    ),
    "metrics": Help(
        "Prometheus metrics and a read-only status page: served on `listen`, written to "
        "`textfile`, or both.",
        {"listen": "127.0.0.1:9318"},
    ),
}
# The help of the tables in `monitoring`.
METRICS_HELP = {
    "listen": Help(
        "Where to serve /metrics and the status page at /: HOST:PORT, [IPv6]:PORT, or a port "
        "on 127.0.0.1.",
        "127.0.0.1:9318",
    ),
    "textfile": Help(
        "A file (*.prom) for node_exporter's textfile collector, rewritten after each run.",
        "/var/lib/prometheus/node-exporter/volkeep.prom",
    ),
    "token": Help(
        "A token every request must present (Authorization: Bearer TOKEN, or basic "
        "authentication with any user name and the token as password), read from a file "
        "or an environment variable.",
        {"file": "/etc/volkeep/metrics.token"},
    ),
    "public": Help(
        "Serve an address other machines can reach without a token (a firewall or a "
        "reverse proxy guards it). Without it, such an address needs a token.",
        True,
    ),
}
SECRET_SOURCE_HELP = {
    "file": Help(
        "A file holding the secret (white space around it is ignored), readable by root only.",
        "/etc/volkeep/ping.url",
    ),
    "env": Help(
        "An environment variable holding the secret (systemd: Environment= or "
        "EnvironmentFile= in a drop-in).",
        "VOLKEEP_PING_URL",
    ),
}
NOTIFY_HELP = {
    "urls": Help(
        "Apprise URLs to notify of the events; each written here, or read from {file: PATH} "
        "or {env: NAME} (a URL that carries a token).",
        ["ntfy://ntfy.example/backups", {"file": "/etc/volkeep/slack.url"}],
    ),
    "ping": Help(
        "A Healthchecks-style URL: pinged at /start, on success, and at /fail; written "
        "here, or read from {file: PATH} or {env: NAME}.",
        {"env": "VOLKEEP_PING_URL"},
    ),
    "events": Help(
        "Which events go to the URLs: failure, drill_failure, recovered, missed, shrink "
        "(default: all of them).",
        ["failure", "drill_failure"],
    ),
    "remind_every": Help(
        "A policy that keeps failing is notified when it starts failing, then again at most "
        "this often while it fails (default: 24h).",
        "24h",
    ),
}
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
        "connect_timeout": seconds(),
        "read_timeout": seconds(),
        "max_attempts": integer(minimum=1),
        "storage_class": storage_class,
        **dict.fromkeys(
            CREDENTIAL_KEYS,
            secret_in_policy("credentials_file (or the AWS_* environment variables)"),
        ),
    },
}
STORAGE_CONFIGS = {"local": LocalStorageConfig, "s3": S3StorageConfig}
STORAGE_REQUIRED = {"local": ("type", "path"), "s3": ("type", "bucket")}
STORAGE_TYPE_HELP = Help(
    "Kind of storage: local (a directory on this host) or s3 (an S3-compatible bucket).",
    "local",
)
STORAGE_HELP = {
    "local": {
        "type": STORAGE_TYPE_HELP,
        "path": Help(
            "Absolute path of the directory that holds the archives.", "/var/backups/volkeep"
        ),
    },
    "s3": {
        "type": STORAGE_TYPE_HELP._replace(example="s3"),
        "bucket": Help("Name of the bucket.", "volkeep-backups"),
        "prefix": Help("Key prefix of everything volkeep writes in the bucket.", "prod/"),
        "endpoint": Help(
            "URL of the S3-compatible service (default: AWS).", "https://s3.example.net"
        ),
        "region": Help("Region of the bucket.", "eu-west-1"),
        "path_style": Help(
            "Name the bucket in the URL's path, not its host (MinIO, SeaweedFS, Ceph, Garage).",
            True,
        ),
        "credentials_file": Help(
            "File of the access keys, in AWS shared-credentials format (default: the AWS_* "
            "environment variables, AWS_PROFILE, instance metadata).",
            "/etc/volkeep/offsite.credentials",
        ),
        "profile": Help("Profile to read in the credentials file.", "backup"),
        "ca_bundle": Help(
            "Certificates (PEM) to trust for the endpoint, instead of the system's.",
            "/etc/ssl/private-ca.pem",
        ),
        "connect_timeout": Help(
            f"How long to wait for a connection to the endpoint (default 3s): {DURATION_FORMS}.",
            "5s",
        ),
        "read_timeout": Help(
            "How long the endpoint may leave a request without an answer, or a part being "
            f"sent without taking a byte, before the attempt fails (default 60s): "
            f"{DURATION_FORMS}.",
            "30s",
        ),
        "max_attempts": Help(
            "How many times each request is tried, the first included (default 5): a frozen "
            "endpoint fails a backup after about read_timeout x max_attempts.",
            3,
        ),
        "storage_class": Help(
            "S3 storage class of the archive files; manifests and drill records stay "
            "STANDARD. GLACIER and DEEP_ARCHIVE are refused: they need a restore request "
            "before each read.",
            "STANDARD_IA",
        ),
    },
}


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
        "helper_image": image_reference,
        "retention": RETENTION,
        "keep_safety_archives": duration(),
        "drill": DRILL,
        "hooks": HOOKS,
        "volume_hooks": volume_hooks,
        "encryption": ENCRYPTION,
        "notify": NOTIFY,
        "format": choice(("tar", "dedup"), "archive format"),
        "full_read_every": duration(allow_zero=True),
    }


POLICY_REQUIRED = ("storage",)
POLICY_EXACTLY_ONE_OF = ("volumes", "match")
POLICY_HELP = {
    "volumes": Help("The Docker volumes this policy backs up, by name.", ["app_db", "app_uploads"]),
    "match": Help(
        "Instead of volumes: every volume that matches a label, a name pattern or a Compose "
        "project, when the policy runs.",
        {"compose_project": "app"},
    ),
    "schedule": Help(
        "When to back up: a 5-field cron expression ('0 3 * * *': 03:00 every day), an "
        "interval ('@every 6h'), or @hourly, @daily, @weekly, @monthly, @yearly. Without "
        "it, the policy runs on demand only.",
        "0 3 * * *",
    ),
    "timezone": Help(
        "Time zone of the cron schedules (an IANA name); default UTC.", "Europe/Paris"
    ),
    "storage": Help(
        "The storage that keeps the archives, by name; or a list of them, each archive going "
        "to each, an entry {name: ..., retention: {...}} with keep rules of its own.",
        "local",
    ),
    "compression": Help(
        "Compression of one-file archives (format: tar): zstd (default), gzip or none, or "
        "{algorithm: ..., level: ...}. Deduplicated chunks are always zstd, level 3.",
        "zstd",
    ),
    "exclude": Help(
        "Paths inside the volume to leave out, as patterns relative to its root: no leading "
        "'/', no '..'.",
        ["cache/", "*.tmp"],
    ),
    "stop_containers": Help(
        "Stop the running containers that use a volume while it is backed up (for databases "
        "that cannot flush on demand); they start again as soon as the volume is read. A "
        "container label volkeep.stop-during-backup=true or =false wins over this.",
        False,
    ),
    "stop_timeout": Help(
        f"How long a stopped container gets to exit before it is killed: {DURATION_FORMS}.",
        "30s",
    ),
    "helper_image": Help(
        "Image of the helper container that reads and writes volumes; it needs sh and tar and "
        "is never pulled, so it must exist on this host.",
        "busybox:1.36",
    ),
    "retention": Help(
        "Which archives to keep after each backup: an archive is kept if any rule keeps it; "
        "with no rule, every archive is kept.",
        {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
    ),
    "keep_safety_archives": Help(
        "How long the safety archive a forced restore takes of the target's content is kept "
        f"in each storage before prune deletes it (default 30d): {DURATION_FORMS}.",
        "90d",
    ),
    "drill": Help(
        "Restore drills: an archive restored into a scratch volume and compared with its "
        "manifest, byte for byte.",
        {"schedule": "30 4 * * 0", "archive": "latest"},
    ),
    "hooks": Help(
        "Commands run before and after each volume's backup.",
        {"before": [{"run": ["sync"]}]},
    ),
    "volume_hooks": Help(
        "Hooks of one volume only, by volume name: run inside the policy's hooks.",
        {"app_db": {"before": [{"exec": {"container": "app_db", "command": ["sync"]}}]}},
    ),
    "encryption": Help(
        "Encrypt the archives; without it, archives are not encrypted.",
        {"age": {"recipients_file": "/etc/volkeep/recipients.txt"}},
    ),
    "notify": Help(
        "Notifications of failed backups and drills, and recoveries.",
        {"urls": ["ntfy://ntfy.example/backups"]},
    ),
    "format": Help(
        "How backups are stored: dedup (default: content stored once per storage, each "
        "backup adding only what changed; with encryption it needs identity_file, without "
        "which the default is tar) or tar (each backup one compressed tar file). Earlier "
        "archives stay readable either way.",
        "tar",
    ),
    "full_read_every": Help(
        "With format: dedup, how often a backup reads every file (default 7d); in between, "
        "files whose size, mtime, ctime and inode did not change are taken from the "
        "previous archive. 0: every backup reads every file.",
        "7d",
    ),
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
    entry = record(
        {"name": reference, "retention": RETENTION}, into=PolicyStorage, required=("name",)
    )

    def one(node: yaml.Node, path: str) -> PolicyStorage:
        if isinstance(node, yaml.MappingNode):
            return entry(node, path)
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


POLICY_STORAGE_HELP = {
    "name": Help("The storage, by name.", "offsite"),
    "retention": Help("Keep rules of this storage, instead of the policy's.", {"keep_daily": 30}),
}


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
        if values.get("format") == "dedup" and not can_deduplicate(values.get("encryption")):
            format_node = value_of(entry.value_node, "format")
            raise invalid(format_node, child_path(path, "format"), DEDUP_NEEDS_IDENTITY)
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
        required=POLICY_REQUIRED,
        exactly_one_of=POLICY_EXACTLY_ONE_OF,
    )
    return convert(entry.value_node, path)
