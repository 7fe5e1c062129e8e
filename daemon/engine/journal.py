"""The stop journal: every container volkeep stops is started again (SPEC §5.3).

Before it stops the containers that use a volume, volkeep writes them to
`<state dir>/stopped/<volume>.json` and syncs it. It starts them again as soon as the
volume's tar stream ends, on every way out of the backup (a failure, SIGTERM), trying each
start a few times over a few seconds (a container whose network or dependency is not back
yet). The journal is removed once all of them run again; a container that still cannot be
started stays in it.

The containers of a Swarm service are not stopped but their service scaled to 0 replicas
(daemon.engine.swarm): the journal lists the service with the count to scale it back to,
before it is scaled down, and starting again means scaling it back.

A journal is written, read and removed only under its volume's lock (daemon.state.locks), so a
journal whose lock is free is abandoned, whoever wrote it: a volkeep that died, or an
operation that ended with a container it could not start. `restart_pending` starts those
containers again; it runs whenever volkeep connects to the engine and before each job.

A journal that cannot be read (a disk fault: writes are atomic) may list containers still
stopped, so it is never overwritten nor removed: it is kept aside as
`<volume>.json.unreadable-<time>`, an error names it, and volkeep stops no container for
that volume while it is there. The operator checks those containers and removes the file.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import docker
import requests
import structlog

from daemon.engine.client import engine_failure
from daemon.engine.containers import (
    ContainerInfo,
    StartOutcome,
    start_container,
    stop_container,
    stop_waves,
)
from daemon.engine.swarm import (
    Scaling,
    plan_scaling,
    refuse_unscalable,
    scale,
    scale_back,
    wait_until_stopped,
)
from daemon.errors import OperationError
from daemon.state.history import Downtime, History
from daemon.state.locks import volume_lock
from daemon.system.files import publish
from daemon.system.owner import owner_is_gone, this_process

log = structlog.get_logger()

JOURNAL_DIRECTORY = "stopped"
FORMAT_VERSION = 1
START_RETRY_DELAYS = (0.5, 1.0, 2.0)  # seconds before each further attempt to start one
UNREADABLE = ".unreadable-"  # between a journal's name and the time it was kept aside


@dataclass(frozen=True)
class StoppedContainer:
    id: str
    name: str
    since: datetime  # when it was stopped, or at the latest when the journal first listed it


@dataclass(frozen=True)
class ScaledService:
    """A Swarm service scaled to 0 replicas for a backup, and the count to scale it back to."""

    id: str
    name: str
    replicas: int
    since: datetime  # when it was scaled down, or at the latest when the journal listed it


@dataclass(frozen=True)
class Journal:
    """The containers stopped (and Swarm services scaled to 0) for one volume's backup, in
    the order to start them: containers first, then services."""

    policy: str
    volume: str
    owner: str  # the process that stopped them (daemon.system.owner)
    containers: tuple[StoppedContainer, ...]
    services: tuple[ScaledService, ...] = ()

    def merged(self, earlier: Journal) -> Journal:
        """Return this journal with what `earlier` lists and this one does not, last."""
        containers = {c.id for c in self.containers}
        services = {s.id for s in self.services}
        return Journal(
            self.policy,
            self.volume,
            self.owner,
            self.containers + tuple(c for c in earlier.containers if c.id not in containers),
            self.services + tuple(s for s in earlier.services if s.id not in services),
        )

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
                "services": [
                    {
                        "id": s.id,
                        "name": s.name,
                        "replicas": s.replicas,
                        "since": s.since.isoformat(),
                    }
                    for s in self.services
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
            services = tuple(  # journals written before Swarm services have none
                ScaledService(
                    s["id"], s["name"], int(s["replicas"]), datetime.fromisoformat(s["since"])
                )
                for s in raw.get("services", [])
            )
            return cls(raw["policy"], raw["volume"], raw["owner"], containers, services)
        except (KeyError, TypeError, ValueError) as error:  # ValueError: bad JSON or time
            raise ValueError(f"unreadable stop journal: {error!r}") from None


class UnreadableJournal(Exception):
    """A stop journal that is there but cannot be read or understood."""


def journal_path(state_dir: Path, volume: str) -> Path:
    return state_dir / JOURNAL_DIRECTORY / f"{volume}.json"


def write_journal(state_dir: Path, journal: Journal) -> Journal:
    """Given the containers about to be stopped, write and sync the volume's journal; return
    what it now lists. Containers an earlier journal of the volume still lists (a dead
    volkeep's, that could not be started again) stay in it, to be started last.

    Raise OperationError, stopping nothing, if an unreadable journal of the volume is kept
    aside (an unreadable journal found now is kept aside first); OSError if the journal
    cannot be written.
    """
    path = journal_path(state_dir, journal.volume)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    unreadable = unreadable_journals(state_dir, journal.volume)
    try:
        earlier = read_journal(path)
    except UnreadableJournal as error:
        earlier = None
        unreadable.insert(0, set_aside(path, error))
    if unreadable:
        raise OperationError(
            f"volkeep stops no container for this volume while {unreadable[0]} exists: that "
            "stop journal was unreadable and the containers it listed may still be stopped; "
            "start them if they should run, then remove the file (nothing was stopped)",
            volume=journal.volume,
        )
    if earlier is not None:
        journal = journal.merged(earlier)
    _write(path, journal)
    return journal


def _write(path: Path, journal: Journal) -> None:
    """Write the journal to a temporary file, sync it and move it into place."""
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "wb") as file:
        file.write(journal.to_json())
        file.flush()
        os.fsync(file.fileno())
    publish(temporary, path)


def read_journal(path: Path) -> Journal | None:
    """Given a journal's path, return the Journal, or None if there is none.

    Raise UnreadableJournal if it cannot be read or understood.
    """
    try:
        return Journal.from_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise UnreadableJournal(str(error)) from None


def set_aside(path: Path, reason: UnreadableJournal) -> Path:
    """Keep an unreadable journal as `<name>.unreadable-<time>`, where nothing overwrites it,
    and log an error naming it; return where it is now (where it was, if it cannot be
    moved)."""
    kept = path.with_name(f"{path.name}{UNREADABLE}{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}")
    try:
        os.link(path, kept)  # never replaces a file
        path.unlink()
    except OSError as error:
        log.error(
            "a stop journal is unreadable and cannot be kept aside; remove it once the "
            "containers it lists run again",
            journal=str(path),
            reason=str(reason),
            error=str(error),
        )
        return path
    log.error(
        "a stop journal is unreadable: the containers it lists may still be stopped; it is "
        "kept aside, and no container of the volume is stopped until it is removed",
        journal=str(kept),
        reason=str(reason),
    )
    return kept


def unreadable_journals(state_dir: Path, volume: str) -> list[Path]:
    """Return the paths of the volume's unreadable journals kept aside."""
    directory = state_dir / JOURNAL_DIRECTORY
    if not directory.is_dir():
        return []
    name = journal_path(state_dir, volume).name
    return sorted(
        path for path in directory.iterdir() if path.name.startswith(f"{name}{UNREADABLE}")
    )


def start_again(
    api: docker.APIClient, state_dir: Path, journal: Journal, stopped: dict[str, datetime]
) -> list[str]:
    """Start the journal's containers in its order, then scale its Swarm services back (each
    tried again after each of START_RETRY_DELAYS), then record the downtime of each in the
    run history (`stopped`: the measured stop times, by id). Remove the journal if all of
    them run again, else leave in it only those that do not; return their names. Hold the
    volume's lock."""
    downtimes: list[Downtime] = []
    containers = tuple(
        container
        for container in journal.containers
        if not _brought_back(
            functools.partial(start_container, api, container.id),
            CONTAINER_WORDS,
            journal,
            container.name,
            stopped.get(container.id, container.since),
            downtimes,
        )
    )
    services = tuple(
        service
        for service in journal.services
        if not _brought_back(
            functools.partial(scale_back, api, service.id, service.replicas),
            SERVICE_WORDS,
            journal,
            service.name,
            stopped.get(service.id, service.since),
            downtimes,
        )
    )
    path = journal_path(state_dir, journal.volume)
    try:
        if containers or services:
            _write(
                path, Journal(journal.policy, journal.volume, journal.owner, containers, services)
            )
        else:
            path.unlink(missing_ok=True)
    except OSError as error:  # the journal as it was still lists them all: harmless
        log.error("cannot update the stop journal", journal=str(path), error=str(error))
    try:
        history = History(state_dir)
        for downtime in downtimes:
            history.record_downtime(downtime)
    except (OSError, sqlite3.Error) as error:
        log.error("cannot record the downtime in the run history", error=str(error))
    return [container.name for container in containers] + [
        f"Swarm service {service.name}" for service in services
    ]


@dataclass(frozen=True)
class _Words:
    """How the log tells of bringing one thing of a stop journal back."""

    key: str  # the log key that names it
    cannot: str
    retrying: str
    missing: str
    done: str


CONTAINER_WORDS = _Words(
    "container",
    "cannot start the container again",
    "cannot start the container again yet",
    "the container was removed while stopped; nothing to start",
    "container started again",
)
SERVICE_WORDS = _Words(
    "service",
    "cannot scale the Swarm service back",
    "cannot scale the Swarm service back yet",
    "the Swarm service was removed while scaled to 0; nothing to scale back",
    "Swarm service scaled back",
)


def _brought_back(
    bring_back: Callable[[], StartOutcome],
    words: _Words,
    journal: Journal,
    name: str,
    since: datetime,
    downtimes: list[Downtime],
) -> bool:
    """Start a container or scale a service back (`bring_back`), trying again after each of
    START_RETRY_DELAYS while the engine refuses; log the outcome and add its downtime to
    `downtimes`. Return whether it no longer needs volkeep (it runs, or is gone)."""
    with structlog.contextvars.bound_contextvars(**{words.key: name}):
        for delay in (*START_RETRY_DELAYS, None):
            try:
                outcome = bring_back()
                break
            except (docker.errors.APIError, requests.RequestException) as error:
                message = engine_failure(error).message
                if delay is None:
                    log.error(words.cannot, error=message)
                    return False
                log.warning(words.retrying, error=message, retry_in_seconds=delay)
                time.sleep(delay)
        if outcome == "missing":
            log.warning(words.missing)
        elif outcome == "started":
            downtime = Downtime(journal.policy, journal.volume, name, since, datetime.now(UTC))
            downtimes.append(downtime)
            log.info(words.done, downtime_seconds=round(downtime.seconds, 2))
    return True


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
    every way out of the block, whatever ended it. The containers of a Swarm service are
    not stopped: their service is scaled to 0 replicas, and back (daemon.engine.swarm).

    Raise OperationError, stopping nothing, if volkeep cannot scale such a service here;
    if a container cannot be stopped or a service scaled down (the others are started
    again first); once the block succeeded, if one could not be started again.
    """
    if not containers:
        yield lambda: None
        return
    try:
        plain, scalings = plan_scaling(api, containers)
    except (docker.errors.APIError, requests.RequestException) as error:
        raise OperationError(
            f"cannot inspect the Swarm services of the containers: "
            f"{engine_failure(error).message}; nothing was stopped"
        ) from None
    refuse_unscalable(scalings, volume)
    now = datetime.now(UTC)
    listed = tuple(StoppedContainer(c.id, c.name, now) for c in reversed(plain))
    scaled = tuple(ScaledService(s.id, s.name, s.replicas, now) for s in scalings if s.replicas)
    try:
        journal = write_journal(state_dir, Journal(policy, volume, this_process(), listed, scaled))
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
        _scale_to_zero(api, scalings, stopped)
        _stop_all(api, plain, timeout, stopped)
        yield start_them_again
    finally:
        start_them_again()
    if failed:
        raise OperationError(f"could not start again: {', '.join(failed)} (see the log)")


def _scale_to_zero(
    api: docker.APIClient, scalings: Sequence[Scaling], stopped: dict[str, datetime]
) -> None:
    """Scale the Swarm services to 0 replicas, then wait until their containers on this
    engine have stopped; record in `stopped` when each was scaled down.

    Raise OperationError naming the service that could not be scaled down or stopped.
    """
    for scaling in scalings:
        with structlog.contextvars.bound_contextvars(service=scaling.name):
            began = time.monotonic()
            stopped[scaling.id] = datetime.now(UTC)  # downtime includes its shutdown
            try:
                scale(api, scaling.id, 0)
                wait_until_stopped(api, scaling)
            except (docker.errors.APIError, requests.RequestException) as error:
                raise OperationError(
                    f"cannot scale Swarm service {scaling.name} to 0: "
                    f"{engine_failure(error).message}"
                ) from None
            log.info(
                "Swarm service scaled to 0",
                replicas=scaling.replicas,
                seconds=round(time.monotonic() - began, 2),
            )


def _stop_all(
    api: docker.APIClient,
    containers: Sequence[ContainerInfo],
    timeout: float,
    stopped: dict[str, datetime],
) -> None:
    """Stop the containers wave after wave (`stop_waves`: dependents first), those of a wave
    at the same time, so that containers slow to stop cost one stop timeout, not one each;
    record in `stopped` when each stop began. Every stop under way ends before this returns
    or raises (a container must not be stopped after it was started again).

    Raise OperationError naming the first container of a wave that could not be stopped.
    """
    for wave in stop_waves(containers):
        with ThreadPoolExecutor(len(wave), thread_name_prefix="volkeep-stop") as pool:
            stops = []
            for container in wave:
                stopped[container.id] = datetime.now(UTC)  # downtime includes its shutdown
                # each thread logs with this one's policy and volume
                context = contextvars.copy_context()
                stops.append(pool.submit(context.run, _stop, api, container, timeout))
        for stop in stops:
            stop.result()


def _stop(api: docker.APIClient, container: ContainerInfo, timeout: float) -> None:
    """Stop one container, logging how long it took and, if it had to be killed, saying so
    by name. Raise OperationError if it cannot be stopped."""
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
        seconds = round(time.monotonic() - began, 2)
        if seconds >= timeout:  # the engine sends SIGKILL once the timeout has passed
            log.warning(
                "container did not stop within its stop timeout; killed",
                stop_timeout_seconds=timeout,
                seconds=seconds,
            )
        else:
            log.info("container stopped", seconds=seconds)


def journals(state_dir: Path) -> list[Path]:
    """Return the paths of the stop journals in the state dir: backups running or crashed."""
    directory = state_dir / JOURNAL_DIRECTORY
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def restart_pending(api: docker.APIClient, state_dir: Path) -> None:
    """Start again the containers of every abandoned stop journal: one whose volume lock is
    free, whoever wrote it. A journal whose lock is held belongs to an operation at work,
    which starts its containers itself."""
    for path in journals(state_dir):
        volume = path.name.removesuffix(".json")
        with ExitStack() as held:
            try:
                held.enter_context(volume_lock(volume, "start of stopped containers"))
            except OperationError:
                continue  # an operation holds the volume
            try:
                journal = read_journal(path)
            except UnreadableJournal as error:
                set_aside(path, error)
                continue
            if journal is not None:  # else it is gone: its operation ended meanwhile
                _restart_abandoned(api, state_dir, journal)


def _restart_abandoned(api: docker.APIClient, state_dir: Path, journal: Journal) -> None:
    with structlog.contextvars.bound_contextvars(policy=journal.policy, volume=journal.volume):
        names = ", ".join(
            [c.name for c in journal.containers]
            + [f"Swarm service {s.name}" for s in journal.services]
        )
        if owner_is_gone(journal.owner):
            log.warning("a volkeep process died with containers stopped", containers=names)
        else:
            log.warning(
                "an earlier operation left containers stopped",
                containers=names,
                stopped_by=journal.owner,
            )
        start_again(api, state_dir, journal, {})
