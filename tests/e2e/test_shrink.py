"""The shrink guard as an operator meets it (SPEC promise 13): `docker compose down -v; up`
empties a volume, and the backups of the empty volume must not rotate the good ones away."""

from __future__ import annotations

import json
import os
import re

from tests.e2e.conftest import Workspace, mountpoint
from tests.e2e.test_prune import back_up, listed_ids, printed_decisions
from tests.e2e.test_s3 import keys
from tests.support.tree import differences, snapshot


def fill(root: os.PathLike[str], files: int) -> None:
    """Write `files` small files and one of 2 MB under `root`."""
    for index in range(files):
        with open(os.path.join(root, f"row-{index:03d}.dat"), "w") as out:
            out.write(f"row {index}\n" * 50)
    with open(os.path.join(root, "table.bin"), "wb") as out:
        out.write(os.urandom(2_000_000))


def logged_lines(stderr: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def pending_shrinks(workspace: Workspace, volume: str) -> list[tuple[str, str]]:
    """Return the (before, after) archive ids of the volume's pending shrinks in status."""
    status = workspace.run("status", "--json")
    assert status.returncode == 0, status.stderr
    [policy] = json.loads(status.stdout)["policies"]
    [found] = [entry for entry in policy["volumes"] if entry["name"] == volume]
    return [(shrink["before"], shrink["after"]) for shrink in found["shrinks_pending"]]


def test_an_emptied_volume_never_rotates_away_the_archive_before_the_loss(
    api, volumes, workspace: Workspace
):
    source = volumes("emptied")
    workspace.write_config({"app": {"volumes": [source], "retention": {"keep_last": 2}}})
    fill(mountpoint(api, source), 40)
    original = snapshot(mountpoint(api, source))
    full = [back_up(workspace, source) for _ in range(3)]

    # what `docker compose down -v; up` does to the volume
    api.remove_volume(source)
    api.create_volume(source)
    shrinking = workspace.run("backup", "app", "--volume", source)
    assert shrinking.returncode == 0, shrinking.stderr
    [warning] = [
        line
        for line in logged_lines(shrinking.stderr)
        if line["event"].startswith("the volume lost most of its content")
    ]
    first_empty = re.findall(rf"^app/{source}: archive (\S+) ", shrinking.stdout, re.M)[0]
    assert (warning["before"], warning["archive"]) == (full[-1], first_empty)
    assert warning["objects_before"] == 42 and warning["objects_after"] == 1
    assert warning["level"] == "warning"
    empty = [first_empty, *(back_up(workspace, source) for _ in range(2))]
    drill = workspace.run("drill", "app", "--volume", source, "--archive", empty[-1])
    assert drill.returncode == 0, drill.stderr
    empty += [back_up(workspace, source) for _ in range(3)]

    assert listed_ids(workspace) == [empty[5], empty[4], empty[2], empty[0], full[2]]
    target = volumes("restored")
    restore = workspace.run(
        "restore", "app", "--volume", source, "--archive", full[2], "--to", target
    )
    assert restore.returncode == 0, restore.stderr
    assert differences(original, snapshot(mountpoint(api, target))) == []

    dry = workspace.run("prune", "app", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    reasons = {archive: why for _, archive, why in printed_decisions(dry.stdout)}
    assert reasons[full[2]].startswith("newest before a shrink on ")
    assert f"{empty[0]}: objects 42 -> 1" in reasons[full[2]]
    assert reasons[empty[0]] == f"first after a shrink (kept with {full[2]} until it goes)"
    assert f"`volkeep accept-shrink app --volume {source}`" in dry.stdout

    assert pending_shrinks(workspace, source) == [(full[2], empty[0])]
    status = workspace.run("status")
    assert f"shrink pending: {source} in local on " in status.stdout
    assert f"{full[2]} is kept until `volkeep accept-shrink app --volume {source}`" in status.stdout

    accepted = workspace.run("accept-shrink", "app", "--volume", source)
    assert accepted.returncode == 0, accepted.stderr
    assert f"app/{source} in local: accepted the shrink on " in accepted.stdout
    record = workspace.archive_dir("app", source) / f"{source}.shrink-accepted.{empty[0]}.json"
    document = json.loads(record.read_text())
    assert (document["before"]["archive"], document["after"]["archive"]) == (full[2], empty[0])

    assert pending_shrinks(workspace, source) == []
    pruned = workspace.run("prune", "app")
    assert pruned.returncode == 0, pruned.stderr
    assert listed_ids(workspace) == [empty[5], empty[4], empty[2]]
    assert record.exists()


def test_an_acceptance_is_recorded_in_every_storage_and_each_prune_sees_it(
    api, volumes, workspace: Workspace, s3_bucket
):
    source = volumes("twice")
    workspace.write_config(
        {
            "app": {
                "volumes": [source],
                "storage": ["local", "offsite"],
                "retention": {"keep_last": 1},
            }
        },
        storages={"offsite": s3_bucket.storage("prod/")},
    )
    fill(mountpoint(api, source), 20)
    full = [back_up(workspace, source) for _ in range(2)]
    api.remove_volume(source)
    api.create_volume(source)
    empty = [back_up(workspace, source) for _ in range(3)]

    listed = workspace.run("list", "app", "--json")
    assert listed.returncode == 0, listed.stderr
    by_storage = sorted((entry["storage"], entry["id"]) for entry in json.loads(listed.stdout))
    guarded = [empty[2], empty[0], full[1]]
    assert by_storage == sorted((storage, i) for storage in ("local", "offsite") for i in guarded)

    accepted = workspace.run("accept-shrink", "app", "--volume", source)
    assert accepted.returncode == 0, accepted.stderr
    assert [line.split(":")[0] for line in accepted.stdout.splitlines()] == [
        f"app/{source} in local",
        f"app/{source} in offsite",
    ]
    record = f"{source}.shrink-accepted.{empty[0]}.json"
    assert any(key.startswith("prod/") and key.endswith("/" + record) for key in keys(s3_bucket))

    assert workspace.run("prune", "app").returncode == 0
    listed = json.loads(workspace.run("list", "app", "--json").stdout)
    assert sorted((entry["storage"], entry["id"]) for entry in listed) == [
        ("local", empty[2]),
        ("offsite", empty[2]),
    ]
    again = workspace.run("accept-shrink", "app", "--volume", source, "--storage", "offsite")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"app/{source} in offsite: no shrink pending\n"
