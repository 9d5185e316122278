"""The storage interface and key safety rules shared by every backend.

Keys are relative POSIX paths below a root. A key that is absolute, contains
``..`` or a NUL byte, or is empty is refused before any I/O: nothing is ever
read or written outside a configured root.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import PurePosixPath

from airflow_privacy.exceptions import StorageError, TransientStorageError, UnsafeKeyError

__all__ = ["Storage", "StorageError", "TransientStorageError", "UnsafeKeyError", "check_key"]


def check_key(key: str) -> str:
    if not key or "\x00" in key:
        raise UnsafeKeyError(f"invalid key {key!r}")
    if key.startswith("/") or key.startswith("\\"):
        raise UnsafeKeyError(f"absolute key {key!r} is not allowed")
    parts = PurePosixPath(key).parts
    if any(part == ".." for part in parts):
        raise UnsafeKeyError(f"key {key!r} leaves the storage root")
    return key


class Storage(ABC):
    """A root (folder or bucket prefix) holding objects addressed by relative keys."""

    uri: str

    @abstractmethod
    def list(self) -> Iterator[str]:
        """Every object key below the root, recursively, in sorted order."""

    @abstractmethod
    def read(self, key: str) -> bytes: ...

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write atomically: readers see the old object, the new one, or none; never a part."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def child(self, prefix: str) -> Storage:
        """The storage rooted at ``prefix`` below this root."""

    def copy_to(self, key: str, dest: Storage, dest_key: str | None = None) -> None:
        """Copy ``key`` to ``dest_key`` (default: the same key) in ``dest``.

        Generic read-then-write, so any two backends can be combined and the write
        keeps ``dest``'s atomicity. Backends override it when they can copy without
        the bytes passing through this process (S3 server-side copy).
        """
        target = check_key(key if dest_key is None else dest_key)  # refuse before reading
        dest.write(target, self.read(key))

    def uri_of(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    def read_text(self, key: str) -> str:
        return self.read(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write(key, text.encode("utf-8"))

