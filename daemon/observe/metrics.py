"""Prometheus metrics (SPEC §3b; the names are fixed there), labelled by host (the name this
host writes its archives under, so that a fleet's series never collide), policy, volume and,
where it applies, storage.

The gauges are read from the latest overview (`daemon.observe.overview`: the storages and the run
history), so they are right from the daemon's start. The operation counter and duration
histogram count what this process saw on the event stream, as Prometheus counters do
(they start again at zero with the process).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import write_to_textfile as write_registry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.events import ConfigReload, Event, OperationFailed, OperationFinished
from daemon.observe.overview import Overview

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
TIMED_KINDS = ("backup", "drill", "prune")  # the `operation` values of the timestamp gauges


class Metrics:
    """The daemon's metrics: a subscriber of the event stream, given each new overview.
    Every series carries the label `host`: the name this host writes under, as the daemon
    started with it."""

    def __init__(self, host: str) -> None:
        # a `_created` series beside each counter is noise to an operator
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.host = host
        self.registry = CollectorRegistry()
        self._overview: Overview | None = None
        self._lock = threading.Lock()
        self._operations = Counter(
            "volkeep_operations_total",
            "Operations this daemon ran, by outcome (success or failure).",
            ["host", "policy", "volume", "operation", "outcome"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "volkeep_operation_duration_seconds",
            "How long the operations this daemon ran took.",
            ["host", "policy", "volume", "operation"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._reload_failed = Gauge(
            "volkeep_config_reload_failed",
            "1 if the last config reload (SIGHUP) failed and the daemon runs the config it had "
            "before, 0 otherwise.",
            ["host"],
            registry=self.registry,
        )
        self._reload_failed.labels(host).set(0)
        self.registry.register(_Gauges(self))

    def __call__(self, event: Event) -> None:
        if isinstance(event, OperationFinished | OperationFailed):
            outcome = "success" if isinstance(event, OperationFinished) else "failure"
            labels = (self.host, event.policy, event.volume, event.kind)
            self._operations.labels(*labels, outcome).inc()
            self._durations.labels(*labels).observe(event.seconds)
        elif isinstance(event, ConfigReload):
            self._reload_failed.labels(self.host).set(1 if event.failed else 0)

    def update(self, overview: Overview) -> None:
        with self._lock:
            self._overview = overview

    @property
    def overview(self) -> Overview | None:
        with self._lock:
            return self._overview

    def exposition(self) -> bytes:
        """Return the metrics in Prometheus's text format."""
        return bytes(generate_latest(self.registry))

    def write_textfile(self, path: Path) -> None:
        """Replace `path` atomically with the metrics, for node_exporter's textfile
        collector. Raise OSError."""
        write_registry(str(path), self.registry)


class _Gauges(Collector):
    """The gauges of the latest overview."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        overview = self._metrics.overview
        return [] if overview is None else list(gauges(overview, self._metrics.host))


def gauges(overview: Overview, host: str) -> Iterator[GaugeMetricFamily]:
    """Given an overview and the host's name, return the SPEC §3b gauges it gives, and the
    schedule's intervals that tell when a volume's backup or drill is overdue."""
    interval = GaugeMetricFamily(
        "volkeep_schedule_interval_seconds",
        "The longest time between two scheduled runs of the policy's backups or drills (an "
        "interval's length; a cron schedule's longest gap among its next runs).",
        labels=["host", "policy", "operation"],
    )
    for (kind, policy), gap in sorted(overview.intervals.items()):
        interval.add_metric([host, policy, kind], gap.total_seconds())
    volume_labels = ["host", "policy", "volume"]
    success = GaugeMetricFamily(
        "volkeep_last_success_timestamp_seconds",
        "When the last successful operation of the volume ended (Unix time).",
        labels=[*volume_labels, "operation"],
    )
    failure = GaugeMetricFamily(
        "volkeep_last_failure_timestamp_seconds",
        "When the last failed operation of the volume ended (Unix time).",
        labels=[*volume_labels, "operation"],
    )
    passed = GaugeMetricFamily(
        "volkeep_drill_passed",
        "1 if the newest drill of the volume passed, 0 if it failed.",
        labels=volume_labels,
    )
    restore = GaugeMetricFamily(
        "volkeep_restore_seconds",
        "The restore time the newest drill of the volume measured (the RTO).",
        labels=volume_labels,
    )
    storage_labels = [*volume_labels, "storage"]
    archives = GaugeMetricFamily(
        "volkeep_archives", "Backups of the volume in the storage.", labels=storage_labels
    )
    newest_bytes = GaugeMetricFamily(
        "volkeep_newest_archive_bytes",
        "Size of the newest backup's archive file in the storage, as stored (a deduplicated "
        "backup's recipe: see volkeep_newest_archive_added_bytes).",
        labels=storage_labels,
    )
    newest_time = GaugeMetricFamily(
        "volkeep_newest_archive_timestamp_seconds",
        "When the newest backup of the volume in the storage started (Unix time).",
        labels=storage_labels,
    )
    newest_added = GaugeMetricFamily(
        "volkeep_newest_archive_added_bytes",
        "The stored bytes the newest backup of the volume added to the storage: its archive "
        "file, and for a deduplicated backup the new packs and index.",
        labels=storage_labels,
    )
    tar_bytes = GaugeMetricFamily(
        "volkeep_backups_tar_bytes",
        "The tar bytes of the volume's backups in the storage, summed: what they restore to.",
        labels=storage_labels,
    )
    added_bytes = GaugeMetricFamily(
        "volkeep_backups_added_bytes",
        "The stored bytes the volume's backups in the storage added when each was written, "
        "summed (a chunk is counted in the backup that stored it).",
        labels=storage_labels,
    )
    ratio = GaugeMetricFamily(
        "volkeep_dedup_ratio",
        "volkeep_backups_tar_bytes over volkeep_backups_added_bytes: what compression and "
        "deduplication save (2: the backups cost half their tar bytes).",
        labels=storage_labels,
    )
    for volume in overview.volumes:
        labels = [host, volume.policy, volume.name]
        for kind in TIMED_KINDS:
            outcomes = volume.outcomes[kind]
            if outcomes.last_success is not None:
                success.add_metric([*labels, kind], outcomes.last_success.timestamp())
            if outcomes.last_failure is not None:
                failure.add_metric([*labels, kind], outcomes.last_failure.timestamp())
        drill = volume.status.last_drill
        if drill is not None:
            passed.add_metric(labels, 1.0 if drill.passed else 0.0)
            if drill.restore_seconds:  # 0: it failed before it restored anything
                restore.add_metric(labels, drill.restore_seconds)
        for storage, count in volume.archives.items():
            archives.add_metric([*labels, storage], count)
            newest = volume.status.newest.get(storage)
            if newest is not None:
                newest_bytes.add_metric([*labels, storage], newest.size)
                newest_added.add_metric([*labels, storage], newest.added_bytes)
                newest_time.add_metric([*labels, storage], newest.started.timestamp())
        for storage, usage in volume.status.usage.items():
            tar_bytes.add_metric([*labels, storage], usage.tar_bytes)
            added_bytes.add_metric([*labels, storage], usage.added_bytes)
            if usage.ratio is not None:
                ratio.add_metric([*labels, storage], usage.ratio)
    yield from (success, failure, passed, restore, archives, newest_bytes, newest_added)
    yield from (newest_time, tar_bytes, added_bytes, ratio, interval)
