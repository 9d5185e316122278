"""Local folders as storage, with atomic writes and no escape through symlinks."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from airflow_privacy.exceptions import StorageError, UnsafeKeyError
from airflow_privacy.storage.base import Storage, check_key


def _process_umask() -> int:
    """The umask, read once at import (setting it back at once; nothing else runs yet)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files whatever the umask; a release is meant to be read by others
# (a downstream service account), so objects get the mode a plain open() would give.
FILE_MODE = 0o666 & ~_process_umask()


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        resolved_root = self.root.resolve()
        try:
            path.resolve().relative_to(resolved_root)
        except ValueError:
            raise UnsafeKeyError(f"{key!r} resolves outside {self.root}") from None
        return path

    def list(self) -> Iterator[str]:
        """Every file below the root. Symlinks are listed, not followed: reading one
        that leaves the root raises :class:`UnsafeKeyError`, so the caller can record
        the rejection instead of silently skipping the file."""
        if not self.root.is_dir():
            return iter(())
        keys = [
            (Path(dirpath) / filename).relative_to(self.root).as_posix()
            for dirpath, _dirnames, filenames in os.walk(self.root)
            for filename in filenames
        ]
        return iter(sorted(keys))

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_of(key)}: {exc}") from exc

    def write(self, key: str, data: bytes) -> None:
        self.write_file(key, io.BytesIO(data))

    def read_lines(self, key: str) -> Iterator[bytes]:
        """Streamed from the file: a manifest of any size in bounded memory."""
        try:
            with self._path(key).open("rb") as handle:
                yield from handle
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_of(key)}: {exc}") from exc

    def write_file(self, key: str, handle: BinaryIO) -> None:
        """:meth:`write` for an open file, copied in blocks: the same temp file and rename."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                os.fchmod(fd, FILE_MODE)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(handle, out, 1024 * 1024)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri_of(key)}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def modified(self, key: str) -> datetime:
        try:
            return datetime.fromtimestamp(self._path(key).stat().st_mtime, UTC)
        except OSError as exc:
            raise StorageError(f"cannot stat {self.uri_of(key)}: {exc}") from exc

    def clear(self) -> int:
        """Every file below the root, then the emptied folders and the root itself."""
        count = super().clear()
        if self.root.is_dir():
            for dirpath, _dirnames, _filenames in os.walk(self.root, topdown=False):
                try:
                    Path(dirpath).rmdir()
                except OSError:
                    pass  # not empty: something was written meanwhile; leave it
        return count

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self.root / check_key(prefix))
