"""Where images and reports live: local folders or ``s3://bucket/prefix``.

Core code talks to :class:`~airflow_privacy.storage.base.Storage` only, so the
same pipeline runs on a laptop folder and on object storage. :func:`open_storage`
picks the backend here, above the backends, so that the interface module
(:mod:`~airflow_privacy.storage.base`) never imports its own subclasses.
"""

from __future__ import annotations

from typing import Any

from airflow_privacy.exceptions import StorageError, TransientStorageError, UnsafeKeyError
from airflow_privacy.storage.base import Storage
from airflow_privacy.storage.local import LocalStorage

__all__ = ["Storage", "StorageError", "TransientStorageError", "UnsafeKeyError", "open_storage"]


def open_storage(uri: str, *, s3_client: Any = None) -> Storage:
    """A storage for a local path or an ``s3://bucket/prefix`` URI.

    ``s3_client`` is a boto3 S3 client; the operators build it from an Airflow
    connection, the CLI from the standard AWS credential chain. The S3 backend
    (and boto3) is imported only for an ``s3://`` URI: a local run, and DAG
    parsing, do not pay for botocore.
    """
    if uri.startswith("s3://"):
        from airflow_privacy.storage.s3 import S3Storage

        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        return S3Storage(uri, s3_client)
    return LocalStorage(uri)
