"""Loading policy files: what loads, and how every mistake is addressed by file, line and key."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import load_config
from daemon.config.model import Compression, ExecHook, RunHook, VolumeSelector
from daemon.errors import ConfigError, ConfigProblem

EXAMPLE = Path(__file__).parents[2] / "config" / "example.yaml"

HEADER = """\
version: 1
storage:
  local:
    type: local
    path: /var/backups/volkeep
policies:
  app:
"""  # the policy's own keys start at line 8


def write(directory: Path, files: dict[str, str]) -> Path:
    """Given a directory and file texts by name, write them there and return the directory."""
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def problems_of(path: Path) -> list[ConfigProblem]:
    """Given a config path that must not load, return the problems it was refused for."""
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.problems, "a ConfigError always carries its problems"
    return refused.value.problems


def policy(body: str) -> str:
    """Given the keys of policy `app` (unindented), return a whole file; they start at line 8."""
    return HEADER + textwrap.indent(textwrap.dedent(body), "    ")


def test_the_example_loads() -> None:
    config = load_config(EXAMPLE)
    demo = config.policies["demo"]
    assert config.storages["local"].path == Path("/var/backups/volkeep")
    assert demo.selector == VolumeSelector(names=("volkeep_demo",))
    assert demo.schedule is not None and demo.schedule.interval == timedelta(minutes=1)
    assert demo.compression == Compression("zstd")
    assert demo.format == "dedup" and demo.archive_format() == "dedup"
    assert demo.exclude == ("cache/", "*.tmp")
    assert demo.helper_image == "volkeep-helper:busybox"
    assert (demo.retention.keep_last, demo.retention.keep_daily) == (5, 7)
    assert (demo.retention.keep_weekly, demo.retention.keep_monthly) == (4, 6)
    assert demo.drill is not None and demo.drill.archive == "latest"
    assert demo.drill.schedule is not None
    assert demo.drill.schedule.interval == timedelta(minutes=10)
    assert config.files == (EXAMPLE,)


def test_a_directory_of_files_loads_as_one_config_in_name_order(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "10-storage.yml": """\
                version: 1
                daemon: {max_parallel: 2, shutdown_timeout: 90}
                storage:
                  nas: {type: local, path: /mnt/nas/volkeep}
                """,
            "20-apps.yaml": """\
                version: 1
                policies:
                  db:
                    match: {label: "volkeep.policy=db"}
                    storage: nas
                    schedule: "30 4 * * 1-5"
                    timezone: Europe/Paris
                    compression: {algorithm: zstd, level: -3}
                  web:
                    match: {name: "web_*"}
                    storage: nas
            """,
            ".hidden.yaml": "not: [valid",
            "notes.txt": "not: [valid",
        },
    )
    config = load_config(tmp_path)
    assert config.files == (tmp_path / "10-storage.yml", tmp_path / "20-apps.yaml")
    assert config.daemon.max_parallel == 2
    assert config.daemon.shutdown_timeout == timedelta(seconds=90)
    db, web = config.policies["db"], config.policies["web"]
    assert db.selector == VolumeSelector(label_key="volkeep.policy", label_value="db")
    assert db.schedule is not None and db.schedule.cron == "30 4 * * 1-5"
    assert db.compression == Compression("zstd", -3)
    assert db.source.file == str(tmp_path / "20-apps.yaml") and db.source.line == 3
    assert web.selector == VolumeSelector(name_glob="web_*")


def test_hooks_read_in_every_accepted_form(tmp_path: Path) -> None:
    text = policy("""\
        volumes: [app_db]
        storage: local
        hooks:
          before:
            - exec: {container: db, command: [pg_dump, -f, /dump.sql], user: postgres, timeout: 5m}
            - run: [sync]
          after:
            - run: {command: [logger, done], timeout: 30}
        """)
    config = load_config(write(tmp_path, {"a.yaml": text}))
    hooks = config.policies["app"].hooks
    assert hooks.before == (
        ExecHook("db", ("pg_dump", "-f", "/dump.sql"), user="postgres", timeout=300.0),
        RunHook(("sync",)),
    )
    assert hooks.after == (RunHook(("logger", "done"), timeout=30.0),)


def test_a_label_selector_without_value_only_needs_the_label(tmp_path: Path) -> None:
    text = policy("""\
        match: {label: volkeep.backup}
        storage: local
        """)
    selector = load_config(write(tmp_path, {"a.yaml": text})).policies["app"].selector
    assert selector == VolumeSelector(label_key="volkeep.backup", label_value=None)


def test_merge_keys_share_settings_between_policies(tmp_path: Path) -> None:
    text = """\
        version: 1
        storage:
          local: {type: local, path: /var/backups/volkeep}
        policies:
          app: &defaults
            volumes: [app_db]
            storage: local
            retention: {keep_last: 3}
          other:
            <<: *defaults
            volumes: [other_db]
        """
    other = load_config(write(tmp_path, {"a.yaml": text})).policies["other"]
    assert other.selector.names == ("other_db",)
    assert other.retention.keep_last == 3
    assert other.storage_names == ("local",)


def refused(name: str, files: str | dict[str, str], *, at: str, says: str) -> Any:
    """Given a case's name, its file text (a.yaml) or texts by name, where the problem must be
    ("b.yaml:3 policies.app") and what it must say ({dir}: the config directory), return the
    pytest case."""
    return pytest.param(files if isinstance(files, dict) else {"a.yaml": files}, at, says, id=name)


BAD_CONFIGS = [
    refused(
        "bad-yaml-syntax",
        "version: 1\npolicies:\n  app: {volumes: [app_db, storage: local}\n",
        at="a.yaml:3",
        says="invalid YAML",
    ),
    refused(
        "tab-indentation",
        "version: 1\npolicies:\n\tapp: {}\n",
        at="a.yaml:3",
        says="indent with spaces, not tabs",
    ),
    refused(
        "unknown-top-level-key",
        "version: 1\npolicy: {}\n",
        at="a.yaml:2 policy",
        says="unknown key 'policy' (did you mean 'policies'?)",
    ),
    refused(
        "unknown-policy-key-with-suggestion",
        policy("volumes: [app_db]\nstorage: local\nschedul: '@daily'\n"),
        at="a.yaml:10 policies.app.schedul",
        says="did you mean 'schedule'?",
    ),
    refused(
        "unknown-retention-key",
        policy("volumes: [app_db]\nstorage: local\nretention: {keep_dayly: 7}\n"),
        at="a.yaml:10 policies.app.retention.keep_dayly",
        says="unknown key 'keep_dayly' (did you mean 'keep_daily'?)",
    ),
    refused(
        "keep-last-as-string",
        policy("volumes: [app_db]\nstorage: local\nretention:\n  keep_last: '3'\n"),
        at="a.yaml:11 policies.app.retention.keep_last",
        says="expected an integer, got a string",
    ),
    refused(
        "keep-last-as-boolean",
        policy("volumes: [app_db]\nstorage: local\nretention:\n  keep_last: true\n"),
        at="a.yaml:11 policies.app.retention.keep_last",
        says="expected an integer, got a boolean",
    ),
    refused(
        "keep-daily-zero",
        policy("volumes: [app_db]\nstorage: local\nretention: {keep_daily: 0}\n"),
        at="a.yaml:10 policies.app.retention.keep_daily",
        says="must be at least 1",
    ),
    refused(
        "bad-cron",
        policy("volumes: [app_db]\nstorage: local\nschedule: '61 * * * *'\n"),
        at="a.yaml:10 policies.app.schedule",
        says="invalid cron expression '61 * * * *'",
    ),
    refused(
        "bad-every",
        policy("volumes: [app_db]\nstorage: local\nschedule: '@every 5x'\n"),
        at="a.yaml:10 policies.app.schedule",
        says="invalid duration '5x'",
    ),
    refused(
        "unknown-storage-name",
        policy("volumes: [app_db]\nstorage: lokal\n"),
        at="a.yaml:9 policies.app.storage",
        says="unknown storage 'lokal' (did you mean 'local'?)",
    ),
    refused(
        "duplicate-policy-across-files",
        {
            "a.yaml": policy("volumes: [app_db]\nstorage: local\n"),
            "b.yaml": "version: 1\npolicies:\n  app: {volumes: [b_db], storage: local}\n",
        },
        at="b.yaml:3 policies.app",
        says="policy 'app' already defined at {dir}/a.yaml:7",
    ),
    refused(
        "duplicate-storage-across-files",
        {
            "a.yaml": policy("volumes: [app_db]\nstorage: local\n"),
            "b.yaml": "version: 1\nstorage:\n  local: {type: local, path: /srv}\n",
        },
        at="b.yaml:3 storage.local",
        says="storage 'local' already defined at {dir}/a.yaml:3",
    ),
    refused(
        "invalid-volume-name",
        policy("volumes: [app_db, bad/name]\nstorage: local\n"),
        at="a.yaml:8 policies.app.volumes[1]",
        says="invalid volume name 'bad/name'",
    ),
    refused(
        "both-volumes-and-match",
        policy("volumes: [app_db]\nmatch: {name: 'app_*'}\nstorage: local\n"),
        at="a.yaml:9 policies.app.match",
        says="'volumes' and 'match' exclude each other",
    ),
    refused(
        "neither-volumes-nor-match",
        policy("storage: local\n"),
        at="a.yaml:8 policies.app",
        says="needs one of 'volumes' or 'match'",
    ),
    refused(
        "missing-storage",
        policy("volumes: [app_db]\n"),
        at="a.yaml:8 policies.app.storage",
        says="missing key 'storage'",
    ),
    refused(
        "bad-timezone",
        policy("volumes: [app_db]\nstorage: local\ntimezone: Europe/Pari\n"),
        at="a.yaml:10 policies.app.timezone",
        says="unknown time zone 'Europe/Pari' (did you mean 'Europe/Paris'?)",
    ),
    refused(
        "bad-compression",
        policy("volumes: [app_db]\nstorage: local\ncompression: lz4\n"),
        at="a.yaml:10 policies.app.compression",
        says="unknown compression 'lz4'",
    ),
    refused(
        "gzip-level-30",
        {
            "a.yaml": policy(
                "volumes: [app_db]\nstorage: local\ncompression:\n  algorithm: gzip\n  level: 30\n"
            )
        },
        at="a.yaml:12 policies.app.compression.level",
        says="gzip level must be 1 to 9, got 30",
    ),
    refused(
        "exclude-climbing-out",
        policy("volumes: [app_db]\nstorage: local\nexclude: [cache/, ../x]\n"),
        at="a.yaml:10 policies.app.exclude[1]",
        says="must stay inside the volume",
    ),
    refused(
        "missing-version",
        "storage:\n  local: {type: local, path: /srv}\n",
        at="a.yaml:1 version",
        says="missing key 'version'",
    ),
    refused(
        "version-2",
        "version: 2\n",
        at="a.yaml:1 version",
        says="unsupported version 2",
    ),
    refused(
        "unknown-storage-type",
        "version: 1\nstorage:\n  remote:\n    type: s3-unknown\n    path: /x\n",
        at="a.yaml:4 storage.remote.type",
        says="unknown storage type 's3-unknown'",
    ),
    refused(
        "relative-storage-path",
        "version: 1\nstorage:\n  local:\n    type: local\n    path: backups\n",
        at="a.yaml:5 storage.local.path",
        says="must be an absolute path",
    ),
    refused(
        "duplicate-key-in-a-mapping",
        policy("volumes: [app_db]\nstorage: local\nvolumes: [other_db]\n"),
        at="a.yaml:10 policies.app.volumes",
        says="duplicate key 'volumes' (first at line 8)",
    ),
    refused("empty-file", "", at="a.yaml:1", says="file is empty"),
    refused(
        "top-level-list",
        "- version: 1\n",
        at="a.yaml:1",
        says="expected a mapping with 'version: 1'",
    ),
    refused(
        "bad-drill-archive",
        policy("volumes: [app_db]\nstorage: local\ndrill: {archive: newest}\n"),
        at="a.yaml:10 policies.app.drill.archive",
        says="unknown drill archive choice 'newest'",
    ),
    refused(
        "hook-command-not-a-list",
        {
            "a.yaml": policy(
                "volumes: [app_db]\nstorage: local\nhooks:\n  before:\n"
                "    - exec: {container: db, command: pg_dump app}\n"
            )
        },
        at="a.yaml:12 policies.app.hooks.before[0].exec.command",
        says="expected a list of arguments",
    ),
    refused(
        "float-duration",
        policy("volumes: [app_db]\nstorage: local\nstop_timeout: 1.5\n"),
        at="a.yaml:10 policies.app.stop_timeout",
        says="expected a duration",
    ),
    refused(
        "daemon-block-twice",
        {
            "a.yaml": "version: 1\ndaemon: {max_parallel: 2}\n",
            "b.yaml": "version: 1\ndaemon: {max_parallel: 3}\n",
        },
        at="b.yaml:2 daemon",
        says="daemon settings already defined at {dir}/a.yaml:2",
    ),
    refused(
        "invalid-policy-name",
        "version: 1\npolicies:\n  bad name: {volumes: [app_db], storage: x}\n",
        at="a.yaml:3 policies.bad name",
        says="invalid policy name 'bad name'",
    ),
]


@pytest.mark.parametrize(("files", "at", "says"), BAD_CONFIGS)
def test_a_bad_config_is_refused_with_file_line_and_key(
    tmp_path: Path, files: dict[str, str], at: str, says: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    problems = problems_of(tmp_path)
    expected = says.format(dir=tmp_path)
    matching = [problem for problem in problems if expected in problem.message]
    assert matching, f"no problem says {expected!r} in {[str(p) for p in problems]}"
    problem = matching[0]
    assert f"{Path(problem.file).name}:{problem.line} {problem.key}".rstrip() == at
    assert Path(problem.file).parent == tmp_path
    assert problem.column >= 1


def test_every_mistake_in_a_file_is_reported_not_only_the_first(tmp_path: Path) -> None:
    text = """\
        version: 1
        storage:
          local: {type: local, path: relative}
        policies:
          app:
            volumes: [app_db]
            storage: local
            schedule: "@every 0s"
            retention: {keep_last: -1, keep_daily: "7"}
            compression: {algorithm: none, level: 3}
            stop_containers: maybe
          web:
            storage: nowhere
            match: {name: "web_*", label: x}
    """
    problems = problems_of(write(tmp_path, {"a.yaml": text}))
    assert [(problem.line, problem.key) for problem in problems] == [
        (3, "storage.local.path"),
        (8, "policies.app.schedule"),
        (9, "policies.app.retention.keep_last"),
        (9, "policies.app.retention.keep_daily"),
        (10, "policies.app.compression.level"),
        (11, "policies.app.stop_containers"),
        (13, "policies.web.storage"),
        (14, "policies.web.match.label"),
    ]
    assert {problem.file for problem in problems} == {str(tmp_path / "a.yaml")}


def test_mistakes_in_several_files_are_all_reported(tmp_path: Path) -> None:
    files = {"a.yaml": "version: 1\npolicies: [app]\n", "b.yaml": "version: 1\nbogus: 1\n"}
    problems = problems_of(write(tmp_path, files))
    assert [(Path(problem.file).name, problem.line) for problem in problems] == [
        ("a.yaml", 2),
        ("b.yaml", 2),
    ]


def test_a_missing_path_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "absent.yaml")
    assert (problem.file, problem.line) == (str(tmp_path / "absent.yaml"), 1)
    assert problem.message.startswith("no such file or directory: give --config FILE")


def test_a_directory_without_policy_files_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("nothing here")
    (problem,) = problems_of(tmp_path)
    assert problem.file == str(tmp_path)
    assert "no policy files" in problem.message


def test_a_file_that_is_not_utf8_is_a_problem_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"version: 1\npolicies:\n  caf\xe9: {}\n")
    (problem,) = problems_of(tmp_path)
    assert (problem.line, problem.column, problem.message) == (3, 6, "not valid UTF-8 text")


def test_a_file_with_two_documents_is_a_problem(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, {"a.yaml": "version: 1\n---\nversion: 1\n"}))
    assert problem.line == 2
    assert "expected a single document" in problem.message


def test_a_cyclic_merge_key_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    text = "version: 1\npolicies:\n  app: &app\n    <<: *app\n    storage: local\n"
    problems = problems_of(write(tmp_path, {"a.yaml": text}))
    assert {problem.key for problem in problems} == {"policies.app", "policies.app.storage"}


def test_deeply_nested_yaml_is_a_problem_not_a_recursion_error(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, {"a.yaml": "[" * 5000}))
    assert problem.message == "invalid YAML: nested too deeply"


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
EXAMPLE_LINES = EXAMPLE.read_text().splitlines()
VALUE_LINES = [
    number
    for number, line in enumerate(EXAMPLE_LINES)
    if ":" in line and not line.lstrip().startswith("#")
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=st.sampled_from(VALUE_LINES), value=YAML_VALUES)
def test_any_value_at_any_key_gives_a_config_or_problems_never_a_crash(
    tmp_path: Path, line: int, value: object
) -> None:
    lines = list(EXAMPLE_LINES)
    key = lines[line].partition(":")[0]
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    lines[line] = f"{key}: {dumped.strip().removesuffix('...').strip()}"
    (tmp_path / "a.yaml").write_text("\n".join(lines))
    try:
        load_config(tmp_path / "a.yaml")
    except ConfigError as error:
        assert all(problem.line >= 1 and problem.column >= 1 for problem in error.problems)


S3_STORAGE = """\
version: 1
storage:
  offsite:
    type: s3
    bucket: volkeep-backups
    storage_class: {storage_class}
policies:
  app:
    volumes: [db]
    storage: offsite
"""


@pytest.mark.parametrize("storage_class", ["GLACIER", "DEEP_ARCHIVE"])
def test_a_storage_class_that_needs_a_restore_request_before_a_read_is_refused(
    tmp_path: Path, storage_class: str
) -> None:
    path = write(tmp_path, {"s3.yaml": S3_STORAGE.format(storage_class=storage_class)})

    (problem,) = problems_of(path)

    assert (problem.line, problem.key) == (6, "storage.offsite.storage_class")
    assert "restore request" in problem.message and storage_class in problem.message


def test_an_unknown_storage_class_is_refused_and_a_readable_one_loads(tmp_path: Path) -> None:
    typo = write(tmp_path, {"s3.yaml": S3_STORAGE.format(storage_class="STANDARD-IA")})
    (problem,) = problems_of(typo)
    assert "STANDARD_IA" in problem.message  # did you mean

    good = write(tmp_path, {"s3.yaml": S3_STORAGE.format(storage_class="GLACIER_IR")})
    assert load_config(good).storages["offsite"].storage_class == "GLACIER_IR"
