"""What deduplicated backups cost, as `list`, `status` and the metrics show it: each
archive's tar size and the bytes it added (its recipe and new chunks, not the recipe
alone), and per volume and storage the tar bytes, the bytes added and their ratio. Real
backups through the engine into a local storage; the manifests are the truth."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.actions.context import Context
from daemon.config.loader import load_config
from daemon.observe.metrics import Metrics
from daemon.observe.overview import take_overview
from daemon.observe.web.page import render_page
from daemon.terminal.progress import human_bytes
from tests.e2e.conftest import Workspace, mountpoint

pytestmark = pytest.mark.e2e

HOST = "web-1"
MIB = 1 << 20


def stored_manifests(workspace: Workspace, volume: str) -> dict[str, dict[str, Any]]:
    """Return the summaries of the volume's manifests in the local storage, by id."""
    directory = workspace.archive_dir("app", volume, HOST)
    found = {}
    for path in directory.glob("*.manifest.json"):
        # the JSON summary, then the entries section (zstd): latin-1 reads any byte
        summary, _ = json.JSONDecoder().raw_decode(path.read_bytes().decode("latin-1"))
        found[summary["id"]] = summary
    return found


def added(summary: dict[str, Any]) -> int:
    return int(summary["archive"]["size"]) + int(summary["chunks"]["added_bytes"])


def test_deduplicated_archives_show_their_tar_size_what_they_added_and_the_ratio(
    api, volumes, workspace: Workspace
) -> None:
    volume = volumes("usage")
    (mountpoint(api, volume) / "big").write_bytes(os.urandom(4 * MIB))
    workspace.write_config({"app": {"volumes": [volume], "format": "dedup"}}, daemon={"host": HOST})
    first = workspace.run("backup", "app")
    assert first.returncode == 0, first.stderr
    (mountpoint(api, volume) / "small").write_bytes(os.urandom(100_000))
    second = workspace.run("backup", "app")
    assert second.returncode == 0, second.stderr
    manifests = stored_manifests(workspace, volume)
    older, newer = (manifests[key] for key in sorted(manifests))
    assert older["archive"]["layout"] == newer["archive"]["layout"] == "deduplicated"
    # the second backup stored the new file's chunks, not the 4 MiB again
    assert added(older) > 4 * MIB > 10 * added(newer) > 0

    listing = workspace.run("list", "app", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["id"]: row for row in json.loads(listing.stdout)}
    for archive_id, summary in manifests.items():
        assert rows[archive_id]["size"] == summary["archive"]["size"]  # the recipe
        assert rows[archive_id]["tar_size"] == summary["tar"]["size"]
        assert rows[archive_id]["added_bytes"] == added(summary)
    table = workspace.run("list", "app").stdout.splitlines()
    header, newest_row = table[0], table[1]
    assert header.split()[-3:] == ["SIZE", "ADDED", "DRILL"]
    assert newest_row[header.index("SIZE") :].split("  ")[0] == human_bytes(newer["tar"]["size"])
    assert human_bytes(added(newer)) in newest_row[header.index("ADDED") :]

    status = workspace.run("status", "--json")
    assert status.returncode == 0, status.stderr
    [watched] = json.loads(status.stdout)["policies"][0]["volumes"]
    tar_bytes = older["tar"]["size"] + newer["tar"]["size"]
    added_bytes = added(older) + added(newer)
    assert watched["usage"] == {
        "local": {
            "backups": 2,
            "tar_bytes": tar_bytes,
            "added_bytes": added_bytes,
            "ratio": round(tar_bytes / added_bytes, 2),
        }
    }
    assert watched["newest_archive"]["added_bytes"] == added(newer)
    header, row = workspace.run("status").stdout.splitlines()[-2:]
    assert row[header.index("SIZE") :].split("  ")[0] == human_bytes(newer["tar"]["size"])
    assert row[header.index("ADDED") :].split("  ")[0] == human_bytes(added(newer))

    context = Context(load_config(workspace.config), workspace.state_dir)
    now = datetime.now(UTC)
    overview = take_overview(context, now)
    metrics = Metrics(HOST)
    metrics.update(overview)
    samples = {
        (sample.name, sample.labels.get("storage")): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.labels.get("volume") == volume
    }
    assert samples["volkeep_backups_tar_bytes", "local"] == tar_bytes
    assert samples["volkeep_backups_added_bytes", "local"] == added_bytes
    assert samples["volkeep_dedup_ratio", "local"] == pytest.approx(tar_bytes / added_bytes)
    assert samples["volkeep_newest_archive_added_bytes", "local"] == added(newer)
    # two backups of 4 MiB of random bytes that cost little more than one
    assert 1.8 < samples["volkeep_dedup_ratio", "local"] < 2.1
    page = render_page(overview, now, HOST, "idle")
    assert f"{human_bytes(tar_bytes)} of tar, {human_bytes(added_bytes)} added" in page
    assert f"added {human_bytes(added(newer))}" in page
