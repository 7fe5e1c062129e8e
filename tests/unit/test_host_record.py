"""The host record (docs/fleet.md): its format read across versions, the claim rules, the
storage URL of a machine without a config, and when fleet status calls a backup overdue."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.actions.fleet import VolumeState, _judged
from daemon.config.url import storage_from_url
from daemon.errors import UsageError
from daemon.repository.hosts import (
    HostRecord,
    NamespaceClaimed,
    PolicyRecord,
    claim_namespace,
    marker_blob,
    read_record,
)
from daemon.repository.layout import ArchiveKey
from daemon.storage.local import LocalStore

CLAIMED = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def record(machine: str = "m1", schedule: str | None = "0 3 * * *") -> HostRecord:
    policy = PolicyRecord(volumes=("db",), schedule=schedule, drill_schedule="@daily")
    return HostRecord("web-1", machine, "0.4.0", {"app": policy}, CLAIMED, CLAIMED)


def test_a_record_reads_back_and_a_later_versions_unknown_fields_are_skipped() -> None:
    written = record()
    document = json.loads(written.to_bytes())
    assert document["format"] == 1 and document["policies"]["app"]["volumes"] == ["db"]
    document["some_later_field"] = {"x": 1}
    document["policies"]["app"]["later"] = True
    assert HostRecord.from_bytes(json.dumps(document).encode()) == written


def test_an_unreadable_record_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="unreadable host record"):
        HostRecord.from_bytes(b'{"host": "web-1"}')


def test_the_first_claim_creates_the_marker_and_another_machine_is_refused(
    tmp_path: Path,
) -> None:
    store = LocalStore("local", tmp_path)
    claim_namespace(store, record("m1"))
    marker = (tmp_path / marker_blob("web-1")).read_bytes()
    with pytest.raises(NamespaceClaimed, match="host name 'web-1' is claimed by machine m1"):
        claim_namespace(store, record("m2"))
    assert (tmp_path / marker_blob("web-1")).read_bytes() == marker


def test_the_same_machine_rewrites_its_marker_only_when_what_it_says_changed(
    tmp_path: Path,
) -> None:
    store = LocalStore("local", tmp_path)
    claim_namespace(store, record())
    path = tmp_path / marker_blob("web-1")
    first = path.read_bytes()
    claim_namespace(store, record())
    assert path.read_bytes() == first
    claim_namespace(store, record(schedule="@hourly"))
    stored = read_record(store, "web-1")
    assert stored is not None and stored.policies["app"].schedule == "@hourly"
    assert stored.claimed == CLAIMED  # the first claim's time stays


def test_a_renamed_hosts_name_is_refused_to_its_own_machine_too(tmp_path: Path) -> None:
    store = LocalStore("local", tmp_path)
    store.put(
        marker_blob("web-1"), HostRecord("web-1", "m1", "0.4.0", renamed_to="web-2").to_bytes()
    )
    with pytest.raises(NamespaceClaimed, match="was renamed 'web-2'"):
        claim_namespace(store, record("m1"))


def test_a_storage_url_never_carries_credentials() -> None:
    with pytest.raises(UsageError, match="credentials do not belong in the URL") as refused:
        storage_from_url("s3://AKIAEXAMPLE:s3cr3t@bucket/prefix")
    assert "s3cr3t" not in str(refused.value)
    parsed = storage_from_url("s3://bucket/fleet?endpoint=http://127.0.0.1:9000&path_style=1")
    assert (parsed.bucket, parsed.prefix, parsed.path_style) == ("bucket", "fleet/", True)


@pytest.mark.parametrize(
    ("newest", "now", "overdue"),
    [
        ("20260110T030000Z", datetime(2026, 1, 11, 3, 59, tzinfo=UTC), False),  # due 03:00
        ("20260110T030000Z", datetime(2026, 1, 11, 4, 1, tzinfo=UTC), True),  # + 1h grace
        (None, datetime(2026, 1, 6, 3, 30, tzinfo=UTC), False),  # claimed, first run soon
        (None, datetime(2026, 1, 6, 4, 30, tzinfo=UTC), True),  # never backed up since
    ],
)
def test_a_backup_is_overdue_once_the_run_after_the_newest_is_grace_past(
    newest: str | None, now: datetime, overdue: bool
) -> None:
    key = ArchiveKey("app", "db", newest, "web-1") if newest else None
    state = VolumeState("app", "db", key, None)
    judged = _judged(state, record().policies["app"], CLAIMED, now, timedelta(hours=1))
    assert judged.backup_overdue is overdue
