"""Where images and reports live: local folders or ``s3://bucket/prefix``.

Core code talks to :class:`~airflow_privacy.storage.base.Storage` only, so the
same pipeline runs on a laptop folder and on object storage.
"""

from airflow_privacy.storage.base import (
    Storage,
    StorageError,
    TransientStorageError,
    UnsafeKeyError,
    open_storage,
)

__all__ = ["Storage", "StorageError", "TransientStorageError", "UnsafeKeyError", "open_storage"]
