"""Where archives live: one small blob-store interface (`BlobStore`), one module per backend.

What the blobs mean (archives, manifests, hosts) is the repository's (`daemon.repository.store`).
"""

from __future__ import annotations

from daemon.config.model import LocalStorageConfig, StorageConfig
from daemon.storage.base import BlobExists, BlobMissing, BlobStore, StoreUnavailable, Upload
from daemon.storage.local import LocalStore

__all__ = ["BlobExists", "BlobMissing", "BlobStore", "StoreUnavailable", "Upload", "open_store"]


def open_store(config: StorageConfig) -> BlobStore:
    """Given a storage's configuration, return the backend that serves it."""
    if isinstance(config, LocalStorageConfig):
        return LocalStore(config.name, config.path)
    from daemon.storage.s3 import S3Store  # boto3 is loaded only when an S3 storage is used

    return S3Store.from_config(config)
