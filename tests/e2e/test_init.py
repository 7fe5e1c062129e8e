"""`volkeep init` as an operator's first minutes: a host with two Compose projects (one
with a database, stopped now), a loose volume; one command drafts a policy file that loads,
passes the JSON Schema, and covers each volume with the right policy."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import docker
import jsonschema
import pytest
import yaml

from daemon.config import load_config
from daemon.config.json_schema import policy_file_schema
from daemon.config.model import COMPOSE_PROJECT_LABEL, VolumeSelector
from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e


def volkeep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_init_drafts_a_policy_per_compose_project_and_stops_databases(
    api: docker.APIClient, volumes, postgres_image: str, tmp_path: Path
) -> None:
    shop, blog = f"vkt{uuid.uuid4().hex[:8]}shop", f"vkt{uuid.uuid4().hex[:8]}blog"
    shop_db = volumes("shop_db", labels={COMPOSE_PROJECT_LABEL: shop})
    shop_uploads = volumes("shop_uploads", labels={COMPOSE_PROJECT_LABEL: shop})
    blog_content = volumes("blog_content", labels={COMPOSE_PROJECT_LABEL: blog})
    loose = volumes("loose")
    database = api.create_container(
        postgres_image,
        command=["true"],
        name=shop_db + "_server",  # removed with the test's volumes
        host_config=api.create_host_config(binds={shop_db: {"bind": "/data", "mode": "rw"}}),
    )
    assert not api.inspect_container(database["Id"])["State"]["Running"]
    drafted = tmp_path / "volkeep.yaml"

    result = volkeep("init", "--output", str(drafted))

    assert result.returncode == 0, result.stderr
    assert f"wrote {drafted}" in result.stdout
    text = drafted.read_text()
    assert text.startswith("# volkeep policy file, drafted by `volkeep init`")
    jsonschema.validate(yaml.safe_load(text), policy_file_schema())
    config = load_config(drafted)
    by_selector = {policy.selector: policy for policy in config.policies.values()}
    shop_policy = by_selector[VolumeSelector(label_key=COMPOSE_PROJECT_LABEL, label_value=shop)]
    blog_policy = by_selector[VolumeSelector(label_key=COMPOSE_PROJECT_LABEL, label_value=blog)]
    assert shop_policy.name == shop and blog_policy.name == blog
    assert shop_policy.stop_containers is True
    assert blog_policy.stop_containers is False
    assert f"{shop_db}_server ({postgres_image})" in text
    standalone = config.policies["standalone"]
    assert loose in standalone.selector.names
    assert not {shop_db, shop_uploads, blog_content} & set(standalone.selector.names)
    for policy in (shop_policy, blog_policy, standalone):
        assert policy.storage_names == ("local",)
        assert policy.schedule is not None and policy.schedule.cron == "0 3 * * *"
        assert policy.drill is not None and policy.drill.schedule is not None
        assert policy.drill.schedule.cron == "30 4 * * 0"
        assert policy.retention.keep_daily == 7
        assert policy.format == "dedup"  # said, so that the operator sees the choice
    assert config.storages["local"].type == "local"

    checked = volkeep("--config", str(drafted), "--state-dir", str(tmp_path / "state"), "validate")
    assert checked.returncode == 0, checked.stderr
    assert f"volumes now: {shop_db}, {shop_uploads}" in checked.stdout


def test_init_never_replaces_a_file_without_force(
    api: docker.APIClient, volumes, tmp_path: Path
) -> None:
    volumes("kept")
    existing = tmp_path / "volkeep.yaml"
    existing.write_text("# the operator's own\n")

    refused = volkeep("init", "--output", str(existing))

    assert refused.returncode == 2
    assert refused.stderr.strip() == f"volkeep: {existing} exists: give --force to replace it"
    assert existing.read_text() == "# the operator's own\n"
    assert list(tmp_path.iterdir()) == [existing]  # no draft left beside it

    replaced = volkeep("init", "--output", str(existing), "--force")

    assert replaced.returncode == 0, replaced.stderr
    load_config(existing)


def test_init_without_output_prints_the_draft(api: docker.APIClient, volumes) -> None:
    loose = volumes("printed")

    result = volkeep("init")

    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    jsonschema.validate(document, policy_file_schema())
    assert loose in document["policies"]["standalone"]["volumes"]
