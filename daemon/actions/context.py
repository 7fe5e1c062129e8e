"""What every action needs: the config, the state dir, and (lazily) the Docker engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker
import structlog

from daemon.config.model import Config, Policy
from daemon.docker.client import connect
from daemon.errors import DockerUnavailable, UsageError
from daemon.journal import journals, restart_after_crash
from daemon.locks import volume_lock
from daemon.recovery import remove_leftovers
from daemon.state import History
from daemon.storage import Storage, open_storage

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

    def docker(self) -> docker.APIClient:
        """Return the engine client, connecting on first use; then first start again the
        containers a crashed volkeep left stopped, and remove its leftovers."""
        if self._api is None:
            self._api = connect()
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            restart_after_crash(self._api, self.state_dir)
            remove_leftovers(self._api)
        return self._api

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
        with volume_lock(
            self.state_dir, volume, operation, wait=self.lock_wait, cancel=self.stopping
        ):
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

    def storage(self, policy: Policy) -> Storage:
        return open_storage(self.config.storages[policy.storage])
