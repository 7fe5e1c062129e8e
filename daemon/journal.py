"""The stop journal: every container volkeep stops is started again (SPEC §5.3).

Before it stops the containers that use a volume, volkeep writes them to
`<state dir>/stopped/<volume>.json` and syncs it. It starts them again as soon as the
volume's tar stream ends, on every way out of the backup (a failure, SIGTERM), and, if
volkeep itself died, at the next start of any volkeep process that talks to the engine
(`restart_after_crash`). The journal is removed once all of them run again; a container
that cannot be started stays in it, to be tried again at the next start.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import docker
import requests
import structlog

from daemon.docker.client import engine_failure
from daemon.docker.containers import ContainerInfo, start_container, stop_container
from daemon.errors import OperationError
from daemon.owner import owner_is_gone, this_process
from daemon.state import Downtime, History
from daemon.storage.local import publish

log = structlog.get_logger()

JOURNAL_DIRECTORY = "stopped"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class StoppedContainer:
    id: str
    name: str
    since: datetime  # when it was stopped, or at the latest when the journal first listed it


@dataclass(frozen=True)
class Journal:
    """The containers stopped for one volume's backup, in the order to start them."""

    policy: str
    volume: str
    owner: str  # the process that stopped them (daemon.owner)
    containers: tuple[StoppedContainer, ...]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "policy": self.policy,
                "volume": self.volume,
                "owner": self.owner,
                "containers": [
                    {"id": c.id, "name": c.name, "since": c.since.isoformat()}
                    for c in self.containers
                ],
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Journal:
        """Given a journal file's bytes, return the Journal. Raise ValueError if unreadable."""
        try:
            raw = json.loads(data)
            containers = tuple(
                StoppedContainer(c["id"], c["name"], datetime.fromisoformat(c["since"]))
                for c in raw["containers"]
            )
            return cls(raw["policy"], raw["volume"], raw["owner"], containers)
        except (KeyError, TypeError, ValueError) as error:  # ValueError: bad JSON or time
            raise ValueError(f"unreadable stop journal: {error!r}") from None


def journal_path(state_dir: Path, volume: str) -> Path:
    return state_dir / JOURNAL_DIRECTORY / f"{volume}.json"


def write_journal(state_dir: Path, journal: Journal) -> Journal:
    """Given the containers about to be stopped, write and sync the volume's journal; return
    what it now lists. Containers an earlier journal of the volume still lists (a dead
    volkeep's, that could not be started again) stay in it, to be started last."""
    path = journal_path(state_dir, journal.volume)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    listed = {container.id for container in journal.containers}
    earlier = read_journal(path)
    if earlier is not None:
        kept = tuple(c for c in earlier.containers if c.id not in listed)
        journal = Journal(journal.policy, journal.volume, journal.owner, journal.containers + kept)
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "wb") as file:
        file.write(journal.to_json())
        file.flush()
        os.fsync(file.fileno())
    publish(temporary, path)
    return journal


def read_journal(path: Path) -> Journal | None:
    """Given a journal's path, return the Journal, or None if there is none or it is
    unreadable (which is logged: atomic writes make that a disk fault)."""
    try:
        return Journal.from_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.error("cannot read a stop journal", journal=str(path), error=str(error))
        return None


def start_again(
    api: docker.APIClient, state_dir: Path, journal: Journal, stopped: dict[str, datetime]
) -> list[str]:
    """Start the journal's containers in its order, then record the downtime of each in the
    run history (`stopped`: the measured stop times). Remove the journal if all of them run
    again; return the names of those that could not be started."""
    failed = []
    downtimes = []
    for container in journal.containers:
        with structlog.contextvars.bound_contextvars(container=container.name):
            try:
                outcome = start_container(api, container.id)
            except (docker.errors.APIError, requests.RequestException) as error:
                log.error("cannot start the container again", error=engine_failure(error).message)
                failed.append(container.name)
                continue
            if outcome == "missing":
                log.warning("the container was removed while stopped; nothing to start")
            elif outcome == "started":
                since = stopped.get(container.id, container.since)
                downtime = Downtime(
                    journal.policy, journal.volume, container.name, since, datetime.now(UTC)
                )
                downtimes.append(downtime)
                log.info("container started again", downtime_seconds=round(downtime.seconds, 2))
    if not failed:
        journal_path(state_dir, journal.volume).unlink(missing_ok=True)
    try:
        history = History(state_dir)
        for downtime in downtimes:
            history.record_downtime(downtime)
    except (OSError, sqlite3.Error) as error:
        log.error("cannot record the downtime in the run history", error=str(error))
    return failed


@contextmanager
def containers_stopped(
    api: docker.APIClient,
    state_dir: Path,
    policy: str,
    volume: str,
    containers: Sequence[ContainerInfo],
    timeout: float,
) -> Iterator[Callable[[], None]]:
    """Given containers in stop order, journal them, stop them for the block and yield the
    function that starts them again (later calls do nothing). They are started again on
    every way out of the block, whatever ended it.

    Raise OperationError if a container cannot be stopped (the others are started again
    first) or, once the block succeeded, if one could not be started again.
    """
    if not containers:
        yield lambda: None
        return
    now = datetime.now(UTC)
    listed = tuple(StoppedContainer(c.id, c.name, now) for c in reversed(containers))
    try:
        journal = write_journal(state_dir, Journal(policy, volume, this_process(), listed))
    except OSError as error:
        raise OperationError(
            f"cannot write the stop journal in {state_dir}: {error.strerror or error}; "
            "nothing was stopped"
        ) from None
    stopped: dict[str, datetime] = {}
    failed: list[str] = []
    done = False

    def start_them_again() -> None:
        nonlocal done
        if not done:
            failed.extend(start_again(api, state_dir, journal, stopped))
            done = True

    try:
        for container in containers:
            stopped[container.id] = datetime.now(UTC)  # downtime includes its shutdown
            _stop(api, container, timeout)
        yield start_them_again
    finally:
        start_them_again()
    if failed:
        raise OperationError(f"could not start again: {', '.join(failed)} (see the log)")


def _stop(api: docker.APIClient, container: ContainerInfo, timeout: float) -> None:
    """Stop one container, logging how long it took. Raise OperationError if it cannot be."""
    with structlog.contextvars.bound_contextvars(container=container.name):
        began = time.monotonic()
        try:
            stop_container(api, container, timeout)
        except docker.errors.NotFound:
            log.warning("the container was removed before it could be stopped")
            return
        except (docker.errors.APIError, requests.RequestException) as error:
            raise OperationError(
                f"cannot stop container {container.name!r}: {engine_failure(error).message}"
            ) from None
        log.info("container stopped", seconds=round(time.monotonic() - began, 2))


def journals(state_dir: Path) -> list[Path]:
    """Return the paths of the stop journals in the state dir: backups running or crashed."""
    directory = state_dir / JOURNAL_DIRECTORY
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def restart_after_crash(api: docker.APIClient, state_dir: Path) -> None:
    """Start again the containers listed in the journals of volkeep processes that died."""
    for path in journals(state_dir):
        journal = read_journal(path)
        if journal is None or not owner_is_gone(journal.owner):
            continue  # unreadable (logged), or its backup is still running
        with structlog.contextvars.bound_contextvars(policy=journal.policy, volume=journal.volume):
            names = ", ".join(c.name for c in journal.containers)
            log.warning("a volkeep process died with containers stopped", containers=names)
            start_again(api, state_dir, journal, {})
