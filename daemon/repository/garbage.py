"""Garbage: this host's archive files that no committed manifest references (SPEC promise 15)."""

from __future__ import annotations

from daemon.repository.layout import MANIFEST_SUFFIX, volume_directory
from daemon.repository.store import Repository


def remove_garbage(repository: Repository, policy: str, volume: str) -> list[str]:
    """Remove this host's uploads of the volume never completed, and its archive files
    without a manifest; return their keys. Hold the volume's lock: a running backup's
    files look the same. Raise OSError."""
    repository.require_own()
    removed = []
    for namespace in repository.namespaces():
        removed += repository.store.abort_incomplete(volume_directory(namespace, policy, volume))
    for key, suffixes in repository.files(policy, volume).items():
        if MANIFEST_SUFFIX in suffixes:
            continue
        for suffix in sorted(suffixes):
            repository.store.delete(key.blob(suffix))
            removed.append(key.blob(suffix))
    return removed
