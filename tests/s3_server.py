"""A real S3 endpoint for tests: ``moto_server`` in a subprocess, plus its fixtures.

A subprocess rather than moto's in-process ``mock_aws`` so that the code under test
talks HTTP exactly as it does to AWS or MinIO, and so that fault tests can stop the
endpoint mid-run (connection refused) and start it again on the same port.

Caveat: moto keeps everything in memory, so :meth:`MotoServer.start` after
:meth:`MotoServer.stop` comes back *empty*: buckets and objects are gone. Tests create
their own bucket (``s3_bucket``); a test that needs the state of the shared server
after a restart must recreate it, or use ``isolated_s3_server`` to leave the shared
one alone.

Fixtures (pull them into ``tests/conftest.py``)::

    s3_server           session  the shared MotoServer (endpoint_url, stop(), start())
    isolated_s3_server  function a private MotoServer, for tests that stop/restart it
    s3_client           function boto3 S3 client with fake credentials on s3_server (to seed
                                 and inspect the bucket independently of the code under test)
    s3_fs               function s3fs filesystem with fake credentials on s3_server: what
                                 ObjectStorage is given, as the operators give it one
    s3_bucket           function a fresh, uniquely named, empty bucket on s3_server
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

FAKE_ACCESS_KEY_ID = "testing-key-id"
FAKE_SECRET_ACCESS_KEY = "testing-secret-key"
REGION = "us-east-1"

MOTO_SERVER = Path(sys.executable).parent / "moto_server"

#: Few retries and short timeouts for every client of the test server: an endpoint that is
#: down should fail a test in about a second, not after botocore's default backoff.
_CLIENT_SETTINGS: dict[str, Any] = {
    "retries": {"max_attempts": 2, "mode": "standard"},
    "connect_timeout": 2,
    "read_timeout": 10,
    "max_pool_connections": 32,
}


def _free_port() -> int:
    """A port nobody listens on now; the tiny race with other processes is acceptable."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: SIGTERM the server when pytest dies, even by SIGKILL, so no server leaks."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def fake_aws_env() -> dict[str, str]:
    """Fake credentials, so nothing in a test can ever pick up real ones from the host."""
    return {
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        "AWS_SESSION_TOKEN": "testing-session-token",
        "AWS_DEFAULT_REGION": REGION,
    }


class MotoServer:
    """One ``moto_server`` process on a fixed port that can be stopped and restarted."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or _free_port()
        self.endpoint_url = f"http://{host}:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(
            prefix=f"moto-{self.port}-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        atexit.register(self.close)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart, same port) and wait until it answers HTTP. Starts empty."""
        if self.running:
            return
        env = {**os.environ, **fake_aws_env()}
        self._process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", self.host, "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"moto_server exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not answer in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as reply:
                return bool(reply.status < 500)
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server; requests then fail with "connection refused"."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        if not self._log.closed:
            self._log.close()
        self.log_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client on this server with fake credentials.

        Few retries and short timeouts: a stopped server should fail a test in well under
        a second, not after botocore's default backoff.
        """
        settings: dict[str, Any] = dict(_CLIENT_SETTINGS)
        settings.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=FAKE_ACCESS_KEY_ID,
            aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
            config=Config(**settings),
        )


def s3_filesystem(endpoint_url: str, *, key: str = FAKE_ACCESS_KEY_ID,
                  secret: str = FAKE_SECRET_ACCESS_KEY, **config: Any) -> Any:
    """A fresh ``s3fs.S3FileSystem`` on ``endpoint_url`` with fake credentials.

    Few retries (botocore's and s3fs's own) and short timeouts, as :meth:`MotoServer.client`:
    an endpoint that is down should fail a test in about a second. A fresh instance, not
    fsspec's cached one, so that a test's event hooks and settings stay its own.
    """
    import s3fs

    settings: dict[str, Any] = dict(_CLIENT_SETTINGS)
    settings.update(config)
    fs = s3fs.S3FileSystem(
        key=key, secret=secret, endpoint_url=endpoint_url,
        client_kwargs={"region_name": REGION}, config_kwargs=settings,
        skip_instance_cache=True,
    )
    fs.retries = 2  # s3fs's own retry loop, on top of botocore's (a class attribute: 5)
    return fs


def airflow_s3_connection(endpoint_url: str, conn_id: str = "privacy_s3") -> dict[str, str]:
    """Environment for an Airflow ``aws`` connection pointing at ``endpoint_url``.

    Airflow reads ``AIRFLOW_CONN_<CONN_ID>`` (upper case) from the environment and accepts a
    JSON-serialized connection there, so tests need no metadata database. Apply it with
    ``monkeypatch.setenv`` (or ``env=`` for a subprocess).
    """
    connection = {
        "conn_type": "aws",
        "login": FAKE_ACCESS_KEY_ID,
        "password": FAKE_SECRET_ACCESS_KEY,
        "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(connection)}


def new_bucket_name(prefix: str = "test") -> str:
    """A valid, unique bucket name (lower case, 3-63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def running_moto() -> Iterator[MotoServer]:
    """A started moto server, closed when the generator ends, pass or fail (fixture body)."""
    server = MotoServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """The shared moto server for the whole session."""
    yield from running_moto()


@pytest.fixture
def isolated_s3_server() -> Iterator[MotoServer]:
    """A private moto server for one test, so stopping it leaves the shared one alone."""
    yield from running_moto()


@pytest.fixture
def s3_client(s3_server: MotoServer) -> Any:
    """A boto3 client on the shared server, restarting it if an earlier test left it down."""
    s3_server.start()
    return s3_server.client()


@pytest.fixture
def s3_fs(s3_server: MotoServer) -> Any:
    """An s3fs filesystem on the shared server, restarting it if an earlier test left it down."""
    s3_server.start()
    return s3_filesystem(s3_server.endpoint_url)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh empty bucket for this test (unique name, no cleanup needed: moto is in memory)."""
    name = new_bucket_name()
    s3_client.create_bucket(Bucket=name)
    return name


def object_digests(client: Any, bucket: str, prefix: str) -> dict[str, str]:
    """{key below ``prefix``: sha256} of every object below ``prefix``: a release's identity."""
    import hashlib

    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=prefix + "/"):
        for item in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix) + 1:]] = hashlib.sha256(body).hexdigest()
    return found


def seeded_bucket(
    server: MotoServer, name_prefix: str, objects: dict[str, bytes], under: str
) -> tuple[Any, str]:
    """``(client, bucket)``: a new bucket on ``server`` holding ``objects`` below ``under/``."""
    server.start()
    client = server.client()
    bucket = new_bucket_name(name_prefix)
    client.create_bucket(Bucket=bucket)
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=f"{under}/{key}", Body=data)
    return client, bucket
