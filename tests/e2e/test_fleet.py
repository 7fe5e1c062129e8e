"""Many hosts, one storage (issue 21, items 1-5): the hosts a storage holds, recovery on a
new machine with no policy file (a second Docker engine), the host marker refusing a
clone, fleet status turning overdue, and a cross-host drill whose verdict the owner sees.

Hosts are volkeep processes with their own config (`daemon.host`), state dir and machine
id (`VOLKEEP_MACHINE_ID`, docs/fleet.md); the new machine also has its own engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import docker
import pytest
import yaml

from tests.e2e.conftest import ROOT, mountpoint
from tests.faults.test_dockerd_restart import PrivateEngine
from tests.support.seaweed import S3Bucket


@dataclass
class Host:
    """One host of the fleet: its name, its machine, a config writing to `storage`."""

    root: Path
    name: str
    machine: str
    helper_image: str
    storage: dict[str, object]
    env: dict[str, str] = field(default_factory=dict)

    def write_config(self, policies: dict[str, dict[str, object]]) -> None:
        document = {
            "version": 1,
            "daemon": {"host": self.name},
            "storage": {"shared": self.storage},
            "policies": {
                name: {"storage": "shared", "helper_image": self.helper_image, **policy}
                for name, policy in policies.items()
            },
        }
        (self.root / "volkeep.yaml").write_text(yaml.safe_dump(document))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return volkeep(
            ["--config", str(self.root / "volkeep.yaml"), "--state-dir", str(self.root / "state")],
            args,
            {"VOLKEEP_MACHINE_ID": self.machine, **self.env},
        )


def volkeep(
    options: list[str], args: tuple[str, ...] | list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "--log-format", "json", *options, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def fill(api: docker.APIClient, volume: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = mountpoint(api, volume) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def host(tmp_path: Path, helper_image: str) -> Callable[..., Host]:
    def make(name: str, storage: dict[str, object], machine: str | None = None) -> Host:
        root = tmp_path / name
        root.mkdir()
        return Host(root, name, machine or f"machine-of-{name}", helper_image, storage)

    return make


@pytest.fixture(scope="module")
def new_machine(
    api: docker.APIClient, helper_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateEngine]:
    """A second Docker engine: the machine that replaces a lost one. Only the helper image
    is loaded into it (there is no registry)."""
    engine = PrivateEngine(tmp_path_factory.mktemp("dockerd"))
    engine.create_bridge()
    try:
        engine.start_holding(api, helper_image)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            for volume in engine.api().volumes().get("Volumes") or []:
                engine.api().remove_volume(volume["Name"], force=True)
        engine.stop()
        engine.remove_everything()


def storage_url(bucket: S3Bucket, prefix: str) -> str:
    query = urlencode(
        {
            "endpoint": bucket.server.endpoint,
            "region": "us-east-1",
            "path_style": "1",
            "credentials_file": str(bucket.credentials_file),
        }
    )
    return f"s3://{bucket.name}/{prefix}?{query}"


def test_a_new_machine_without_a_config_lists_every_host_and_restores_one_of_them(
    host, volumes, api, s3_bucket: S3Bucket, new_machine: PrivateEngine, tmp_path: Path
) -> None:
    source = volumes("fleet_app_data")
    fill(api, source, {"db/table": os.urandom(300_000), "conf/app.yml": b"name: app\n"})
    a = host("a", s3_bucket.storage(prefix="fleet/"))
    a.write_config({"app": {"volumes": [source], "schedule": "0 3 * * *"}})
    ok(a.run("backup", "app"))
    archive = json.loads(ok(a.run("list", "--json")))[0]["id"]

    # the new machine: only the storage's address and credentials, its own engine
    recovery = [
        "--config", str(tmp_path / "no-such-config"),
        "--state-dir", str(tmp_path / "new-machine-state"),
        "--storage-url", storage_url(s3_bucket, "fleet"),
        "--helper-image", a.helper_image,
    ]  # fmt: skip
    env = {"DOCKER_HOST": new_machine.socket, "VOLKEEP_MACHINE_ID": "the-new-machine"}
    hosts = json.loads(ok(volkeep(recovery, ["hosts", "--json"], env)))["hosts"]
    assert [(entry["host"], entry["policies"]) for entry in hosts] == [("a", ["app"])]
    listed = json.loads(ok(volkeep(recovery, ["list", "--host", "a", "--json"], env)))
    assert [(row["id"], row["host"], row["volume"]) for row in listed] == [(archive, "a", source)]

    missed = volkeep(recovery, ["restore", "app", "--volume", source, "--to", "recovered"], env)
    assert missed.returncode == 2  # a volume no storage holds for this host: usage
    assert "hosts that do: a (give --host NAME)" in missed.stderr.splitlines()[-1]

    restore = ["restore", "app", "--volume", source, "--host", "a", "--to", "recovered"]
    ok(volkeep(recovery, restore, env))
    assert "recovered" not in {volume["Name"] for volume in api.volumes()["Volumes"] or []}
    restored = files_under(mountpoint(new_machine.api(), "recovered"))
    assert restored == files_under(mountpoint(api, source))


def test_a_second_machine_under_a_claimed_name_is_refused_before_it_writes_or_prunes(
    host, volumes, api, tmp_path: Path
) -> None:
    volume = volumes("fleet_claimed")
    fill(api, volume, {"data": b"first"})
    storage = {"type": "local", "path": str(tmp_path / "repo")}
    original = host("a", storage, machine="machine-one")
    original.write_config({"app": {"volumes": [volume], "retention": {"keep_last": 1}}})
    ok(original.run("backup", "app"))
    marker = json.loads((tmp_path / "repo" / "a" / ".volkeep-host.json").read_text())
    assert marker["host"] == "a" and marker["policies"]["app"]["volumes"] == [volume]

    clone = host("clone", storage, machine="machine-two")
    clone.name = "a"  # a cloned VM: the same daemon.host, another machine
    clone.write_config({"app": {"volumes": [volume], "retention": {"keep_last": 1}}})
    before = files_under(tmp_path / "repo")
    for command in (("backup", "app"), ("prune", "app")):
        refused = clone.run(*command)
        assert refused.returncode == 1, refused.stderr
        line = refused.stderr.splitlines()[-1]
        assert "host name 'a' is claimed by machine" in line and "volkeep adopt-host" in line
        assert files_under(tmp_path / "repo") == before

    # the rebuilt machine takes the name over; the old one is refused from then on
    assert "now by this machine" in ok(clone.run("adopt-host"))
    ok(clone.run("backup", "app"))
    assert original.run("backup", "app").returncode == 1


def test_a_renamed_host_writes_under_its_new_name_and_its_old_archives_stay_reachable(
    host, volumes, api, tmp_path: Path
) -> None:
    volume = volumes("fleet_renamed")
    fill(api, volume, {"data": b"before the rename"})
    web = host("web-1", {"type": "local", "path": str(tmp_path / "repo")})
    web.write_config({"app": {"volumes": [volume]}})
    ok(web.run("backup", "app"))
    old_archive = json.loads(ok(web.run("list", "--json")))[0]["id"]

    ok(web.run("rename-host", "web-1", "web-2"))
    still_old = web.run("backup", "app")
    assert still_old.returncode == 1
    assert "was renamed 'web-2'" in still_old.stderr.splitlines()[-1]

    web.name = "web-2"
    web.write_config({"app": {"volumes": [volume]}})
    ok(web.run("backup", "app"))
    new_rows = json.loads(ok(web.run("list", "--json")))
    assert [row["host"] for row in new_rows] == ["web-2"]
    old_rows = json.loads(ok(web.run("list", "--host", "web-1", "--json")))
    assert [row["id"] for row in old_rows] == [old_archive]
    ok(web.run("restore", "app", "--volume", volume, "--host", "web-1", "--to", "fleet_old"))
    api.remove_volume("fleet_old", force=True)


def test_fleet_status_flags_the_host_whose_backup_is_overdue_and_exits_1(
    host, volumes, api, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    storage = s3_bucket.storage(prefix="fleet/")
    names = {}
    for name in ("a", "b"):
        member = host(name, storage)
        volume = names[name] = volumes(f"fleet_status_{name}")
        fill(api, volume, {"data": name.encode()})
        member.write_config({"app": {"volumes": [volume], "schedule": "@daily"}})
        ok(member.run("backup", "app"))
    dead = host("c", storage)
    dead.write_config({"app": {"volumes": ["fleet_status_c"], "schedule": "0 3 * * *"}})
    ok(dead.run("adopt-host"))  # c claimed its name...
    records = volkeep(["--storage-url", storage_url(s3_bucket, "fleet")], ["hosts", "--json"], {})
    assert [entry["host"] for entry in json.loads(ok(records))["hosts"]] == ["a", "b", "c"]
    # ...two days ago, and has written no backup since: as a host that died would
    s3 = s3_bucket.server.client()
    key = "fleet/c/.volkeep-host.json"
    marker = json.loads(s3.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())
    marker["claimed"] = (datetime.now(UTC) - timedelta(days=2)).isoformat(timespec="seconds")
    s3.put_object(Bucket=s3_bucket.name, Key=key, Body=json.dumps(marker).encode())

    # read by a machine with no config and no engine: the hosts may all be down
    check = volkeep(
        ["--storage-url", storage_url(s3_bucket, "fleet"), "--state-dir", str(tmp_path / "s")],
        ["fleet", "status", "--json"],
        {"DOCKER_HOST": "unix:///nonexistent.sock"},
    )
    assert check.returncode == 1, check.stderr
    report = json.loads(check.stdout)
    flags = {
        (entry["host"], volume["volume"]): (volume["backup_overdue"], volume["drill_overdue"])
        for entry in report["hosts"]
        for volume in entry["volumes"]
    }
    assert flags == {
        ("a", names["a"]): (False, False),
        ("b", names["b"]): (False, False),
        ("c", "fleet_status_c"): (True, False),
    }
    assert report["healthy"] is False
    table = volkeep(["--storage-url", storage_url(s3_bucket, "fleet")], ["fleet", "status"], {})
    assert table.returncode == 1
    assert "BACKUP OVERDUE" in next(line for line in table.stdout.splitlines() if " c " in line)


def test_a_drill_host_drills_other_hosts_archives_in_turn_and_their_owner_sees_the_verdicts(
    host, volumes, api, s3_bucket: S3Bucket
) -> None:
    storage = s3_bucket.storage()
    production = host("a", storage)
    names = [volumes("fleet_drilled_one"), volumes("fleet_drilled_two")]
    for name in names:
        fill(api, name, {"data": name.encode()})
    production.write_config({"app": {"volumes": names, "schedule": "@daily"}})
    ok(production.run("backup", "app"))

    drill_host = host("b", storage)
    drill_host.write_config(
        {
            "app": {
                "match": {"label": "volkeep.policy=none-here"},  # no volume of its own
                "drill": {"schedule": "@hourly", "hosts": ["a"]},
            }
        }
    )
    first = ok(drill_host.run("drill", "app"))
    second = ok(drill_host.run("drill", "app"))
    drilled = sorted(line.split()[0] for line in (first + second).splitlines())
    assert drilled == sorted(f"app/{name}" for name in names)  # each volume once, in turn

    rows = json.loads(ok(production.run("list", "--json")))
    assert {row["volume"]: row["drill"]["verdict"] for row in rows} == dict.fromkeys(
        names, "passed"
    )
    status = json.loads(ok(production.run("status", "--json")))
    assert "passed" in json.dumps(status)
    fleet = json.loads(ok(production.run("fleet", "status", "--json")))
    verdicts = {
        volume["volume"]: volume["drill"]
        for entry in fleet["hosts"]
        if entry["host"] == "a"
        for volume in entry["volumes"]
    }
    assert verdicts == dict.fromkeys(names, "passed")
    assert not any(entry["volumes"] for entry in fleet["hosts"] if entry["host"] == "b")
