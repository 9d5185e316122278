"""The storage interface and key safety rules shared by every backend.

Keys are relative POSIX paths below a root. A key that is absolute, contains
``..`` or a NUL byte, or is empty is refused before any I/O: nothing is ever
read or written outside a configured root.
"""

from __future__ import annotations

import hashlib
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import PurePosixPath
from typing import BinaryIO

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
        target = key if dest_key is None else dest_key
        dest.uri_of(target)  # refuse an unsafe key by dest's own rules, before reading
        dest.write(target, self.read(key))

    def copy_checked(self, key: str, dest: Storage, sha256: str,
                     dest_key: str | None = None) -> bool:
        """Copy ``key`` to ``dest`` only if its bytes hash to ``sha256``; False if they do not.

        What publishing does per object: the staged bytes must be the verified ones.
        Generic: read, hash, write. S3 overrides it with a server-side copy pinned
        to the ETag of the bytes it hashed, so nothing is uploaded again.
        """
        target = key if dest_key is None else dest_key
        dest.uri_of(target)  # refuse an unsafe key by dest's own rules, before reading
        data = self.read(key)
        if hashlib.sha256(data).hexdigest() != sha256:
            return False
        dest.write(target, data)
        return True

    def holds(self, key: str | None, sha256: str | None) -> bool:
        """Whether ``key`` is here with exactly the bytes of ``sha256``.

        False when it is absent or unreadable (then the work is redone); an outage is
        no answer, so :class:`TransientStorageError` propagates (the task is retried).
        """
        if not key or not sha256:
            return False
        try:
            return hashlib.sha256(self.read(key)).hexdigest() == sha256
        except TransientStorageError:
            raise
        except StorageError:
            return False

    def read_lines(self, key: str) -> Iterator[bytes]:
        """The object's lines (with their ends): JSON Lines of any size in bounded memory.

        Generic: the whole object, then split. Local folders and S3 stream.
        """
        yield from self.read(key).splitlines(keepends=True)

    def write_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write the concatenated ``chunks`` as one object, atomically, in bounded memory.

        The chunks are spooled to a temporary file (a manifest of a million records
        is gigabytes), which :meth:`write_file` then stores as one object.
        """
        with tempfile.TemporaryFile() as spool:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
            self.write_file(key, spool)

    def write_file(self, key: str, handle: BinaryIO) -> None:
        """Store an open file's content under ``key`` (generic: read whole, :meth:`write`)."""
        self.write(key, handle.read())

    def modified(self, key: str) -> datetime:
        """When ``key`` was last written (timezone-aware): what retention periods count from."""
        raise StorageError(f"{type(self).__name__} cannot tell when {key!r} was written")

    def clear(self) -> int:
        """Delete every object below the root (the run's work data); returns how many.

        Backends with directories also remove the emptied folders, so nothing of
        the run is left at all.
        """
        keys = list(self.list())
        for key in keys:
            self.delete(key)
        return len(keys)

    def uri_of(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    def read_text(self, key: str) -> str:
        return self.read(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write(key, text.encode("utf-8"))

