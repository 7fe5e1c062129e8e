"""What every action needs: the config, the state dir, and (lazily) the Docker engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import docker

from daemon.config.model import Config, Policy
from daemon.docker.client import connect
from daemon.errors import UsageError
from daemon.recovery import remove_leftovers
from daemon.state import History
from daemon.storage import Storage, open_storage


@dataclass
class Context:
    config: Config
    state_dir: Path
    _api: docker.APIClient | None = field(default=None, repr=False)

    def docker(self) -> docker.APIClient:
        """Return the engine client, connecting (and removing crash leftovers) on first use."""
        if self._api is None:
            self._api = connect()
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            remove_leftovers(self._api)
        return self._api

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
