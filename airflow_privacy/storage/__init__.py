"""Where images and reports live: local folders or object storage (``s3://bucket/prefix``).

Core code talks to :class:`~airflow_privacy.storage.base.Storage` only, so the
same pipeline runs on a laptop folder and on object storage. :func:`open_storage`
picks the backend here, above the backends, so that the interface module
(:mod:`~airflow_privacy.storage.base`) never imports its own subclasses.
"""

from __future__ import annotations

import inspect
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

__all__ = [
    "Storage",
    "StorageError",
    "TransientStorageError",
    "UnsafeKeyError",
    "default_filesystem",
    "open_storage",
    "scheme_of",
]


def open_storage(uri: str, *, filesystem: Any = None) -> Storage:
    """A storage for a local path, a ``file://`` URI or an object-store URI.

    A plain path and ``file://`` are :class:`LocalStorage` (atomic rename, no escape
    through symlinks). Any other scheme (``s3://``, ``gs://``, ``abfs://`` ...) is an
    :class:`~airflow_privacy.storage.objectstore.ObjectStorage` over the fsspec
    ``filesystem`` given: the operators take it from Airflow's ``ObjectStoragePath``
    and a connection. Without one, ``fsspec.filesystem(scheme)`` serves it with the
    library's own credential chain (the CLI's path: s3fs reads the standard AWS
    variables and profiles). fsspec is imported only then: a local run, and DAG
    parsing, do not pay for it.

    A scheme nothing can serve (``gs://`` without gcsfs, a typo) is refused with a
    :class:`~airflow_privacy.exceptions.SettingsError` naming it and what to
    install: read as a local path it would be an empty folder, i.e. a run that
    silently finds no input.
    """
    scheme = scheme_of(uri)
    if scheme is None:
        return LocalStorage(uri)
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise SettingsError(f"file URI {uri!r} names a host; only local paths are supported")
        return LocalStorage(unquote(parts.path))
    from airflow_privacy.storage.objectstore import ObjectStorage

    if filesystem is None:
        filesystem = default_filesystem(scheme)
    return ObjectStorage(uri, filesystem)


#: The package that gives fsspec each common scheme, and the Airflow provider that
#: registers it for ObjectStoragePath: what an error message tells the user to install.
PACKAGES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "apache-airflow-providers-amazon[s3fs]"),
    "s3a": ("s3fs", "apache-airflow-providers-amazon[s3fs]"),
    "gs": ("gcsfs", "apache-airflow-providers-google"),
    "gcs": ("gcsfs", "apache-airflow-providers-google"),
    "abfs": ("adlfs", "apache-airflow-providers-microsoft-azure"),
    "abfss": ("adlfs", "apache-airflow-providers-microsoft-azure"),
    "az": ("adlfs", "apache-airflow-providers-microsoft-azure"),
}


#: Schemes fsspec knows that are not a place to keep a run's objects.
NOT_STORAGE = {
    "http": "a web server cannot be listed or written; use object storage",
    "https": "a web server cannot be listed or written; use object storage",
    "local": "use a plain path or file:// (local folders keep their own atomicity rules)",
}


def default_filesystem(scheme: str) -> Any:
    """``fsspec.filesystem(scheme)``, or a :class:`SettingsError` saying what is missing.

    Only schemes fsspec can open without options: a filesystem that needs a host or
    an account (``ftp://``, ``sftp://``) is for the operators, whose Airflow connection
    supplies them.
    """
    import fsspec

    if scheme in NOT_STORAGE:
        raise SettingsError(f"storage scheme {scheme + '://'!r} is not supported here: "
                            f"{NOT_STORAGE[scheme]}")
    package = PACKAGES.get(scheme, ("an fsspec implementation for it", ""))[0]
    try:
        cls = fsspec.get_filesystem_class(scheme)
        needed = [name for name, parameter in inspect.signature(cls.__init__).parameters.items()
                  if name != "self" and parameter.default is inspect.Parameter.empty
                  and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
        if needed:  # e.g. ftp's host: constructing it half would only fail later, noisily
            raise TypeError(f"{cls.__name__} needs {', '.join(needed)}")
        return fsspec.filesystem(scheme)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot serve it"
        if isinstance(exc, ImportError):
            reason = f"its filesystem is not installed; install {package}"
        elif isinstance(exc, ValueError):
            reason = "fsspec knows no filesystem for it"
        else:  # e.g. TypeError: a host or an account is needed
            reason = ("its filesystem cannot be opened without connection options "
                      f"({type(exc).__name__})")
        raise SettingsError(
            f"storage scheme {scheme + '://'!r} is not supported here: {reason} "
            f"(locations are local paths or object storage such as {', '.join(SCHEMES)})"
        ) from exc


SCHEMES = ("s3://", "gs://", "abfs://", "file://")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(uri: str) -> str | None:
    """The URI's scheme, lower-cased; None for a plain path."""
    found = _URI.match(uri)
    return found.group(1).lower() if found else None
