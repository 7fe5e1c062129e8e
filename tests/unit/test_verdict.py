"""The drill's three outcomes, and which verdict counts for a copy of an archive (SPEC promise
12), without Docker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from daemon.errors import (
    ArchiveFault,
    DockerUnavailable,
    EngineFailure,
    HostileArchive,
    KeyMissing,
    OperationError,
    StorageFailure,
)
from daemon.repository.verify import MembersDiffer
from daemon.rules.verdict import DrillRecord, Outcome, archive_verdict, drill_outcome

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DIGEST = "a" * 64


def record(passed: bool, minutes: int = 0, sha256: str | None = DIGEST) -> DrillRecord:
    finished = NOW + timedelta(minutes=minutes)
    return DrillRecord(
        "app", "db", "20261201T030000Z", passed, finished, 1.0, 0.5, 10, archive_sha256=sha256
    )


@pytest.mark.parametrize(
    ("ended_by", "outcome"),
    [
        (None, Outcome.PASSED),
        (ArchiveFault("archive SHA-256 mismatch"), Outcome.FAILED),
        (HostileArchive("refused: ../etc"), Outcome.FAILED),
        (MembersDiffer.__new__(MembersDiffer), Outcome.FAILED),
        (StorageFailure("cannot read the archive in storage 'offsite'"), Outcome.NOT_RUN),
        (KeyMissing("no identity"), Outcome.NOT_RUN),
        (EngineFailure("helper image 'x' is not on this Docker host"), Outcome.NOT_RUN),
        (DockerUnavailable("the Docker engine does not answer"), Outcome.NOT_RUN),
        (OperationError("cannot create the archive's symlinks: busy"), Outcome.NOT_RUN),
    ],
    ids=lambda value: type(value).__name__,
)
def test_only_a_fault_of_the_archive_is_a_failed_verdict(ended_by, outcome) -> None:
    assert drill_outcome(ended_by) is outcome


def test_the_newest_verdict_on_the_same_stored_bytes_counts() -> None:
    passed, failed_later = record(True), record(False, minutes=5)
    other_bytes = record(False, minutes=9, sha256="b" * 64)
    older_format = record(True, minutes=7, sha256=None)

    assert archive_verdict([passed, other_bytes], DIGEST) == passed
    assert archive_verdict([passed, failed_later], DIGEST) == failed_later
    assert archive_verdict([failed_later, older_format], DIGEST) == older_format
    assert archive_verdict([other_bytes], DIGEST) is None


def test_a_record_reads_back_and_older_and_newer_records_read_too() -> None:
    written = record(True)
    assert DrillRecord.from_bytes(written.to_bytes()) == written

    older = json.loads(written.to_bytes())
    del older["archive_sha256"]
    assert DrillRecord.from_bytes(json.dumps(older).encode()).archive_sha256 is None

    newer = {**json.loads(written.to_bytes()), "a_later_field": 1}
    assert DrillRecord.from_bytes(json.dumps(newer).encode()) == written
