"""Helper containers without an engine: the host config they get, and that every way out of
`helper_container` removes what it made."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, cast

import docker
import pytest
from structlog.testing import capture_logs

from daemon.engine.helpers import (
    READ_CAPABILITIES,
    HelperOutput,
    Mount,
    helper_container,
    helper_host_config,
    kill_helpers,
    put_archive,
)
from daemon.errors import OperationError

OFFLINE = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")


def test_a_helper_has_a_read_only_root_and_pids_and_memory_limits_and_nothing_else() -> None:
    mounts = [Mount("app_db", "/src"), Mount("scratch", "/dst", read_only=False)]
    host = helper_host_config(OFFLINE, mounts, READ_CAPABILITIES)
    assert host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] == 64
    assert host["Memory"] == 256 << 20
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["DAC_READ_SEARCH"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["LogConfig"] == {"Type": "none", "Config": {}}
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in host["Mounts"]] == [
        ("app_db", "/src", True),
        ("scratch", "/dst", False),
    ]


class Interrupted(BaseException):
    """A signal's exception (SIGTERM, Ctrl-C) landing wherever the helper's code is."""


class Answer(dict[str, str]):
    """The engine's answer to a create, read just as the signal lands."""

    def __getitem__(self, key: str) -> str:
        raise Interrupted


class FakeEngine:
    """Helper containers by name; each engine call behaves as told."""

    def __init__(self) -> None:
        self.containers: dict[str, str] = {}  # name: state
        self.interrupt_create: str | None = None  # "while creating", "as it answers"
        self.remove_failure: Exception | None = None
        self.while_uploading: list[Any] = []

    def create_host_config(self, **options: Any) -> dict[str, Any]:
        return OFFLINE.create_host_config(**options)

    def create_container(self, image: str, command: list[str], **options: Any) -> Any:
        self.containers[options["name"]] = "created"
        if self.interrupt_create == "while creating":
            raise Interrupted
        if self.interrupt_create == "as it answers":
            return Answer()
        return {"Id": f"id-of-{options['name']}"}

    def _name(self, container: str) -> str:
        return container.removeprefix("id-of-")

    def remove_container(self, container: str, force: bool, v: bool) -> None:
        assert force
        if self.remove_failure is not None:
            raise self.remove_failure
        if self.containers.pop(self._name(container), None) is None:
            raise docker.errors.NotFound("no such container")

    def kill(self, container: str) -> None:
        state = self.containers.get(self._name(container))
        assert state != "extracting", "the engine would hold the kill until the upload ends"
        if state != "running":
            raise docker.errors.APIError("409 Client Error: Conflict (not running)")
        self.containers[self._name(container)] = "exited"

    def start(self, container: str) -> None:
        self.containers[self._name(container)] = "running"

    def put_archive(self, container: str, path: str, data: Iterable[bytes]) -> bool:
        name = self._name(container)
        self.containers[name] = "extracting"
        try:
            for number, _ in enumerate(data):
                if number == 1:
                    for action in self.while_uploading:
                        action()
        finally:
            self.containers[name] = "created"
        return True


def chunks(count: int) -> Iterator[bytes]:
    yield from (bytes(512) for _ in range(count))


@pytest.mark.parametrize(
    "way_out", ["the block ends", "the block fails", "while creating", "as it answers"]
)
def test_every_way_out_of_a_helper_block_removes_the_helper(way_out: str) -> None:
    engine = FakeEngine()
    engine.interrupt_create = way_out if way_out in ("while creating", "as it answers") else None
    with (
        contextlib.suppress(Interrupted, RuntimeError),
        helper_container(cast(Any, engine), "image", ["true"], []),
    ):
        assert list(engine.containers.values()) == ["created"]
        if way_out == "the block fails":
            raise RuntimeError("the restore broke")
    assert engine.containers == {}
    assert kill_helpers(cast(Any, engine)) == 0  # no helper is left live either


def test_a_helper_the_engine_cannot_remove_does_not_hide_what_ended_the_block() -> None:
    engine = FakeEngine()
    engine.remove_failure = docker.errors.APIError("500 Server Error: device busy")
    with (
        capture_logs() as logged,
        pytest.raises(RuntimeError, match="the restore broke"),
        helper_container(cast(Any, engine), "image", ["true"], []),
    ):
        raise RuntimeError("the restore broke")
    (error,) = [e for e in logged if e["log_level"] == "error"]
    assert error["container"] in engine.containers


def test_stopping_aborts_an_upload_into_a_helper_without_waiting_for_the_engine() -> None:
    engine = FakeEngine()
    ended: list[int] = []
    engine.while_uploading.append(lambda: ended.append(kill_helpers(cast(Any, engine))))
    with (
        pytest.raises(OperationError, match="was cancelled: volkeep is stopping"),
        helper_container(cast(Any, engine), "image", ["true"], []) as helper,
    ):
        put_archive(cast(Any, engine), helper, "/dst", chunks(1000))
    assert ended == [1]
    assert engine.containers == {}


def test_a_helper_cancelled_before_it_starts_never_starts() -> None:
    engine = FakeEngine()
    with (
        pytest.raises(OperationError, match="was cancelled"),
        helper_container(cast(Any, engine), "image", ["tar", "c", "."], []) as helper,
    ):
        assert kill_helpers(cast(Any, engine)) == 0  # created, not running: nothing to kill
        HelperOutput(cast(Any, engine), helper)
    assert engine.containers == {}
