"""Which containers a backup stops and in what order: pure decisions over listed containers."""

from __future__ import annotations

from daemon.engine.containers import ContainerInfo, containers_to_stop, stop_order, stop_waves

STOP = "volkeep.stop-during-backup"


def container(
    name: str, running: bool = True, depends_on: str = "", project: str = "shop", **labels: str
) -> ContainerInfo:
    compose = {"com.docker.compose.project": project, "com.docker.compose.service": name}
    if depends_on:
        compose["com.docker.compose.depends_on"] = depends_on
    return ContainerInfo(f"id-{project}-{name}", name, running, compose | labels)


def names(containers: list[ContainerInfo]) -> list[str]:
    return [c.name for c in containers]


def test_dependents_stop_before_what_they_depend_on() -> None:
    db = container("db")
    cache = container("cache")
    api = container("api", depends_on="db:service_healthy:true,cache:service_started:false")
    web = container("web", depends_on="api:service_started:false")
    assert names(stop_order([db, cache, api, web])) == ["web", "api", "db", "cache"]
    assert names(stop_order([web, api, cache, db])) == ["web", "api", "cache", "db"]


def test_dependencies_only_count_inside_one_compose_project() -> None:
    db = container("db", project="one")
    web = container("web", depends_on="db:service_started:false", project="two")
    assert names(stop_order([db, web])) == ["db", "web"]


def test_containers_without_compose_labels_keep_their_order() -> None:
    plain = [ContainerInfo(f"id{n}", n, True) for n in ("b", "a", "c")]
    assert names(stop_order(plain)) == ["b", "a", "c"]


def test_a_dependency_cycle_still_lists_every_container_once() -> None:
    a = container("a", depends_on="b:service_started:false")
    b = container("b", depends_on="a:service_started:false")
    c = container("c", depends_on="a:service_started:false")
    ordered = names(stop_order([a, b, c]))
    assert sorted(ordered) == ["a", "b", "c"]
    assert ordered.index("c") < ordered.index("a")


def test_labels_opt_in_and_out_whatever_the_policy_says() -> None:
    opted_in = container("in", **{STOP: "true"})
    opted_out = container("out", **{STOP: "FALSE"})
    unlabelled = container("plain")
    listed = [opted_in, opted_out, unlabelled]
    assert names(containers_to_stop(listed, policy_default=False)) == ["in"]
    assert names(containers_to_stop(listed, policy_default=True)) == ["in", "plain"]


def test_an_unreadable_label_leaves_the_choice_to_the_policy() -> None:
    odd = container("odd", **{STOP: "yes please"})
    assert names(containers_to_stop([odd], policy_default=True)) == ["odd"]
    assert names(containers_to_stop([odd], policy_default=False)) == []


def test_containers_not_running_are_never_stopped() -> None:
    exited = container("exited", running=False, **{STOP: "true"})
    assert containers_to_stop([exited], policy_default=True) == []


def test_containers_stop_together_unless_one_depends_on_another() -> None:
    db = container("db")
    cache = container("cache")
    api = container("api", depends_on="db:service_healthy:true,cache:service_started:false")
    web = container("web", depends_on="api:service_started:false")
    worker = container("worker", depends_on="db:service_started:false")
    plain = ContainerInfo("id-plain", "plain", True)
    waves = stop_waves(stop_order([db, cache, api, web, worker, plain]))
    assert [names(wave) for wave in waves] == [
        ["web", "worker", "plain"],
        ["api"],
        ["db", "cache"],
    ]
    assert stop_waves([]) == []
