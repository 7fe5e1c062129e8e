"""The JSON Schema of policy files: generated from the loader's own converters, shipped as
config/volkeep.schema.json, as strict as the loader about structure, never stricter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.actions.init import HostVolume, VolumeUser, draft_policies, render
from daemon.cli.main import main
from daemon.config import load_config
from daemon.config.json_schema import BEYOND_THE_SCHEMA, policy_file_schema, policy_file_schema_text
from daemon.config.model import COMPOSE_PROJECT_LABEL
from daemon.errors import ConfigError
from tests.unit.test_config import BAD_CONFIGS, EXAMPLE, EXAMPLE_LINES, VALUE_LINES, YAML_VALUES

SCHEMA_FILE = Path(__file__).parents[2] / "config" / "volkeep.schema.json"
VALIDATOR = jsonschema.Draft202012Validator(policy_file_schema())

# The bad configs of test_config that no JSON Schema of one file can refuse, and why: each
# is one of BEYOND_THE_SCHEMA, or not a YAML document at all.
NOT_YAML = {"bad-yaml-syntax", "tab-indentation"}
BEYOND = {
    "bad-cron": "the fields of a cron expression",
    "bad-timezone": "that a time zone is known to this host",
    "unknown-storage-name": "that a policy's storages are defined",
    "duplicate-key-in-a-mapping": "a key written twice in one mapping",
    "duplicate-policy-across-files": "a policy or storage name is defined once across files",
    "duplicate-storage-across-files": "a policy or storage name is defined once across files",
    "daemon-block-twice": "`daemon:` in one file",
}


def errors_of(document: object) -> list[str]:
    """Given a policy file's data, return what the schema says is wrong with it."""
    return [error.message for error in VALIDATOR.iter_errors(document)]


def test_the_shipped_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == policy_file_schema_text(), (
        "config/volkeep.schema.json is stale: run "
        "`python -m daemon schema > config/volkeep.schema.json`"
    )


def test_volkeep_schema_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == policy_file_schema_text()


def test_it_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_file_schema())


def test_the_example_names_it_for_editors_and_passes_it() -> None:
    assert EXAMPLE_LINES[0] == "# yaml-language-server: $schema=./volkeep.schema.json"
    assert errors_of(yaml.safe_load(EXAMPLE.read_text())) == []


def options(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Given a schema, return each key a policy file may hold in it, by its path: the
    properties of its records (a record refuses other keys; the `if` and `then` of a rule
    that refines a key elsewhere do not)."""
    if isinstance(schema, list):
        for item in schema:
            yield from options(item, path)
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key == "properties" and schema.get("additionalProperties") is False:
            for name, option in value.items():
                yield f"{path}.{name}", option
                yield from options(option, f"{path}.{name}")
        elif key != "properties":
            yield from options(value, path)


def test_every_option_has_a_description_and_a_valid_example() -> None:
    schema = policy_file_schema()
    found = list(options(schema))
    assert len(found) > 60
    for path, option in found:
        assert option.get("description"), f"{path} has no description"
        (example,) = option["examples"]
        validator = jsonschema.Draft202012Validator({**option, "$defs": schema["$defs"]})
        errors = [error.message for error in validator.iter_errors(example)]
        assert not errors, f"the example of {path} is invalid: {errors}"


def documents(files: dict[str, str]) -> list[object]:
    return [yaml.safe_load(text) for text in files.values()]


CASES = [pytest.param(case.id, case.values[0], id=case.id) for case in BAD_CONFIGS]


@pytest.mark.parametrize(("name", "files"), CASES)
def test_it_refuses_each_bad_config_of_the_loader_that_one_file_can_show(
    name: str, files: dict[str, str]
) -> None:
    if name in NOT_YAML:
        with pytest.raises(yaml.YAMLError):
            documents(files)
    elif name in BEYOND:
        assert any(BEYOND[name] in beyond for beyond in BEYOND_THE_SCHEMA)
        assert all(errors_of(document) == [] for document in documents(files)), (
            f"the schema now refuses {name}: take it out of BEYOND (and BEYOND_THE_SCHEMA)"
        )
    else:
        assert any(errors_of(document) for document in documents(files)), f"{name} passes"


def test_the_cases_it_cannot_refuse_are_cases_of_the_loader() -> None:
    assert NOT_YAML | set(BEYOND) <= {case.id for case in BAD_CONFIGS}


@pytest.mark.parametrize(
    ("mistake", "says"),
    [
        ({"storage": {"s3": {"type": "s3", "bucket": "b", "secret_key": "x"}}}, "secret_key"),
        ({"storage": {"local": {"type": "local"}}}, "'path' is a required property"),
        ({"storage": {"local": {"type": "local", "path": "/x", "bucket": "b"}}}, "bucket"),
        ({"daemon": {"metrics": {"textfile": "/var/lib/volkeep.txt"}}}, "does not match"),
        ({"policies": {"p": {"volumes": ["v1"], "storage": []}}}, "is not valid under any"),
        ({"policies": {"p": {"volumes": ["v1"], "storage": "s", "compression": "lz4"}}}, "lz4"),
        (
            {"policies": {"p": {"volumes": ["v1"], "storage": "s", "hooks": {"before": [{}]}}}},
            "is not valid under any",
        ),
        (
            {
                "policies": {
                    "p": {
                        "volumes": ["v1"],
                        "storage": "s",
                        "compression": {"algorithm": "none", "level": 3},
                    }
                }
            },
            "is not valid under any",
        ),
    ],
    ids=[
        "secret-in-s3",
        "local-without-path",
        "local-with-s3-key",
        "textfile-not-prom",
        "no-storage",
        "unknown-compression",
        "hook-of-no-kind",
        "none-with-level",
    ],
)
def test_it_refuses_structural_mistakes(mistake: dict[str, object], says: str) -> None:
    errors = errors_of({"version": 1, **mistake})
    assert any(says in error for error in errors), errors


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=st.sampled_from(VALUE_LINES), value=YAML_VALUES)
def test_what_the_loader_takes_the_schema_takes(tmp_path: Path, line: int, value: object) -> None:
    """An editor never flags a file that loads: the schema is never stricter than the loader."""
    lines = list(EXAMPLE_LINES)
    key = lines[line].partition(":")[0]
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    lines[line] = f"{key}: {dumped.strip().removesuffix('...').strip()}"
    text = "\n".join(lines)
    (tmp_path / "a.yaml").write_text(text)
    try:
        load_config(tmp_path / "a.yaml")
    except ConfigError:
        return
    assert errors_of(yaml.safe_load(text)) == []


def project(name: str) -> dict[str, str]:
    return {COMPOSE_PROJECT_LABEL: name}


def test_what_init_drafts_passes_the_schema_and_loads_even_from_odd_names(tmp_path: Path) -> None:
    database = VolumeUser("shop-db-1", "registry.example:5000/library/postgres:16@sha256:ab")
    host = [
        HostVolume("shop_db", project("shop"), (database,)),
        HostVolume("shop_cache", project("shop"), (VolumeUser("shop-cache-1", "nginx:1.25"),)),
        HostVolume("odd_data", project('my shop: "copy"\n')),
        HostVolume("odd_logs", project("my-shop-copy-")),
        HostVolume("other_data", project("standalone")),
        HostVolume("true"),
        HostVolume("data.v2", users=(VolumeUser("cache", "redis"),)),
        HostVolume("f" * 64, {"com.docker.volume.anonymous": ""}),
        HostVolume("volkeep-drill-x", {"volkeep.role": "drill"}),
    ]
    policies, left_out = draft_policies(host)
    text = render(policies, left_out, ("busybox:1.36", False))
    assert errors_of(yaml.safe_load(text)) == []
    (tmp_path / "volkeep.yaml").write_text(text)
    config = load_config(tmp_path / "volkeep.yaml")
    assert [policy.name for policy in policies] == list(config.policies)
    assert len(config.policies) == 5  # shop, the two odd projects, "standalone" twice over
    assert config.policies["shop"].stop_containers is True
    assert config.policies["standalone"].selector.names == ("true", "data.v2")
    assert config.policies["standalone"].stop_containers is True  # redis
    assert config.policies["standalone-2"].selector.label_value == "standalone"
    assert config.policies["my-shop-copy-"].selector.label_value == "my-shop-copy-"
    assert config.policies["my-shop-copy--2"].selector.label_value == 'my shop: "copy"\n'
    assert [name for name, _ in left_out] == ["f" * 64, "volkeep-drill-x"]


def test_json_round_trip_is_stable() -> None:
    assert json.loads(policy_file_schema_text()) == policy_file_schema()
