"""Object storage (``s3://``, ``gs://``, ``abfs://``, ``memory://`` ...) through fsspec.

One backend for every scheme fsspec can serve: the filesystem object is passed
in, not built here. The Airflow operators take it from ``ObjectStoragePath``
(so credentials and endpoints come from an Airflow connection), the CLI from
``fsspec.filesystem(scheme)`` (the library's own credential chain), tests from
an ``s3fs.S3FileSystem`` pointed at a local moto server or from fsspec's memory
filesystem. Nothing here imports Airflow.

The guarantees are the same as for local folders:

* **atomic writes.** On an object store an upload (one PUT, or a multipart
  upload) becomes visible only when it completes; a failed stream is
  *discarded* (the multipart upload aborted), never committed half. fsspec's
  own ``with fs.open(...)`` would commit the partial buffer on an exception, so
  the write loop here closes the file only on success. Any other filesystem
  (memory, sftp, a local fsspec path) gets a temporary sibling that is moved
  into place.
* **keys** are checked (:func:`~airflow_privacy.storage.base.check_key`)
  before any request: nothing outside the root is named.
* **errors** are :class:`StorageError` naming the URI; an endpoint that is down,
  slow, throttling or answering 5xx is a :class:`TransientStorageError`. Messages
  are built from error codes, URIs and the endpoint's host only, never from
  request parameters or exception texts that could carry a signature or a key.
* **listings** are never served from fsspec's listing cache: s3fs remembers
  directory listings per instance, and a run must see what another worker
  wrote a second ago.
"""

from __future__ import annotations

import base64
import hashlib
import io
import mimetypes
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from airflow_privacy.exceptions import (
    SettingsError,
    StorageError,
    UnsafeKeyError,
)
from airflow_privacy.storage.base import Storage, check_key
from airflow_privacy.storage.failures import endpoint_of, translate

#: Payloads from this size on are streamed in parts of this size (multipart on S3); below
#: it one request carries the whole object. Either way the object appears only complete.
DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024

#: Protocols whose uploads are visible only once complete (a PUT, a completed multipart
#: or resumable upload, a committed block list), so a file opened for writing can
#: receive the bytes directly. Everything else is written to a temporary key and moved.
ATOMIC_UPLOAD_PROTOCOLS = frozenset({"s3", "s3a", "s3n", "gs", "gcs", "abfs", "abfss", "az"})

_S3_PROTOCOLS = frozenset({"s3", "s3a", "s3n"})

_CHUNK = 1024 * 1024

def _has_unsafe_segment(key: str) -> bool:
    """``..`` as a segment, with either separator.

    Object stores treat ``..`` literally, but such a key turns into a path traversal the
    moment the bucket is synced to a disk (``aws s3 sync``, a Windows share), so it is
    refused here as :func:`check_key` refuses it locally.
    """
    return any(segment == ".." for segment in key.replace("\\", "/").split("/"))


def parse_uri(uri: str) -> tuple[str, str, str]:
    """``s3://bucket/a/b/`` → ``("s3", "bucket", "a/b")``.

    Refused: no scheme or no bucket, a prefix with a ``..`` segment or a NUL, and
    ``user@`` / ``user:password@`` in the URI. A connection id belongs to the Airflow
    layer (``ObjectStoragePath`` reads it from there), and a password in a URI would
    end up in every message and manifest that names the location.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme or "://" not in uri:
        raise StorageError(f"not an object storage URI: {uri!r}")
    if "@" in parts.netloc:
        raise SettingsError(
            f"{scheme}:// location with user information (a connection id or credentials): "
            "connection ids in a URI are read by the Airflow operators only, and credentials "
            "never belong in a URI"
        )
    bucket = parts.netloc
    prefix = uri.split("://", 1)[1][len(bucket):].split("?", 1)[0].strip("/")
    if not bucket:
        raise StorageError(f"{scheme}:// URI without a bucket: {uri!r}")
    if "\x00" in prefix or _has_unsafe_segment(prefix) or _has_unsafe_segment(bucket):
        raise UnsafeKeyError(f"{scheme}:// prefix in {uri!r} leaves the bucket root")
    return scheme, bucket, prefix


class ObjectStorage(Storage):
    """Objects below ``scheme://bucket/prefix`` on an fsspec filesystem.

    Keys are used verbatim below the prefix (no ``.`` or ``//`` folding), so every key
    that :meth:`list` returns reads back the same object, including objects written by
    other tools.

    >>> from fsspec.implementations.memory import MemoryFileSystem
    >>> store = ObjectStorage("memory://bucket/run", MemoryFileSystem())
    >>> store.write("a/b.jpg", b"pixels")
    >>> list(store.list()), store.uri_of("a/b.jpg")
    (['a/b.jpg'], 'memory://bucket/run/a/b.jpg')
    """

    def __init__(
        self,
        uri: str,
        fs: Any,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    ) -> None:
        self.scheme, self.bucket, self.prefix = parse_uri(uri)
        base = f"{self.scheme}://{self.bucket}"
        self.uri = f"{base}/{self.prefix}" if self.prefix else base
        self.fs = fs
        self.multipart_threshold = multipart_threshold
        # the filesystem's own path for the root: "bucket/prefix" for s3fs and gcsfs,
        # "/bucket/prefix" for the memory filesystem
        self._root = fs._strip_protocol(self.uri).rstrip("/")
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self._protocols = frozenset(str(p) for p in protocols)
        self._atomic_uploads = bool(self._protocols & ATOMIC_UPLOAD_PROTOCOLS)
        self._is_s3 = bool(self._protocols & _S3_PROTOCOLS)
        # cleared when the store answers a checksummed copy without a checksum
        self._reports_checksums = True

    def __repr__(self) -> str:
        return f"ObjectStorage({self.uri!r})"

    # -- keys -----------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        """The filesystem path for ``key``, after the same checks as every other backend."""
        check_key(key)
        if _has_unsafe_segment(key):
            raise UnsafeKeyError(f"key {key!r} leaves the storage root")
        return f"{self._root}/{key}" if self._root else key

    def uri_of(self, key: str) -> str:
        self._path(key)
        return f"{self.uri}/{key}"

    def _same_fs(self, dest: Storage) -> bool:
        return isinstance(dest, ObjectStorage) and dest.fs is self.fs

    # -- errors ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, target: str) -> Iterator[None]:
        """Turn what fsspec, s3fs, botocore and aiohttp raise into :class:`StorageError`.

        The original exception stays chained (``from``) for debugging.
        """
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise translate(exc, action=action, target=target, scheme=self.scheme,
                            bucket=self.bucket,
                            endpoint=endpoint_of(self.fs, self.scheme)) from exc

    # -- Storage --------------------------------------------------------------------------

    def list(self) -> Iterator[str]:
        """All keys below the prefix, sorted, listed eagerly so that a failure surfaces
        here, not halfway through the caller's loop.

        The listing cache is dropped first (a run must see what another worker wrote).
        Keys ending in ``/`` are "folder" markers made by consoles, not objects. Keys with
        a ``..`` segment are listed; reading them raises :class:`UnsafeKeyError`, so the
        caller can record the rejection instead of silently never seeing the object.
        """
        start = f"{self._root}/" if self._root else ""
        with self._errors("list", self.uri):
            self.fs.invalidate_cache(self._root or None)
            try:
                found = self.fs.find(self._root, detail=True)
            except FileNotFoundError:
                if self.bucket and self._is_s3 and not self._bucket_exists():
                    raise
                found = {}
        keys = [
            name[len(start):]
            for name, info in found.items()
            if info.get("type") == "file" and name.startswith(start) and not name.endswith("/")
        ]
        return iter(sorted(key for key in keys if key))

    def _bucket_exists(self) -> bool:
        return bool(self.fs.exists(self.bucket))

    def read(self, key: str) -> bytes:
        """The object's bytes. The length is checked against what was announced, so a
        connection cut mid-body is a :class:`TransientStorageError`, never a short image."""
        path = self._path(key)
        # s3fs would otherwise ask for the size first (a HEAD) and fetch a big object in
        # parallel ranges, which are not pinned to one version: one GET, one object
        options = {"max_concurrency": 1} if self._is_s3 else {}
        with self._errors("read", self.uri_of(key)):
            return bytes(self.fs.cat_file(path, **options))

    def read_lines(self, key: str) -> Iterator[bytes]:
        """The object's lines, read in 8 MiB blocks: a manifest of any size in bounded memory.

        On S3 every block is a ranged GET pinned to the ETag seen when the file was
        opened: an object replaced meanwhile fails the read rather than mixing versions.
        """
        path = self._path(key)
        block = 8 * _CHUNK
        with self._errors("read", self.uri_of(key)):
            self.fs.invalidate_cache(path)
            handle = self.fs.open(path, "rb", block_size=block, cache_type="none")
        try:
            rest = b""
            while True:
                with self._errors("read", self.uri_of(key)):
                    chunk = handle.read(block)
                if not chunk:
                    break
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield line + b"\n"
            if rest:
                yield rest
        finally:
            handle.close()

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically: one request below the multipart
        threshold, a streamed (multipart) upload above it."""
        if len(data) >= self.multipart_threshold:
            self.write_file(key, io.BytesIO(data))
            return
        path = self._path(key)
        with self._errors("write", self.uri_of(key)):
            if self._atomic_uploads:
                self.fs.pipe_file(path, bytes(data), **self._put_options(key))
            else:
                self._via_temporary(path, io.BytesIO(data))

    def write_file(self, key: str, handle: BinaryIO) -> None:
        """Stream an open file's content to ``key`` in bounded memory, atomically."""
        path = self._path(key)
        with self._errors("write", self.uri_of(key)):
            if self._atomic_uploads:
                self._upload(path, handle, **self._put_options(key))
            else:
                self._via_temporary(path, handle)

    def _put_options(self, key: str) -> dict[str, Any]:
        """The object's content type, where the backend takes one (S3 serves it back)."""
        if not self._is_s3:
            return {}
        return {"ContentType": mimetypes.guess_type(key)[0] or "application/octet-stream"}

    def _upload(self, path: str, handle: BinaryIO, **options: Any) -> None:
        """Copy ``handle`` into a file opened for writing; commit only if every byte got there.

        ``with fs.open(...)`` would close, i.e. commit, the part written so far when the
        source fails; here a failure discards the upload (s3fs aborts the multipart
        upload) and the object never appears.
        """
        out = self.fs.open(path, "wb", block_size=max(self.multipart_threshold, 5 * _CHUNK),
                           **options)
        try:
            while chunk := handle.read(_CHUNK):
                out.write(chunk)
        except BaseException:
            _discard(out)
            raise
        try:
            out.close()
        except BaseException:
            _discard(out)
            raise

    def _via_temporary(self, path: str, handle: BinaryIO) -> None:
        """Write beside the target, then move it into place: for filesystems whose files
        are visible while being written."""
        parent, _, name = path.rpartition("/")
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}.part" if parent else f".tmp-{name}.part"
        try:
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            with self.fs.open(tmp, "wb") as out:
                while chunk := handle.read(_CHUNK):
                    out.write(chunk)
            self.fs.mv(tmp, path)
        except BaseException:
            try:
                self.fs.rm_file(tmp)
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                pass
            raise

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with self._errors("check", self.uri_of(key)):
            self.fs.invalidate_cache(path)
            try:
                return self.fs.info(path).get("type") == "file"
            except FileNotFoundError:
                return False

    def modified(self, key: str) -> datetime:
        path = self._path(key)
        with self._errors("check", self.uri_of(key)):
            self.fs.invalidate_cache(path)
            when = self.fs.modified(path)
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing object is not an error (as for local storage)."""
        path = self._path(key)
        with self._errors("delete", self.uri_of(key)):
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
            self.fs.invalidate_cache(path)

    def clear(self) -> int:
        """Delete every object below the root: in batches where the backend has them (S3
        ``DeleteObjects``, 1000 keys a request), not one request per object."""
        keys = list(self.list())
        paths = [self._path(key) for key in keys]  # refuse a `..` key before deleting any
        if paths:
            with self._errors("clear", self.uri):
                self.fs.rm(paths)
                self.fs.invalidate_cache(self._root or None)
        return len(keys)

    def child(self, prefix: str) -> ObjectStorage:
        check_key(prefix)
        if _has_unsafe_segment(prefix):
            raise UnsafeKeyError(f"prefix {prefix!r} leaves the storage root")
        sub = prefix.strip("/")
        return ObjectStorage(f"{self.uri}/{sub}", self.fs,
                             multipart_threshold=self.multipart_threshold)

    def copy_to(self, key: str, dest: Storage, dest_key: str | None = None) -> None:
        """A server-side copy when ``dest`` is on the same object-store filesystem (same
        credentials and endpoint, any bucket): the bytes never pass through this worker,
        and the copy appears whole like an upload. Anything else: the generic read + write.
        """
        target_key = key if dest_key is None else dest_key
        source = self._path(key)
        if not (self._same_fs(dest) and self._atomic_uploads):
            super().copy_to(key, dest, target_key)
            return
        assert isinstance(dest, ObjectStorage)
        destination = dest._path(target_key)
        if source == destination:
            # S3 refuses copying an object onto itself unchanged, and it would be a no-op
            # anyway. Still fail if it does not exist, as a copy would.
            if not self.exists(key):
                raise StorageError(f"cannot copy {self.uri_of(key)}: no such object")
            return
        with self._errors("copy", f"{self.uri_of(key)} to {dest.uri_of(target_key)}"):
            self.fs.copy(source, destination)
            self.fs.invalidate_cache(destination)

    def copy_checked(self, key: str, dest: Storage, sha256: str,
                     dest_key: str | None = None) -> bool:
        """Copy the object server-side only if it is still the verified bytes.

        On S3, one request per object where the store allows: a ``copy_object`` that
        asks S3 for the SHA-256 of the bytes it copied (``ChecksumAlgorithm=SHA256``,
        ``CopyObjectResult.ChecksumSHA256``). Equal to ``sha256``: done, and the released
        object carries that checksum for consumers. Anything else (a staged object
        replaced after verification, a store that reports no checksum, a multipart
        object's composite checksum) deletes the copy and takes the careful path,
        :meth:`_hashed_copy`, which refuses unless the bytes hash to ``sha256``. A store
        that reports no checksum once is not asked again. Publishing therefore costs one
        request per object instead of two (a GET to hash, then the copy), which is what
        bounds its rate on a busy store. Other destinations and stores: the generic
        read, hash, write.
        """
        target_key = key if dest_key is None else dest_key
        if not (self._is_s3 and self._same_fs(dest)):
            return super().copy_checked(key, dest, sha256, target_key)
        assert isinstance(dest, ObjectStorage)
        source, destination = self._path(key), dest._path(target_key)
        if source != destination and self._reports_checksums:
            bucket, src_key = source.split("/", 1)
            dest_bucket, dest_object = destination.split("/", 1)
            with self._errors("copy", f"{self.uri_of(key)} to {dest.uri_of(target_key)}"):
                response = self.fs.call_s3(
                    "copy_object", CopySource={"Bucket": bucket, "Key": src_key},
                    Bucket=dest_bucket, Key=dest_object, ChecksumAlgorithm="SHA256")
                self.fs.invalidate_cache(destination)
            copied = (response.get("CopyObjectResult") or {}).get("ChecksumSHA256")
            if copied == base64.b64encode(bytes.fromhex(sha256)).decode("ascii"):
                return True
            if copied is None:
                self._reports_checksums = False
            with self._errors("delete", dest.uri_of(target_key)):
                self.fs.call_s3("delete_object", Bucket=dest_bucket, Key=dest_object)
                self.fs.invalidate_cache(destination)
        return self._hashed_copy(key, dest, sha256, target_key)

    def _hashed_copy(self, key: str, dest: ObjectStorage, sha256: str, target_key: str) -> bool:
        """Hash the object, then copy it server-side only if it is still those bytes.

        The object is read pinned to its ETag (a replacement mid-read fails the read),
        then copied with ``CopySourceIfMatch`` set to that ETag, so a staged object
        replaced in between fails the copy instead of publishing unverified bytes. The
        bytes are downloaded once (to hash them) and never uploaded again.
        """
        source, destination = self._path(key), dest._path(target_key)
        bucket, src_key = source.split("/", 1)
        dest_bucket, dest_object = destination.split("/", 1)
        fs = self.fs

        async def hashed() -> tuple[str, str]:
            """One GET: the ETag and the sha256 of exactly those bytes, streamed."""
            response = await fs._call_s3("get_object", Bucket=bucket, Key=src_key)
            digest = hashlib.sha256()
            body = response["Body"]
            try:
                while chunk := await body.read(8 * _CHUNK):
                    digest.update(chunk)
            finally:
                body.close()
            return response["ETag"], digest.hexdigest()

        with self._errors("read", self.uri_of(key)):
            etag, found = _run(fs, hashed)
        if found != sha256:
            return False
        if source == destination:
            return True  # already in place (S3 refuses copying an object onto itself)
        with self._errors("copy", f"{self.uri_of(key)} to {dest.uri_of(target_key)}"):
            fs.call_s3("copy_object", CopySource={"Bucket": bucket, "Key": src_key},
                       Bucket=dest_bucket, Key=dest_object, CopySourceIfMatch=etag)
            fs.invalidate_cache(destination)
        return True


def _run(fs: Any, function: Any) -> Any:
    """Run an async function on an async fsspec filesystem's event loop, from this thread
    (what fsspec's own sync methods do). s3fs's ``_call_s3`` raises a ``ClientError`` as an
    ``OSError`` whose cause is the original, as its sync methods do."""
    from fsspec.asyn import sync

    return sync(fs.loop, function)


def _discard(handle: Any) -> None:
    """Throw an unfinished upload away (abort the multipart upload) without committing it."""
    discard = getattr(handle, "discard", None)
    try:
        if callable(discard):
            discard()
    finally:
        # fsspec's buffered files commit on close(); a discarded one must never get there
        if hasattr(handle, "closed"):
            try:
                handle.closed = True
            except AttributeError:  # pragma: no cover - a file type with a read-only flag
                pass
