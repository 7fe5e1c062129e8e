"""Where archives live. One small interface (`Storage`), one module per backend."""

from __future__ import annotations

from daemon.config.model import StorageConfig
from daemon.storage.base import ArchiveKey, ArchiveUpload, Storage
from daemon.storage.local import LocalStorage

__all__ = ["ArchiveKey", "ArchiveUpload", "Storage", "open_storage"]


def open_storage(config: StorageConfig) -> Storage:
    """Given a storage's configuration, return the backend that serves it."""
    return LocalStorage(config.name, config.path)
