"""The validated configuration as plain, immutable data.

The loader (`daemon.config.load`) turns YAML files into these objects or raises
`ConfigError` with every problem found. Everything downstream reads only these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from daemon.errors import ConfigProblem

CompressionAlgorithm = Literal["zstd", "gzip", "none"]
DrillChoice = Literal["latest", "random", "oldest-unverified"]
DrillScratch = Literal["auto", "disk", "memory"]  # where a drill restores (daemon.rules.scratch)
NotifyEvent = Literal["failure", "drill_failure", "recovered", "missed", "shrink"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = (
    "failure",
    "drill_failure",
    "recovered",
    "missed",
    "shrink",
)

FULL_READ_EVERY = timedelta(days=7)  # a policy's full_read_every by default (format: dedup)
DEDUP_NEEDS_IDENTITY = (
    "dedup with encryption needs encryption.age.identity_file: a backup opens the "
    "repository's chunk key and indexes, which are sealed to the recipients (format: tar "
    "encrypts without it)"
)


@dataclass(frozen=True)
class Source:
    """Where a piece of configuration was written: file and 1-based line."""

    file: str
    line: int


@dataclass(frozen=True)
class Schedule:
    """A validated schedule: a 5-field cron expression or a fixed interval.

    `text` is what the operator wrote ("0 3 * * *", "@every 6h", "@daily").
    Exactly one of `cron` (the 5 fields, with @daily & co. expanded) and
    `interval` is set.
    """

    text: str
    cron: str | None = None
    interval: timedelta | None = None


@dataclass(frozen=True)
class LocalStorageConfig:
    name: str
    source: Source
    path: Path
    type: Literal["local"] = "local"


@dataclass(frozen=True)
class S3StorageConfig:
    """An S3-compatible bucket. Credentials are never here: they come from
    `credentials_file` (AWS shared-credentials format, `profile` in it) or the standard AWS
    chain (environment, AWS_PROFILE, instance metadata)."""

    name: str
    source: Source
    bucket: str
    prefix: str = ""  # "" or ending in "/"
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    credentials_file: Path | None = None
    profile: str | None = None
    ca_bundle: Path | None = None
    storage_class: str | None = None
    # How long volkeep waits for the endpoint, and how often it tries each request: a dead
    # or frozen endpoint fails a backup after about read_timeout x max_attempts.
    connect_timeout: float = 3.0  # seconds to open a connection
    read_timeout: float = 60.0  # seconds without a byte answered (or taken, while sending)
    max_attempts: int = 5  # tries of each request, the first included
    type: Literal["s3"] = "s3"


StorageConfig = LocalStorageConfig | S3StorageConfig


@dataclass(frozen=True)
class Compression:
    algorithm: CompressionAlgorithm = "zstd"
    level: int | None = None


# Docker Compose labels the volumes (and containers) it creates with their project's name.
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"


@dataclass(frozen=True)
class VolumeSelector:
    """Which volumes a policy covers: explicit names, or a label / name-glob match."""

    names: tuple[str, ...] = ()
    label_key: str | None = None
    label_value: str | None = None  # None: the label only has to exist
    name_glob: str | None = None


@dataclass(frozen=True)
class RetentionRules:
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: timedelta | None = None

    def is_empty(self) -> bool:
        """Given no keep rule at all, retention keeps everything."""
        return all(value is None for value in vars(self).values())


@dataclass(frozen=True)
class DrillConfig:
    schedule: Schedule | None = None
    archive: DrillChoice = "latest"
    max_per_run: int = 1
    storage: str | None = None  # which of the policy's storages to drill (None: the first)
    # whose archives the scheduled drills cover, in turn ("*": every host in the storage);
    # empty: this host's own
    hosts: tuple[str, ...] = ()
    scratch: DrillScratch = "auto"


@dataclass(frozen=True)
class ExecHook:
    """Run `command` inside the running container `container` through the Docker API."""

    container: str
    command: tuple[str, ...]
    user: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class RunHook:
    """Run `command` on the host, as an argument list (never through a shell)."""

    command: tuple[str, ...]
    timeout: float | None = None


Hook = ExecHook | RunHook


@dataclass(frozen=True)
class Hooks:
    before: tuple[Hook, ...] = ()
    after: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class AgeEncryption:
    """Archives encrypted to these age recipients (public keys, checked when loaded); the
    identity file (private keys) is needed to restore and drill, and to back up
    deduplicated (`can_deduplicate`)."""

    recipients: tuple[str, ...] = ()
    recipients_file: Path | None = None
    identity_file: Path | None = None
    identity_source: Source | None = field(default=None, compare=False)  # identity_file's


@dataclass(frozen=True)
class NotifySettings:
    """Where a policy's notifications go (SPEC §3b). The URLs may hold secrets (tokens,
    passwords): they stay out of reprs and logs."""

    urls: tuple[str, ...] = field(default=(), repr=False)  # Apprise URLs
    ping: str | None = field(default=None, repr=False)  # Healthchecks-style: /start, /fail
    events: tuple[NotifyEvent, ...] = NOTIFY_EVENTS  # which events go to `urls`
    # a policy that keeps failing is told of when it starts failing, then again this often
    remind_every: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class PolicyStorage:
    """One storage a policy writes every archive to, with its own retention if it has one
    (None: the policy's)."""

    name: str
    retention: RetentionRules | None = None


SAFETY_ARCHIVES_KEPT = timedelta(days=30)


@dataclass(frozen=True)
class Policy:
    name: str
    source: Source
    selector: VolumeSelector
    storages: tuple[PolicyStorage, ...]
    schedule: Schedule | None = None
    timezone: str = "UTC"
    compression: Compression = field(default_factory=Compression)
    exclude: tuple[str, ...] = ()
    stop_containers: bool = False
    stop_timeout: float = 30.0
    helper_image: str = "busybox:1.36"
    retention: RetentionRules = field(default_factory=RetentionRules)
    # how long the safety archive a forced restore takes is kept (docs/retention.md)
    keep_safety_archives: timedelta = SAFETY_ARCHIVES_KEPT
    drill: DrillConfig | None = None
    hooks: Hooks = field(default_factory=Hooks)
    volume_hooks: Mapping[str, Hooks] = field(default_factory=dict, hash=False)
    encryption: AgeEncryption | None = None
    notify: NotifySettings = field(default_factory=NotifySettings)
    # tar or dedup (docs/format-dedup.md); None: not said, `archive_format` decides
    format: str | None = None
    # dedup: read every file (not only those whose metadata changed) at least this often
    full_read_every: timedelta = FULL_READ_EVERY

    @property
    def storage_names(self) -> tuple[str, ...]:
        return tuple(storage.name for storage in self.storages)

    def retention_for(self, storage: str) -> RetentionRules:
        """Given one of the policy's storages, return the keep rules that apply there."""
        own = next(entry.retention for entry in self.storages if entry.name == storage)
        return self.retention if own is None else own

    def archive_format(self) -> str:
        """Return the format the policy's backups write: its `format`, or when it does not
        say, dedup if it can deduplicate (`can_deduplicate`), else tar."""
        if self.format is not None:
            return self.format
        return "dedup" if can_deduplicate(self.encryption) else "tar"

    def hooks_for(self, volume: str) -> Hooks:
        """Given a volume, return the hooks around its backup: the policy's before hooks, then
        the volume's; after the backup the volume's after hooks, then the policy's."""
        own = self.volume_hooks.get(volume, Hooks())
        return Hooks(self.hooks.before + own.before, own.after + self.hooks.after)


def can_deduplicate(encryption: AgeEncryption | None) -> bool:
    """Given a policy's encryption, return whether its backups can be deduplicated: a
    backup opens the repository's chunk key and indexes, which are sealed to the recipients,
    so an encrypting policy needs identity_file (a host that must never hold the identity
    keeps format: tar, write-only encryption)."""
    return encryption is None or encryption.identity_file is not None


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics and the status page (`daemon.metrics`): served on `listen` (host,
    port; port 0: any free one), written to the node_exporter file `textfile`, or both."""

    listen: tuple[str, int] | None = None
    textfile: Path | None = None
    token: str | None = field(default=None, repr=False)  # clients must present it
    public: bool = False  # served off loopback without a token, by the operator's choice


@dataclass(frozen=True)
class DaemonSettings:
    """Process-wide settings (top-level `daemon:` block)."""

    max_parallel: int = 1
    shutdown_timeout: timedelta = timedelta(minutes=10)
    host: str | None = None  # the name this host writes under (None: its hostname)
    splay: timedelta = timedelta(0)  # the window of this host's offset on cron schedules
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


@dataclass(frozen=True)
class Config:
    storages: dict[str, StorageConfig]
    policies: dict[str, Policy]
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    files: tuple[Path, ...] = ()
    # what loads but deserves the operator's eye (a secret in a file every user reads)
    warnings: tuple[ConfigProblem, ...] = field(default=(), compare=False)
