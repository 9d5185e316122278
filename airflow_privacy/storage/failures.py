"""How object stores fail, in the package's terms: what is worth a retry, and what to say.

fsspec backends raise their libraries' exceptions: s3fs turns a botocore
``ClientError`` into an ``OSError`` subclass and keeps the original (with the S3
error code) as its cause; aiohttp and botocore have their own transport errors;
gcsfs and adlfs carry an HTTP status. :func:`translate` walks the cause chain and
returns a :class:`StorageError` naming the URI, or a
:class:`TransientStorageError` when an endpoint is down, slow, throttling or
answering 5xx (a retry may help; Airflow retries the task). Messages are built
from error codes, URIs and the endpoint's host only, never from request
parameters or exception texts that could carry a signature or a key.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_privacy.exceptions import StorageError, TransientStorageError

# S3-style error codes that mean "try again later" whatever their HTTP status.
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
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(transient, permanent) transport exception classes of the libraries that are installed.

    A connection refused or reset, a timeout or a body cut short is worth a retry; a bad
    TLS certificate is not (it does not fix itself), although both libraries file it under
    their connection errors, so it is checked first.
    """
    transient: list[type[BaseException]] = [
        ConnectionError,  # refused, reset, aborted, broken pipe (builtin)
        TimeoutError,  # socket.timeout and asyncio.TimeoutError are aliases
        socket.gaierror,  # a DNS hiccup
        asyncio.IncompleteReadError,
    ]
    permanent: list[type[BaseException]] = []
    try:
        from fsspec.exceptions import FSTimeoutError

        transient.append(FSTimeoutError)
    except ImportError:  # pragma: no cover - fsspec is a dependency
        pass
    try:
        from botocore.exceptions import ChecksumError, HTTPClientError, IncompleteReadError
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import SSLError as BotoSSLError

        permanent.append(BotoSSLError)
        transient += [BotoConnectionError, HTTPClientError, IncompleteReadError, ChecksumError]
    except ImportError:
        pass
    try:
        import aiohttp

        permanent += [aiohttp.ClientConnectorCertificateError, aiohttp.InvalidURL]
        transient += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    import ssl

    permanent.append(ssl.SSLCertVerificationError)
    return tuple(transient), tuple(permanent)


_TRANSIENT, _PERMANENT = _transport_errors()


def redact_url(url: str | None) -> str | None:
    """The endpoint without ``user:password@``, a query or a fragment, for an error message."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes: s3fs turns a botocore ``ClientError`` into ``OSError``
    subclasses and keeps the original as ``__cause__``, which has the S3 error code."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (aiohttp's ``status``, gcsfs's ``code``)."""
    for name in ("status", "code", "status_code"):
        value = getattr(exc, name, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def endpoint_of(fs: Any, scheme: str) -> str:
    """Where ``fs`` sends requests, for messages: an explicit endpoint's host, else the scheme's."""
    url = getattr(fs, "endpoint_url", None)
    if not url:
        client_kwargs = getattr(fs, "client_kwargs", None) or {}
        url = client_kwargs.get("endpoint_url") if isinstance(client_kwargs, dict) else None
    return redact_url(url) or f"the default {scheme} endpoint"


def translate(exc: BaseException, *, action: str, target: str, scheme: str, bucket: str,
              endpoint: str) -> StorageError:
    """The :class:`StorageError` for ``exc``, raised while trying to ``action`` ``target``."""
    prefix = f"cannot {action} {target}"
    for link in _chain(exc):
        if isinstance(link, _PERMANENT):
            return StorageError(f"{prefix}: TLS or URL error talking to {endpoint}")
        response = getattr(link, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return _from_error_response(response, prefix, scheme, bucket)
    for link in _chain(exc):
        if isinstance(link, _TRANSIENT):
            return TransientStorageError(
                f"{prefix}: {scheme} endpoint {endpoint} unreachable or too "
                f"slow ({type(link).__name__}); retrying may help")
        status = _http_status(link)
        if status is not None and (status >= 500 or status == 429):
            return TransientStorageError(
                f"{prefix}: {scheme} endpoint answered HTTP {status}; retrying may help")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{prefix}: no such object")
    if isinstance(exc, PermissionError):
        return StorageError(f"{prefix}: access denied")
    # no-credentials, bad parameters, ...: the class name tells what, no values
    return StorageError(f"{prefix}: {type(exc).__name__}")


def _from_error_response(response: dict[str, Any], prefix: str, scheme: str,
                         bucket: str) -> StorageError:
    """An S3-style error response (``ClientError.response``): its code decides."""
    error = response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = str(error.get("Message", "")).strip()
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
    detail = f"{code}: {message}" if message else code
    if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
        return StorageError(f"{prefix}: no such object ({code})")
    if code == "NoSuchBucket":
        return StorageError(f"{prefix}: bucket {bucket!r} does not exist ({code})")
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        return TransientStorageError(
            f"{prefix}: {scheme} asked to retry ({detail}); retrying may help")
    if code in _DENIED_CODES or status == 403:
        return StorageError(f"{prefix}: access denied ({code})")
    if code in {"PreconditionFailed", "412"} or status == 412:
        return StorageError(f"{prefix}: the object changed meanwhile ({code})")
    return StorageError(f"{prefix}: {detail}")
