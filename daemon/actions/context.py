"""What every action needs: the config, the state dir, and (lazily) the Docker engine."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import docker
import structlog

from daemon import __version__
from daemon.config.keys import (
    EncryptionError,
    Identities,
    Recipient,
    load_identities,
    load_recipients_file,
    parse_recipient,
)
from daemon.config.model import Config, Policy
from daemon.config.triggers import splay_offset
from daemon.engine.client import connect
from daemon.engine.journal import journals, restart_pending
from daemon.engine.leftovers import (
    half_restored_by,
    remove_half_restored_volume,
    start_removing_leftovers,
)
from daemon.errors import DockerUnavailable, OperationError, UsageError
from daemon.repository.hosts import HostRecord, PolicyRecord
from daemon.repository.store import Repository
from daemon.state.history import History
from daemon.state.locks import volume_lock
from daemon.storage import BlobStore, open_store
from daemon.system.cpus import available_cpus
from daemon.system.machine import machine_id

log = structlog.get_logger()


@dataclass
class Context:
    """`lock_wait` is how long an operation waits for a volume another one holds: 0 on the
    command line (fail at once, naming the holder), forever in the daemon, until `stopping`
    is set."""

    config: Config
    state_dir: Path
    lock_wait: float = 0.0
    stopping: threading.Event = field(default_factory=threading.Event)
    _api: docker.APIClient | None = field(default=None, repr=False)
    _cleanup: threading.Thread | None = field(default=None, repr=False)
    _stores: dict[str, BlobStore] = field(default_factory=dict, repr=False)

    def docker(self) -> docker.APIClient:
        """Return the engine client, connecting on first use; then first start again the
        containers a crashed volkeep left stopped (SPEC promise 3: before anything else),
        and start removing its leftovers beside the operation (`wait_for_cleanup`)."""
        if self._api is None:
            self._api = connect()
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            restart_pending(self._api, self.state_dir)
            self._cleanup = start_removing_leftovers(self.state_dir)
        return self._api

    def wait_for_cleanup(self) -> None:
        """Return once the removal of dead processes' leftovers that `docker` started has
        ended (at once if none was started), saying what it waits for."""
        if self._cleanup is None or not self._cleanup.is_alive():
            return
        log.info("waiting for the removal of what dead volkeep processes left behind")
        self._cleanup.join()

    def recover(self) -> None:
        """If a volkeep process may have died with containers stopped, connect to the engine
        now (see `docker`), whatever the command; if it does not answer, say so."""
        if journals(self.state_dir):
            try:
                self.docker()
            except DockerUnavailable as error:
                log.error(
                    "cannot start again the containers a dead volkeep stopped", error=str(error)
                )

    @contextmanager
    def volume_lock(self, volume: str, operation: str) -> Iterator[None]:
        """Hold the volume's lock for the block (see `lock_wait`).

        Raise OperationError if the volume stays busy, or volkeep stops while waiting.
        """
        with volume_lock(volume, operation, wait=self.lock_wait, cancel=self.stopping):
            # a dead restore's half-restored volume is this operation's business: gone first
            if half_restored_by(self.state_dir, volume) is not None:
                remove_half_restored_volume(self.docker(), self.state_dir, volume)
            yield

    @contextmanager
    def volume_locks(self, volumes: list[str], operation: str) -> Iterator[None]:
        """Hold the locks of several volumes for the block, taken in name order (so that
        two operations never wait for each other)."""
        with ExitStack() as held:
            for volume in sorted(set(volumes)):
                held.enter_context(self.volume_lock(volume, operation))
            yield

    @property
    def history(self) -> History:
        return History(self.state_dir)

    def policy(self, name: str) -> Policy:
        try:
            return self.config.policies[name]
        except KeyError:
            known = ", ".join(sorted(self.config.policies)) or "none"
            raise UsageError(f"unknown policy {name!r} (known: {known})") from None

    def compression_threads(self) -> int:
        """How many threads one backup compresses on: the CPUs this process may use (its
        affinity and cgroup quota), shared by the `max_parallel` operations that may run at
        once; at least 1."""
        return max(1, available_cpus() // self.config.daemon.max_parallel)

    @property
    def host(self) -> str:
        """The name this host writes its archives under (SPEC §4)."""
        return self.config.daemon.host or socket.gethostname()

    @property
    def splay(self) -> timedelta:
        """This host's offset on every cron schedule: a fixed point of `daemon.splay`'s
        window, chosen by the host name (`splay_offset`)."""
        return splay_offset(self.host, self.config.daemon.splay)

    def repositories(
        self, policy: Policy, *, storage: str | None = None, host: str | None = None
    ) -> list[Repository]:
        """Given a policy, return its storages' repositories in the order it lists them
        (only `storage` if given), holding this host's archives or `host`'s.

        Raise UsageError if the policy does not use `storage`.
        """
        names = policy.storage_names
        if storage is not None:
            if storage not in names:
                raise UsageError(
                    f"policy {policy.name!r} does not use storage {storage!r} "
                    f"(it uses: {', '.join(names)})"
                )
            names = (storage,)
        view = host or self.host
        if view != self.host:
            return [Repository(self.store(name), view, own=False) for name in names]
        return [
            Repository(self.store(name), view, own=True, marker=partial(self.host_record, name))
            for name in names
        ]

    def host_record(self, storage: str) -> HostRecord:
        """Given one of the config's storages, return the record this host claims its
        namespace there with: its machine, and the policies that use that storage, with
        their named volumes, schedules and whose archives their drills cover. Raise OSError
        if the machine id cannot be found or kept (`machine_id`)."""
        policies = {
            policy.name: PolicyRecord(
                volumes=policy.selector.names,
                schedule=policy.schedule.text if policy.schedule else None,
                drill_schedule=(
                    policy.drill.schedule.text if policy.drill and policy.drill.schedule else None
                ),
                timezone=policy.timezone,
                encrypted=policy.encryption is not None,
                drill_hosts=policy.drill.hosts if policy.drill else (),
            )
            for policy in self.config.policies.values()
            if storage in policy.storage_names
        }
        return HostRecord(self.host, machine_id(self.state_dir), __version__, policies)

    def recipients(self, policy: Policy) -> list[Recipient]:
        """Return the age recipients the policy's archives are encrypted to (none: the policy
        does not encrypt). Raise OperationError if the recipients file cannot be read."""
        settings = policy.encryption
        if settings is None:
            return []
        try:
            if settings.recipients_file is not None:
                return load_recipients_file(settings.recipients_file)
            return [parse_recipient(text) for text in settings.recipients]
        except EncryptionError as error:
            raise OperationError(str(error), policy=policy.name) from None

    def identities(self, policy: Policy) -> Identities | None:
        """Return the identities of the policy's identity file, or None if it names none.
        Warn if others may read the file. Raise OperationError if it cannot be read."""
        settings = policy.encryption
        if settings is None or settings.identity_file is None:
            return None
        try:
            identities = load_identities(settings.identity_file)
        except EncryptionError as error:
            raise OperationError(str(error), policy=policy.name) from None
        if identities.too_open:
            log.warning(
                "the identity file is readable by others: chmod 600 it",
                identity_file=str(settings.identity_file),
                mode=f"{identities.mode:04o}",
            )
        return identities

    def store(self, name: str) -> BlobStore:
        """Return the blob store of the storage `name`, opened once per context."""
        if name not in self._stores:
            self._stores[name] = open_store(self.config.storages[name])
        return self._stores[name]
