"""The metrics of SPEC §3b, from a real local storage and a real run history (no daemon):
right from what the storage and the history hold, and the counters from the event stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.actions.context import Context
from daemon.archive.manifest import Manifest
from daemon.config import load_config
from daemon.errors import OperationError
from daemon.events import ConfigReload, OperationFailed, OperationFinished
from daemon.observe.metrics import Metrics
from daemon.observe.overview import take_overview
from daemon.observe.web.page import render_page
from daemon.repository.layout import ArchiveKey
from daemon.repository.store import Repository
from daemon.rules.verdict import DrillRecord

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    config = tmp_path / "volkeep.yaml"
    config.write_text(
        f"""
version: 1
daemon: {{host: testhost}}
storage:
  local: {{type: local, path: {tmp_path / "local"}}}
  offsite: {{type: local, path: {tmp_path / "offsite"}}}
policies:
  app:
    volumes: [app_db, app_files]
    storage: [local, offsite]
    schedule: "0 3 * * 1-5"
    drill: {{schedule: "@every 6h"}}
"""
    )
    return Context(load_config(config), tmp_path / "state")


def plant(repository: Repository, volume: str, started: datetime, size: int) -> ArchiveKey:
    """Commit an archive of `volume` of `size` bytes that started at `started`."""
    key = ArchiveKey("app", volume, started.strftime("%Y%m%dT%H%M%SZ"), "testhost")
    upload = repository.begin(key, ".tar.zst")
    upload.write(b"x" * size)
    upload.commit()
    manifest = Manifest(
        id=key.id,
        policy="app",
        volume=volume,
        started=started,
        finished=started + timedelta(seconds=30),
        archive_file=key.file_name(".tar.zst"),
        size=size,
        sha256="0" * 64,
        compression="zstd",
        compression_level=None,
        tar_flavour="busybox",
        tar_size=size,
        host="testhost",
    )
    repository.commit(key, [manifest.to_json()])
    return key


def drill(repository: Repository, key: ArchiveKey, passed: bool, finished: datetime) -> None:
    repository.write_drill(
        key,
        DrillRecord(
            policy="app",
            volume=key.volume,
            archive=key.id,
            passed=passed,
            finished=finished,
            duration=9.0,
            restore_seconds=7.5 if passed else 0.0,
            bytes=100,
            reason=None if passed else "3 objects differ from the manifest",
        ),
    )


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the exposition as Prometheus would; return every sample by name and labels."""
    text = metrics.exposition().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_the_gauges_say_what_the_storages_and_the_history_hold_without_a_run(ctx: Context) -> None:
    local, offsite = ctx.repositories(ctx.policy("app"))
    older = plant(local, "app_db", NOW - timedelta(days=1), 1000)
    newest = plant(local, "app_db", NOW - timedelta(hours=1), 1200)
    plant(offsite, "app_db", NOW - timedelta(days=1), 1000)
    drill(local, older, passed=True, finished=NOW - timedelta(hours=20))
    drill(local, newest, passed=False, finished=NOW - timedelta(minutes=30))
    with pytest.raises(OperationError), ctx.history.operation("backup", "app", "app_files"):
        raise OperationError("no such volume")

    metrics = Metrics("testhost")
    metrics.update(take_overview(ctx, NOW))
    found = samples(metrics)

    db = {"host": "testhost", "policy": "app", "volume": "app_db"}
    assert found["volkeep_archives", labels(**db, storage="local")] == 2
    assert found["volkeep_archives", labels(**db, storage="offsite")] == 1
    assert found["volkeep_newest_archive_bytes", labels(**db, storage="local")] == 1200
    assert found["volkeep_newest_archive_bytes", labels(**db, storage="offsite")] == 1000
    assert found["volkeep_newest_archive_timestamp_seconds", labels(**db, storage="local")] == (
        (NOW - timedelta(hours=1)).timestamp()
    )
    # the newest drill failed: that is the verdict, and it measured no restore
    assert found["volkeep_drill_passed", labels(**db)] == 0
    assert ("volkeep_restore_seconds", labels(**db)) not in found
    success, failure = (
        "volkeep_last_success_timestamp_seconds",
        "volkeep_last_failure_timestamp_seconds",
    )
    assert found[success, labels(**db, operation="backup")] == (
        (NOW - timedelta(hours=1) + timedelta(seconds=30)).timestamp()
    )
    assert (
        found[success, labels(**db, operation="drill")] == (NOW - timedelta(hours=20)).timestamp()
    )
    assert (
        found[failure, labels(**db, operation="drill")] == (NOW - timedelta(minutes=30)).timestamp()
    )

    files = {"host": "testhost", "policy": "app", "volume": "app_files"}
    assert found["volkeep_archives", labels(**files, storage="local")] == 0
    assert (failure, labels(**files, operation="backup")) in found
    assert (success, labels(**files, operation="backup")) not in found


def test_a_passed_drill_gives_its_restore_time(ctx: Context) -> None:
    [local, _] = ctx.repositories(ctx.policy("app"))
    key = plant(local, "app_db", NOW - timedelta(hours=1), 1000)
    drill(local, key, passed=True, finished=NOW - timedelta(minutes=5))
    metrics = Metrics("testhost")
    metrics.update(take_overview(ctx, NOW))
    found = samples(metrics)
    assert (
        found["volkeep_drill_passed", labels(host="testhost", policy="app", volume="app_db")] == 1
    )
    assert (
        found["volkeep_restore_seconds", labels(host="testhost", policy="app", volume="app_db")]
        == 7.5
    )


def test_operations_are_counted_and_timed_by_outcome_from_the_event_stream() -> None:
    metrics = Metrics("testhost")
    metrics(OperationFinished(1, "backup", "app", "app_db", seconds=42.0, archive="a", bytes=9))
    metrics(OperationFinished(2, "backup", "app", "app_db", seconds=3.0))
    metrics(OperationFailed(3, "drill", "app", "app_db", seconds=2.0, error="engine down"))
    found = samples(metrics)
    db = {"host": "testhost", "policy": "app", "volume": "app_db"}
    assert (
        found["volkeep_operations_total", labels(**db, operation="backup", outcome="success")] == 2
    )
    assert (
        found["volkeep_operations_total", labels(**db, operation="drill", outcome="failure")] == 1
    )
    count = "volkeep_operation_duration_seconds_count"
    assert found[count, labels(**db, operation="backup")] == 2
    assert found["volkeep_operation_duration_seconds_sum", labels(**db, operation="backup")] == 45
    assert (
        found[
            "volkeep_operation_duration_seconds_bucket", labels(**db, operation="backup", le="5.0")
        ]
        == 1
    )
    assert not any(name.endswith("_created") for name, _ in found)


def test_every_series_carries_the_name_this_host_writes_under(ctx: Context) -> None:
    [local, _] = ctx.repositories(ctx.policy("app"))
    key = plant(local, "app_db", NOW - timedelta(hours=1), 1000)
    drill(local, key, passed=True, finished=NOW - timedelta(minutes=5))
    metrics = Metrics(ctx.host)
    metrics.update(take_overview(ctx, NOW))
    metrics(OperationFinished(1, "backup", "app", "app_db", seconds=42.0))
    metrics(ConfigReload(()))
    found = samples(metrics)
    assert len({name for name, _ in found}) >= 12
    assert {dict(pairs).get("host") for _, pairs in found} == {"testhost"}


def test_the_schedule_intervals_say_how_long_a_job_may_go_between_runs(ctx: Context) -> None:
    metrics = Metrics(ctx.host)
    metrics.update(take_overview(ctx, NOW))
    found = samples(metrics)
    interval = "volkeep_schedule_interval_seconds"
    # "0 3 * * 1-5": Friday 03:00 to Monday 03:00
    backup = labels(host="testhost", policy="app", operation="backup")
    assert found[interval, backup] == timedelta(days=3).total_seconds()
    drills = labels(host="testhost", policy="app", operation="drill")
    assert found[interval, drills] == timedelta(hours=6).total_seconds()


def test_the_last_prune_of_a_volume_is_a_timestamp_gauge(ctx: Context) -> None:
    with ctx.history.operation("prune", "app", "app_db"):
        pass
    with pytest.raises(OperationError), ctx.history.operation("prune", "app", "app_files"):
        raise OperationError("the storage refused the deletion")
    metrics = Metrics(ctx.host)
    metrics.update(take_overview(ctx, NOW))
    found = samples(metrics)
    db = labels(host="testhost", policy="app", volume="app_db", operation="prune")
    files = labels(host="testhost", policy="app", volume="app_files", operation="prune")
    assert ("volkeep_last_success_timestamp_seconds", db) in found
    assert ("volkeep_last_failure_timestamp_seconds", files) in found
    assert ("volkeep_last_success_timestamp_seconds", files) not in found


def test_the_textfile_is_the_exposition_written_atomically(ctx: Context, tmp_path: Path) -> None:
    [local, _] = ctx.repositories(ctx.policy("app"))
    plant(local, "app_db", NOW - timedelta(hours=1), 1000)
    metrics = Metrics("testhost")
    metrics.update(take_overview(ctx, NOW))
    textfile = tmp_path / "node-exporter" / "volkeep.prom"
    textfile.parent.mkdir()
    metrics.write_textfile(textfile)
    assert textfile.read_bytes() == metrics.exposition()
    assert [path.name for path in textfile.parent.iterdir()] == ["volkeep.prom"]


def test_the_status_page_escapes_what_it_shows(ctx: Context) -> None:
    [local, _] = ctx.repositories(ctx.policy("app"))
    key = plant(local, "app_db", NOW - timedelta(hours=1), 1000)
    local.write_drill(
        key,
        DrillRecord("app", "app_db", key.id, False, NOW, 1.0, 0.0, 0, reason="<script>x</script>"),
    )
    page = render_page(take_overview(ctx, NOW), NOW, "host<1>", "idle, nothing <scheduled>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "volkeep on host&lt;1&gt;" in page and "nothing &lt;scheduled&gt;" in page
    assert 'data-verdict="failed"' in page
    assert "<svg" in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_the_status_page_counts_one_archive_in_the_singular(ctx: Context) -> None:
    [local, _] = ctx.repositories(ctx.policy("app"))
    plant(local, "app_db", NOW - timedelta(hours=1), 1000)
    page = render_page(take_overview(ctx, NOW), NOW, "host", "idle")
    assert "[1 archive]" in page and "[1 archives]" not in page
