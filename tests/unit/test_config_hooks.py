"""Policy keys of consistent backups: the Compose project selector and per-volume hooks."""

from __future__ import annotations

from pathlib import Path

from daemon.config import load_config
from daemon.config.model import (
    COMPOSE_PROJECT_LABEL,
    ExecHook,
    Hooks,
    Policy,
    PolicyStorage,
    RunHook,
    Source,
    VolumeSelector,
)
from tests.unit.test_config import policy, problems_of, write


def test_a_compose_project_selects_the_volumes_labelled_with_it(tmp_path: Path) -> None:
    text = policy("""\
        match: {compose_project: shop}
        storage: local
        """)
    selector = load_config(write(tmp_path, {"a.yaml": text})).policies["app"].selector
    assert selector == VolumeSelector(label_key=COMPOSE_PROJECT_LABEL, label_value="shop")
    assert COMPOSE_PROJECT_LABEL == "com.docker.compose.project"


def test_a_compose_project_and_a_label_exclude_each_other(tmp_path: Path) -> None:
    text = policy("""\
        match: {label: a=b, compose_project: shop}
        storage: local
        """)
    (problem,) = problems_of(write(tmp_path, {"a.yaml": text}))
    assert (problem.line, problem.key) == (8, "policies.app.match.compose_project")
    assert "exclude each other" in problem.message


def test_an_empty_compose_project_is_refused(tmp_path: Path) -> None:
    text = policy("""\
        match: {compose_project: " "}
        storage: local
        """)
    (problem,) = problems_of(write(tmp_path, {"a.yaml": text}))
    assert (problem.line, problem.key, problem.message) == (
        8,
        "policies.app.match.compose_project",
        "must not be empty",
    )


def test_volume_hooks_are_read_per_volume(tmp_path: Path) -> None:
    text = policy("""\
        volumes: [app_db, app_uploads]
        storage: local
        volume_hooks:
          app_db:
            before:
              - exec: {container: db, command: [pg_dump, -f, /var/lib/pg/dump.sql]}
            after:
              - run: [rm, -f, /srv/dump.sql]
        """)
    hooks = load_config(write(tmp_path, {"a.yaml": text})).policies["app"].volume_hooks
    assert hooks == {
        "app_db": Hooks(
            before=(ExecHook("db", ("pg_dump", "-f", "/var/lib/pg/dump.sql")),),
            after=(RunHook(("rm", "-f", "/srv/dump.sql")),),
        )
    }


def test_volume_hooks_with_a_selector_may_name_any_volume(tmp_path: Path) -> None:
    text = policy("""\
        match: {compose_project: shop}
        storage: local
        volume_hooks:
          shop_db: {before: [{run: [sync]}]}
        """)
    hooks = load_config(write(tmp_path, {"a.yaml": text})).policies["app"].volume_hooks
    assert hooks == {"shop_db": Hooks(before=(RunHook(("sync",)),))}


def test_hooks_for_a_volume_the_policy_does_not_list_are_refused(tmp_path: Path) -> None:
    text = policy("""\
        volumes: [app_db]
        storage: local
        volume_hooks:
          app_db: {before: [{run: [sync]}]}
          app_dbb: {before: [{run: [sync]}]}
        """)
    (problem,) = problems_of(write(tmp_path, {"a.yaml": text}))
    assert (problem.line, problem.key) == (12, "policies.app.volume_hooks.app_dbb")
    assert "'app_dbb' is not in this policy's volumes" in problem.message


def test_every_mistake_in_volume_hooks_is_reported(tmp_path: Path) -> None:
    text = policy("""\
        volumes: [app_db]
        storage: local
        volume_hooks:
          -bad: {before: []}
          app_db:
            before: [{exec: {container: db}}]
            during: []
        """)
    problems = problems_of(write(tmp_path, {"a.yaml": text}))
    assert [(problem.line, problem.key) for problem in problems] == [
        (11, "policies.app.volume_hooks.-bad"),
        (13, "policies.app.volume_hooks.app_db.before[0].exec.command"),
        (14, "policies.app.volume_hooks.app_db.during"),
    ]


def test_a_volume_s_hooks_run_inside_the_policy_s() -> None:
    def run(name: str) -> RunHook:
        return RunHook((name,))

    app = Policy(
        name="app",
        source=Source("a.yaml", 1),
        selector=VolumeSelector(names=("db", "files")),
        storages=(PolicyStorage("local"),),
        hooks=Hooks(before=(run("policy-before"),), after=(run("policy-after"),)),
        volume_hooks={"db": Hooks(before=(run("db-before"),), after=(run("db-after"),))},
    )
    assert app.hooks_for("db") == Hooks(
        before=(run("policy-before"), run("db-before")),
        after=(run("db-after"), run("policy-after")),
    )
    assert app.hooks_for("files") == app.hooks
