"""A storage that is down costs one request's retries, not one per step: the operation
drops it at its first failure, names it once, and the other storages go on. A real
SeaweedFS server, started then stopped, beside a local storage; volkeep as a process."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.e2e.conftest import Workspace, mountpoint
from tests.support.seaweed import S3Bucket

pytestmark = pytest.mark.e2e

# botocore waits rand(0, 1) x 2^(attempt - 1) s before each retry: a request tried
# max_attempts 5 times (the default) waits 7.5 s on average, 15 s at most. Asked once,
# the dead storage leaves the two backups well within this bound; asked at every step
# (the newest archive, the ids taken, the claims, the prune), it took some 100 s.
BOUND_SECONDS = 35


def local_volumes(workspace: Workspace) -> list[str]:
    result = workspace.run("list", "app", "--json", "--storage", "local")
    assert result.returncode == 0, result.stderr
    return [entry["volume"] for entry in json.loads(result.stdout)]


@pytest.mark.parametrize("archive_format", ["tar", "dedup"])
def test_a_dead_s3_storage_is_dropped_at_its_first_failure_and_the_local_copies_land(
    api, volumes, workspace: Workspace, s3_bucket: S3Bucket, archive_format: str
) -> None:
    sources = [volumes("dead-s3-a"), volumes("dead-s3-b")]
    for source in sources:
        (mountpoint(api, source) / "data").write_bytes(os.urandom(1 << 20))
    workspace.write_config(
        {"app": {"volumes": sources, "storage": ["local", "offsite"], "format": archive_format}},
        storages={"offsite": s3_bucket.storage()},
    )
    s3_bucket.server.stop()
    try:
        began = time.monotonic()
        backup = workspace.run("backup", "app", timeout=180)
        seconds = time.monotonic() - began
    finally:
        s3_bucket.server.start()

    assert backup.returncode == 1, backup.stderr
    errors = [line for line in backup.stderr.splitlines() if line.startswith("volkeep:")]
    assert len(errors) == 1 and "'offsite'" in errors[0], backup.stderr
    assert "Traceback" not in backup.stderr
    assert seconds < BOUND_SECONDS, f"the backup took {seconds:.1f} s"
    logged = [json.loads(line) for line in backup.stderr.splitlines() if line.startswith("{")]
    dropped = [entry for entry in logged if entry["event"].startswith("storage unavailable")]
    assert [entry["storage"] for entry in dropped] == ["offsite"]
    assert sorted(local_volumes(workspace)) == sorted(sources)
