"""The storage fails while a drill streams the archive into the scratch volume (issue 19,
defects 1 and 11): the drill did not run, which is no verdict on the archive; the line names
the storage, not the Docker engine; nothing is left behind, and once the storage is back
the archive drills."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.e2e.conftest import mountpoint
from tests.faults.conftest import Things, Volkeep

pytestmark = pytest.mark.faults


def test_a_storage_failing_mid_drill_is_named_and_records_no_verdict(
    things: Things, volkeep: Volkeep, s3_bucket
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(32 << 20))
    volkeep.workspace.write_config(
        {"app": {"volumes": [volume], "storage": "offsite", "compression": "none"}},
        storages={"offsite": s3_bucket.storage()},
    )
    volkeep.ok("backup", "app")

    drill = volkeep.start("drill", "app", pause_at="half of the archive extracted")
    drill.wait_until_paused()
    s3_bucket.server.kill()
    drill.signal(signal.SIGCONT)
    result = drill.wait()

    s3_bucket.server.start()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "drill not run" in last and "in storage 'offsite'" in last, last
    assert "Docker engine" not in last
    assert things.leftovers() == []
    [listed] = json.loads(volkeep.ok("list", "app", "--json").stdout)
    assert listed["drill"] == {"verdict": "never"}  # no verdict was recorded
    volkeep.ok("drill", "app")
