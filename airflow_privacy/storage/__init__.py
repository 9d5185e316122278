"""Where images and reports live: local folders or ``s3://bucket/prefix``.

Core code talks to :class:`~airflow_privacy.storage.base.Storage` only, so the
same pipeline runs on a laptop folder and on object storage. :func:`open_storage`
picks the backend here, above the backends, so that the interface module
(:mod:`~airflow_privacy.storage.base`) never imports its own subclasses.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow_privacy.exceptions import (
    SettingsError,
    StorageError,
    TransientStorageError,
    UnsafeKeyError,
)
from airflow_privacy.storage.base import Storage
from airflow_privacy.storage.local import LocalStorage

__all__ = ["Storage", "StorageError", "TransientStorageError", "UnsafeKeyError", "open_storage"]


def open_storage(uri: str, *, s3_client: Any = None) -> Storage:
    """A storage for a local path, a ``file://`` URI or an ``s3://bucket/prefix`` URI.

    ``s3_client`` is a boto3 S3 client; the operators build it from an Airflow
    connection, the CLI from the standard AWS credential chain. The S3 backend
    (and boto3) is imported only for an ``s3://`` URI: a local run, and DAG
    parsing, do not pay for botocore.

    Any other scheme (``gs://``, ``abfs://``, a typo) is refused with a
    :class:`~airflow_privacy.exceptions.SettingsError` naming it: read as a local
    path it would be an empty folder, i.e. a run that silently finds no input.
    """
    scheme = _scheme(uri)
    if scheme == "s3":
        from airflow_privacy.storage.s3 import S3Storage

        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        return S3Storage(uri, s3_client)
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise SettingsError(f"file URI {uri!r} names a host; only local paths are supported")
        return LocalStorage(unquote(parts.path))
    if scheme is not None:
        raise SettingsError(
            f"storage scheme {scheme + '://'!r} of {uri!r} is not supported; "
            f"use one of {', '.join(SCHEMES)} or a local path")
    return LocalStorage(uri)


SCHEMES = ("s3://", "file://")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _scheme(uri: str) -> str | None:
    """The URI's scheme, lower-cased; None for a plain path."""
    found = _URI.match(uri)
    return found.group(1).lower() if found else None
