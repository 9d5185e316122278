"""``s3://bucket/prefix`` as storage, through a boto3 S3 client.

The client is passed in rather than built here: the operators make it from an
Airflow connection (credentials, ``endpoint_url`` for MinIO/moto), the CLI from
the standard AWS credential chain, and tests point it at a local moto server.

Errors are translated so that callers never see botocore types: a missing
object is a :class:`StorageError` with the URI in the message, while an
unreachable endpoint, a timeout, throttling or a 5xx is a
:class:`TransientStorageError`, which tells Airflow (and people) that a retry
may succeed. Messages carry the URI, the S3 error code and the endpoint host,
never credentials.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from airflow_privacy.exceptions import StorageError, TransientStorageError, UnsafeKeyError
from airflow_privacy.storage.base import Storage, check_key

#: Payloads from this size on go through ``upload_fileobj`` (multipart). S3 makes a
#: multipart upload visible only when it completes, so both paths are atomic.
DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024

# Endpoint down, connection reset, timeouts, a body cut short in transit. SSLError is a
# botocore ConnectionError too, but a bad certificate does not fix itself: not transient.
_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    BotoConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
    HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    IncompleteReadError,
    ChecksumError,
)

# S3 error codes that mean "try again later" whatever their HTTP status.
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "BandwidthLimitExceeded",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _has_unsafe_segment(key: str) -> bool:
    """``..`` as a segment, with either separator.

    S3 itself treats ``..`` literally, but such a key turns into a path traversal the
    moment the bucket is synced to a disk (``aws s3 sync``, a Windows share), so it is
    refused here as :func:`check_key` refuses it locally.
    """
    return any(segment == ".." for segment in key.replace("\\", "/").split("/"))


def _redact_url(url: str | None) -> str:
    """The endpoint without ``user:password@`` so it can go into an error message."""
    if not url:
        return "the default S3 endpoint"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` → ``("bucket", "a/b")``; refuses a prefix that climbs with ``..``."""
    if not uri.startswith("s3://"):
        raise StorageError(f"not an S3 URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"S3 URI without a bucket: {uri!r}")
    prefix = prefix.strip("/")
    if "\x00" in prefix or _has_unsafe_segment(prefix):
        raise UnsafeKeyError(f"S3 prefix in {uri!r} leaves the bucket root")
    return bucket, prefix


class S3Storage(Storage):
    """Objects below ``s3://bucket/prefix``; keys are the rest of the S3 key after ``prefix/``.

    Keys are used verbatim (no ``.`` or ``//`` folding), so every key that :meth:`list`
    returns reads back the same object, including objects written by other tools.
    """

    def __init__(
        self,
        uri: str,
        client: Any,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        transfer_config: TransferConfig | None = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._client = client
        self.multipart_threshold = multipart_threshold
        self._transfer_config = transfer_config or TransferConfig(
            multipart_threshold=multipart_threshold
        )

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r})"

    @property
    def client(self) -> Any:
        """The boto3 client, exposed so another ``S3Storage`` can tell it shares it."""
        return self._client

    # -- keys -----------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        """The full S3 key for ``key``, after the same checks as every other backend."""
        check_key(key)
        if _has_unsafe_segment(key):
            raise UnsafeKeyError(f"key {key!r} leaves the storage root")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def uri_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    # -- errors ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, target: str) -> Iterator[None]:
        """Turn botocore/boto3 exceptions into :class:`StorageError` subclasses.

        The original exception stays chained (``from``) for debugging; our message is
        built from the S3 error code and message only, never from request parameters.
        """
        try:
            yield
        except StorageError:
            raise
        except ClientError as exc:
            raise self._from_client_error(exc, action, target) from exc
        except S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                raise self._from_client_error(cause, action, target) from exc
            if isinstance(cause, _TRANSIENT_EXCEPTIONS) and not isinstance(cause, SSLError):
                raise self._unreachable(cause, action, target) from exc
            raise StorageError(f"cannot {action} {target}: upload failed") from exc
        except SSLError as exc:
            raise StorageError(
                f"cannot {action} {target}: TLS error talking to "
                f"{_redact_url(self._endpoint_url())}"
            ) from exc
        except _TRANSIENT_EXCEPTIONS as exc:
            raise self._unreachable(exc, action, target) from exc
        except BotoCoreError as exc:
            # NoCredentialsError, ParamValidationError, ...: messages name settings, not values.
            raise StorageError(f"cannot {action} {target}: {type(exc).__name__}: {exc}") from exc

    def _endpoint_url(self) -> str | None:
        meta = getattr(self._client, "meta", None)
        return getattr(meta, "endpoint_url", None)

    def _unreachable(self, exc: BaseException, action: str, target: str) -> StorageError:
        return TransientStorageError(
            f"cannot {action} {target}: S3 endpoint {_redact_url(self._endpoint_url())} "
            f"unreachable or too slow ({type(exc).__name__}); retrying may help"
        )

    def _from_client_error(self, exc: ClientError, action: str, target: str) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = str(error.get("Message", "")).strip()
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        detail = f"{code}: {message}" if message else code
        if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
            return StorageError(f"cannot {action} {target}: no such object ({code})")
        if code == "NoSuchBucket":
            return StorageError(
                f"cannot {action} {target}: bucket {self.bucket!r} does not exist ({code})"
            )
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStorageError(
                f"cannot {action} {target}: S3 asked to retry ({detail}); retrying may help"
            )
        if code in {"AccessDenied", "403", "Forbidden"} or status == 403:
            return StorageError(f"cannot {action} {target}: access denied ({code})")
        return StorageError(f"cannot {action} {target}: {detail}")

    # -- Storage --------------------------------------------------------------------------

    def list(self) -> Iterator[str]:
        """All keys below the prefix, sorted. Pages through ``list_objects_v2`` eagerly so
        that a failure surfaces here, not halfway through the caller's loop.

        Keys ending in ``/`` are "folder" markers made by consoles, not objects. Keys with a
        ``..`` segment are listed; reading them raises :class:`UnsafeKeyError`, so the
        caller can record the rejection instead of silently never seeing the object.
        """
        start = self._list_prefix()
        keys: list[str] = []
        with self._errors("list", self.uri):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", ()):
                    full = item["Key"]
                    if full.endswith("/") or not full.startswith(start):
                        continue
                    relative = full[len(start) :]
                    if relative:
                        keys.append(relative)
        return iter(sorted(keys))

    def read(self, key: str) -> bytes:
        """The object's bytes, streamed from ``get_object``'s body.

        botocore checks the body length (and checksum when S3 sent one), so a connection
        cut mid-body is a :class:`TransientStorageError`, never a silently short image.
        """
        full = self._key(key)
        with self._errors("read", self.uri_of(key)):
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            body = response["Body"]
            try:
                return b"".join(body.iter_chunks(chunk_size=1024 * 1024))
            finally:
                body.close()

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically.

        A single ``put_object`` replaces the object in one step; bigger payloads go
        through ``upload_fileobj`` (multipart, parallel parts), which S3 also exposes
        only once the upload completes: readers never see a partial object.
        """
        full = self._key(key)
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._errors("write", self.uri_of(key)):
            if len(data) < self.multipart_threshold:
                self._client.put_object(
                    Bucket=self.bucket, Key=full, Body=bytes(data), ContentType=content_type
                )
            else:
                self._client.upload_fileobj(
                    io.BytesIO(data),
                    self.bucket,
                    full,
                    ExtraArgs={"ContentType": content_type},
                    Config=self._transfer_config,
                )

    def read_lines(self, key: str) -> Iterator[bytes]:
        """The object's lines, streamed from ``get_object``'s body in 1 MiB chunks."""
        full = self._key(key)
        with self._errors("read", self.uri_of(key)):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
            try:
                rest = b""
                for chunk in body.iter_chunks(chunk_size=1024 * 1024):
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        yield line + b"\n"
                if rest:
                    yield rest
            finally:
                body.close()

    def write_file(self, key: str, handle: BinaryIO) -> None:
        """``upload_fileobj`` from an open file: multipart above the threshold; atomic."""
        full = self._key(key)
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._errors("write", self.uri_of(key)):
            self._client.upload_fileobj(handle, self.bucket, full,
                                        ExtraArgs={"ContentType": content_type},
                                        Config=self._transfer_config)

    def copy_checked(self, key: str, dest: Storage, sha256: str,
                     dest_key: str | None = None) -> bool:
        """Hash the object, then copy it server-side only if it is still those bytes.

        ``copy_object`` with ``CopySourceIfMatch`` (the ETag of the bytes that were
        hashed): a staged object replaced in between fails the copy instead of
        publishing unverified bytes. The bytes are downloaded once (to hash them) and
        never uploaded again. Other destinations: the generic read, hash, write.
        """
        target_key = key if dest_key is None else dest_key
        if not isinstance(dest, S3Storage) or dest.client is not self._client:
            return super().copy_checked(key, dest, sha256, target_key)
        source, destination = self._key(key), dest._key(target_key)
        with self._errors("read", self.uri_of(key)):
            response = self._client.get_object(Bucket=self.bucket, Key=source)
            body = response["Body"]
            digest = hashlib.sha256()
            try:
                for chunk in body.iter_chunks(chunk_size=1024 * 1024):
                    digest.update(chunk)
            finally:
                body.close()
        if digest.hexdigest() != sha256:
            return False
        if (self.bucket, source) == (dest.bucket, destination):
            return True  # already in place (S3 refuses copying an object onto itself)
        with self._errors("copy", f"{self.uri_of(key)} to {dest.uri_of(target_key)}"):
            self._client.copy_object(
                CopySource={"Bucket": self.bucket, "Key": source}, Bucket=dest.bucket,
                Key=destination, CopySourceIfMatch=response["ETag"])
        return True

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors("check", self.uri_of(key)):
                self._client.head_object(Bucket=self.bucket, Key=full)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _is_missing(cause):
                return False
            raise
        return True

    def modified(self, key: str) -> datetime:
        with self._errors("check", self.uri_of(key)):
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        return head["LastModified"]

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing object is not an error (as for local storage)."""
        full = self._key(key)
        with self._errors("delete", self.uri_of(key)):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def child(self, prefix: str) -> S3Storage:
        check_key(prefix)
        if _has_unsafe_segment(prefix):
            raise UnsafeKeyError(f"prefix {prefix!r} leaves the storage root")
        sub = prefix.strip("/")
        joined = f"{self.prefix}/{sub}" if self.prefix else sub
        return S3Storage(
            f"s3://{self.bucket}/{joined}",
            self._client,
            multipart_threshold=self.multipart_threshold,
            transfer_config=self._transfer_config,
        )

    def copy_to(self, key: str, dest: Storage, dest_key: str | None = None) -> None:
        """Server-side ``copy_object`` when ``dest`` is S3 reached through the same client
        (same credentials and endpoint, any bucket): the bytes never pass through this
        worker. Anything else falls back to the generic read + write.

        ``copy_object`` is atomic like ``put_object``; it is limited to 5 GiB objects,
        far above any image.
        """
        target_key = key if dest_key is None else dest_key
        source = self._key(key)
        if not isinstance(dest, S3Storage):
            super().copy_to(key, dest, target_key)
            return
        destination = dest._key(target_key)  # S3's own checks, before reading anything
        if dest.client is not self._client:
            super().copy_to(key, dest, target_key)
            return
        if (self.bucket, source) == (dest.bucket, destination):
            # S3 refuses copying an object onto itself unchanged; the result would be a
            # no-op anyway. Still fail if it does not exist, as a copy would.
            if not self.exists(key):
                raise StorageError(f"cannot copy {self.uri_of(key)}: no such object")
            return
        with self._errors("copy", f"{self.uri_of(key)} to {dest.uri_of(target_key)}"):
            self._client.copy_object(
                CopySource={"Bucket": self.bucket, "Key": source},
                Bucket=dest.bucket,
                Key=destination,
            )


def _is_missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket")
