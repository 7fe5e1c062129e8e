"""The config of a machine that has none: one storage named by `--storage-url`, and a
policy for each policy name the storage holds archives of (any host's), so that `hosts`,
`fleet status`, `list`, `restore`, `export` and `drill` work on a new machine with only
the storage's address and credentials (docs/disaster-recovery.md).

Such a policy reads; it covers no volume of this machine and has no schedule. Its
encryption is only the identity that opens the archives (`--identity-file`): a restore
that would write a safety archive (`--force`) is refused, as it would need the policy's
recipients and a storage to write to.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from daemon.config.model import (
    AgeEncryption,
    Config,
    Policy,
    PolicyStorage,
    Source,
    StorageConfig,
    VolumeSelector,
)
from daemon.config.url import OPTION
from daemon.errors import StorageFailure
from daemon.repository.inventory import survey
from daemon.storage import open_store

# The commands that work from a storage URL alone.
READERS = frozenset({"hosts", "fleet", "list", "restore", "export", "drill"})


def recovery_config(
    storage: StorageConfig, identity_file: Path | None, helper_image: str | None
) -> Config:
    """Given the storage of `--storage-url`, the identity file and the helper image to use,
    return a config with a reading policy for each policy name the storage holds. Raise
    StorageFailure if the storage cannot be listed."""
    store = open_store(storage)
    try:
        namespaces = survey(store, records=False)
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise StorageFailure(
            f"cannot list storage {storage.name!r} ({store.describe()}): {reason}"
        ) from None
    names = sorted({policy for namespace in namespaces.values() for policy, _ in namespace.volumes})
    encryption = AgeEncryption(identity_file=identity_file) if identity_file else None
    source = Source(OPTION, 0)
    policies = {
        name: Policy(
            name=name,
            source=source,
            selector=VolumeSelector(),
            storages=(PolicyStorage(storage.name),),
            encryption=encryption,
        )
        for name in names
    }
    if helper_image is not None:
        policies = {
            name: replace(policy, helper_image=helper_image) for name, policy in policies.items()
        }
    return Config({storage.name: storage}, policies)
