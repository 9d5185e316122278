"""Storage backends: local folders and S3 (against a real moto server over HTTP).

The S3 fixtures (``s3_server``, ``s3_client``, ``s3_bucket``, ``isolated_s3_server``)
come from ``tests/s3_server.py`` through ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.stub import Stubber

from airflow_privacy.storage import (
    Storage,
    StorageError,
    TransientStorageError,
    UnsafeKeyError,
    open_storage,
)
from airflow_privacy.storage.local import LocalStorage
from airflow_privacy.storage.s3 import S3Storage, parse_s3_uri
from tests.s3_server import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    MotoServer,
    airflow_s3_connection,
    new_bucket_name,
)

UNSAFE_KEYS = ["../x", "/etc/passwd", "a/../../x", "a/..", "..", "", "a\x00b", "\\x"]


def _calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` the client sends, to prove *how* a
    result was reached (paginated, server-side copy, multipart), not only that it was."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(params)

    client.meta.events.register(f"provide-client-params.s3.{operation}", record)
    return seen


# ---------------------------------------------------------------------------- local


def test_local_roundtrip_and_overwrite(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    store.write("a/b/c.jpg", b"one")
    store.write("a/b/c.jpg", b"two")
    assert store.read("a/b/c.jpg") == b"two"
    assert store.exists("a/b/c.jpg")
    assert not store.exists("a/b/missing.jpg")
    store.write_text("r.json", "{}")
    assert store.read_text("r.json") == "{}"
    store.delete("a/b/c.jpg")
    store.delete("a/b/c.jpg")  # missing is fine
    assert not store.exists("a/b/c.jpg")
    assert store.uri_of("x/y.png") == f"{tmp_path / 'root'}/x/y.png"
    # no temporary files are left next to the objects
    assert not [p for p in (tmp_path / "root").rglob("*") if p.name.startswith(".tmp-")]


def test_local_write_is_atomic_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStorage(tmp_path)
    store.write("img.jpg", b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="img.jpg"):
        store.write("img.jpg", b"new-but-never-visible")
    monkeypatch.undo()
    assert store.read("img.jpg") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.jpg"]


def test_local_list_is_sorted_and_recursive(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    for key in ["b.jpg", "a/c.jpg", "a/b/d.jpg", "A.jpg", "a.jpg"]:
        store.write(key, b"x")
    assert list(store.list()) == ["A.jpg", "a.jpg", "a/b/d.jpg", "a/c.jpg", "b.jpg"]
    assert list(store.child("a").list()) == ["b/d.jpg", "c.jpg"]
    assert list(LocalStorage(tmp_path / "nowhere").list()) == []


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_local_refuses_unsafe_keys(tmp_path: Path, key: str) -> None:
    store = LocalStorage(tmp_path / "root")
    for attempt in (
        lambda: store.read(key),
        lambda: store.write(key, b"x"),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.child(key),
    ):
        with pytest.raises(UnsafeKeyError):
            attempt()
    assert not (tmp_path / "x").exists()


def test_local_symlink_out_of_root_is_listed_but_unreadable(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.jpg").write_bytes(b"ok")
    (root / "escape.jpg").symlink_to(outside / "secret.txt")
    store = LocalStorage(root)
    assert list(store.list()) == ["escape.jpg", "ok.jpg"]
    with pytest.raises(UnsafeKeyError):
        store.read("escape.jpg")
    with pytest.raises(UnsafeKeyError):
        store.write("escape.jpg", b"overwrite")
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_local_missing_key_is_a_plain_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        LocalStorage(tmp_path).read("nope.jpg")
    assert not isinstance(info.value, (UnsafeKeyError, TransientStorageError))


def test_generic_copy_to_between_local_stores(tmp_path: Path) -> None:
    src, dst = LocalStorage(tmp_path / "src"), LocalStorage(tmp_path / "dst")
    src.write("a/img.jpg", b"pixels")
    src.copy_to("a/img.jpg", dst)
    src.copy_to("a/img.jpg", dst, "renamed.jpg")
    assert dst.read("a/img.jpg") == b"pixels"
    assert dst.read("renamed.jpg") == b"pixels"


# ---------------------------------------------------------------------------- S3 offline


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix", "normal"),
    [
        ("s3://bkt", "bkt", "", "s3://bkt"),
        ("s3://bkt/", "bkt", "", "s3://bkt"),
        ("s3://bkt/in/2024/", "bkt", "in/2024", "s3://bkt/in/2024"),
        ("s3://bkt//in", "bkt", "in", "s3://bkt/in"),
    ],
)
def test_s3_uri_parsing(uri: str, bucket: str, prefix: str, normal: str) -> None:
    assert parse_s3_uri(uri) == (bucket, prefix)
    store = S3Storage(uri, client=None)
    assert store.uri == normal
    assert store.uri_of("a/b.jpg") == f"{normal}/a/b.jpg"


def test_s3_bad_uris() -> None:
    with pytest.raises(StorageError):
        S3Storage("s3://", client=None)
    with pytest.raises(StorageError):
        S3Storage("/local/path", client=None)
    with pytest.raises(UnsafeKeyError):
        S3Storage("s3://bkt/a/../../b", client=None)


@pytest.mark.parametrize("key", UNSAFE_KEYS + ["a\\..\\b", "a/\\../b"])
def test_s3_refuses_unsafe_keys_before_any_request(key: str) -> None:
    class NoClient:
        """Any attribute access would mean a request was about to be made."""

        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"client.{name} used for unsafe key {key!r}")

    client = NoClient()
    store = S3Storage("s3://bkt/prefix", client)
    other = S3Storage("s3://bkt/other", client)  # same client: the server-side copy path
    elsewhere = S3Storage("s3://bkt/other", NoClient())  # the generic read + write path
    for attempt in (
        lambda: store.read(key),
        lambda: store.write(key, b"x"),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.child(key),
        lambda: store.uri_of(key),
        lambda: store.copy_to(key, other, "fine.jpg"),
        lambda: store.copy_to("fine.jpg", other, key),
        lambda: store.copy_to(key, elsewhere, "fine.jpg"),
        lambda: store.copy_to("fine.jpg", elsewhere, key),
    ):
        with pytest.raises(UnsafeKeyError):
            attempt()


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SlowDown", 503, True),
        ("InternalError", 500, True),
        ("RequestTimeout", 400, True),
        ("AccessDenied", 403, False),
        ("InvalidObjectState", 403, False),
    ],
)
def test_s3_error_classification(code: str, status: int, transient: bool) -> None:
    import boto3

    client = boto3.client(
        "s3",
        region_name="us-east-1",
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
    )
    store = S3Storage("s3://bkt/p", client)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
        with pytest.raises(StorageError) as info:
            store.read("k.jpg")
    assert isinstance(info.value, TransientStorageError) is transient
    assert "s3://bkt/p/k.jpg" in str(info.value)
    assert code in str(info.value)


# ---------------------------------------------------------------------------- S3 on moto


def test_s3_roundtrip(s3_client: Any, s3_bucket: str) -> None:
    store = open_storage(f"s3://{s3_bucket}/data", s3_client=s3_client)
    assert isinstance(store, S3Storage)
    assert not store.exists("img/a.jpg")
    store.write("img/a.jpg", b"first")
    store.write("img/a.jpg", b"second")
    assert store.exists("img/a.jpg")
    assert store.read("img/a.jpg") == b"second"
    head = s3_client.head_object(Bucket=s3_bucket, Key="data/img/a.jpg")
    assert head["ContentType"] == "image/jpeg"
    store.write_text("report.json", '{"ok": true}')
    assert store.read_text("report.json") == '{"ok": true}'
    store.delete("img/a.jpg")
    store.delete("img/a.jpg")  # deleting a missing object is not an error
    assert not store.exists("img/a.jpg")
    assert store.uri_of("x.png") == f"s3://{s3_bucket}/data/x.png"


def test_s3_list_is_sorted_relative_and_skips_markers(s3_client: Any, s3_bucket: str) -> None:
    for key in [
        "data/b.jpg",
        "data/a/c.jpg",
        "data/A.jpg",
        "data/folder/",  # a console "folder": not an object
        "data2/sibling.jpg",  # same string prefix, other "folder"
        "top.jpg",
    ]:
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    store = S3Storage(f"s3://{s3_bucket}/data/", s3_client)
    assert list(store.list()) == ["A.jpg", "a/c.jpg", "b.jpg"]
    whole = S3Storage(f"s3://{s3_bucket}", s3_client)
    assert list(whole.list()) == [
        "data/A.jpg",
        "data/a/c.jpg",
        "data/b.jpg",
        "data2/sibling.jpg",
        "top.jpg",
    ]
    assert list(S3Storage(f"s3://{s3_bucket}/empty", s3_client).list()) == []


def test_s3_list_paginates(s3_client: Any, s3_bucket: str) -> None:
    count = 1100  # more than one 1000-key page
    keys = [f"many/{i:05d}.jpg" for i in range(count)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: s3_client.put_object(Bucket=s3_bucket, Key=k, Body=b""), keys))
    uploaded = time.monotonic()
    calls = _calls(s3_client, "ListObjectsV2")
    listed = list(S3Storage(f"s3://{s3_bucket}/many", s3_client).list())
    assert listed == [k.removeprefix("many/") for k in keys]
    assert len(calls) == 2
    assert calls[1].get("ContinuationToken")
    # keep an eye on cost: the whole test should stay a few seconds on a shared CI box
    print(
        f"put {count} objects in {uploaded - started:.1f}s, listed in "
        f"{time.monotonic() - uploaded:.1f}s"
    )


def test_s3_child(s3_client: Any, s3_bucket: str) -> None:
    root = S3Storage(f"s3://{s3_bucket}", s3_client)
    leaf = root.child("runs").child("r1/")
    assert leaf.uri == f"s3://{s3_bucket}/runs/r1"
    leaf.write("out/a.jpg", b"a")
    root.write("runs/r2/b.jpg", b"b")
    assert list(leaf.list()) == ["out/a.jpg"]
    assert list(root.list()) == ["runs/r1/out/a.jpg", "runs/r2/b.jpg"]
    assert root.read("runs/r1/out/a.jpg") == b"a"
    assert leaf.uri_of("out/a.jpg") == f"s3://{s3_bucket}/runs/r1/out/a.jpg"


def test_s3_copy_to_is_server_side_on_the_same_client(
    s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    other_bucket = new_bucket_name()
    s3_client.create_bucket(Bucket=other_bucket)
    src = S3Storage(f"s3://{s3_bucket}/in", s3_client)
    same_bucket = S3Storage(f"s3://{s3_bucket}/out", s3_client)
    elsewhere = S3Storage(f"s3://{other_bucket}/pub", s3_client)
    src.write("a/img.jpg", b"pixels")

    gets, copies = _calls(s3_client, "GetObject"), _calls(s3_client, "CopyObject")
    src.copy_to("a/img.jpg", same_bucket)
    src.copy_to("a/img.jpg", elsewhere, "renamed.jpg")
    src.copy_to("a/img.jpg", src)  # onto itself: a no-op, not an S3 error
    assert (len(gets), len(copies)) == (0, 2)
    assert same_bucket.read("a/img.jpg") == b"pixels"
    assert elsewhere.read("renamed.jpg") == b"pixels"

    # other backends (and other clients) go through the generic read + write
    local = LocalStorage(tmp_path)
    src.copy_to("a/img.jpg", local)
    assert local.read("a/img.jpg") == b"pixels"
    local.copy_to("a/img.jpg", same_bucket, "from-local.jpg")
    assert same_bucket.read("from-local.jpg") == b"pixels"

    with pytest.raises(StorageError, match="no such object"):
        src.copy_to("missing.jpg", same_bucket)
    with pytest.raises(StorageError, match="no such object"):
        src.copy_to("missing.jpg", src)


def test_s3_multipart_write_is_used_for_big_payloads(s3_client: Any, s3_bucket: str) -> None:
    mib = 1024 * 1024
    store = S3Storage(
        f"s3://{s3_bucket}/big",
        s3_client,
        multipart_threshold=5 * mib,
        transfer_config=TransferConfig(multipart_threshold=5 * mib, multipart_chunksize=5 * mib),
    )
    payload = os.urandom(6 * mib)
    starts = _calls(s3_client, "CreateMultipartUpload")
    store.write("video.bin", payload)
    assert len(starts) == 1
    assert store.read("video.bin") == payload
    etag = s3_client.head_object(Bucket=s3_bucket, Key="big/video.bin")["ETag"]
    assert etag.strip('"').endswith("-2")  # two parts, completed as one object
    store.write("small.bin", b"tiny")
    assert len(starts) == 1  # small payloads stay a single put_object


def test_s3_missing_key_and_bucket(s3_client: Any, s3_bucket: str) -> None:
    store = S3Storage(f"s3://{s3_bucket}/p", s3_client)
    with pytest.raises(StorageError, match="no such object") as info:
        store.read("nope.jpg")
    assert not isinstance(info.value, TransientStorageError)
    assert f"s3://{s3_bucket}/p/nope.jpg" in str(info.value)
    assert not store.exists("nope.jpg")

    ghost = S3Storage(f"s3://{new_bucket_name('ghost')}/p", s3_client)
    with pytest.raises(StorageError, match="does not exist") as info:
        list(ghost.list())
    assert not isinstance(info.value, TransientStorageError)
    with pytest.raises(StorageError):
        ghost.write("k.jpg", b"x")


def test_s3_object_with_dotdot_key_is_listed_but_unreadable(s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="in/../evil.jpg", Body=b"x")
    s3_client.put_object(Bucket=s3_bucket, Key="in/ok.jpg", Body=b"ok")
    store = S3Storage(f"s3://{s3_bucket}/in", s3_client)
    assert list(store.list()) == ["../evil.jpg", "ok.jpg"]
    with pytest.raises(UnsafeKeyError):
        store.read("../evil.jpg")
    assert store.read("ok.jpg") == b"ok"


def test_s3_endpoint_down_is_transient_then_recovers(isolated_s3_server: MotoServer) -> None:
    server = isolated_s3_server
    client = server.client()
    bucket = new_bucket_name()
    client.create_bucket(Bucket=bucket)
    store = S3Storage(
        f"s3://{bucket}/p",
        client,
        multipart_threshold=5 * 1024 * 1024,
    )
    store.write("a.jpg", b"a")

    server.stop()
    attempts = {
        "read": lambda: store.read("a.jpg"),
        "write": lambda: store.write("b.jpg", b"b"),
        "multipart write": lambda: store.write("big.bin", b"\0" * (6 * 1024 * 1024)),
        "list": lambda: list(store.list()),
        "exists": lambda: store.exists("a.jpg"),
        "delete": lambda: store.delete("a.jpg"),
        "copy": lambda: store.copy_to("a.jpg", store, "c.jpg"),
    }
    for name, attempt in attempts.items():
        started = time.monotonic()
        with pytest.raises(TransientStorageError) as info:
            attempt()
        message = str(info.value)
        assert server.endpoint_url in message, name
        assert FAKE_ACCESS_KEY_ID not in message and FAKE_SECRET_ACCESS_KEY not in message
        assert time.monotonic() - started < 15, f"{name} took too long to fail"

    server.start()  # same port, same client; moto restarts empty
    with pytest.raises(StorageError, match="does not exist"):
        store.read("a.jpg")
    client.create_bucket(Bucket=bucket)
    store.write("a.jpg", b"again")
    assert store.read("a.jpg") == b"again"
    assert list(store.list()) == ["a.jpg"]


def test_credentials_never_in_error_messages(s3_server: MotoServer, s3_bucket: str) -> None:
    import boto3

    secret = "SUPERSECRETvalue0123456789abcdefghijklmn"
    key_id = "AKIAIOSFODNN7SECRETID"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    store = S3Storage(f"s3://{s3_bucket}/p", client)
    for attempt in (lambda: store.read("missing.jpg"), lambda: list(store.child("x").list())):
        try:
            attempt()
        except StorageError as exc:
            assert secret not in str(exc) and key_id not in str(exc)
            assert secret not in repr(exc.__cause__)


def test_airflow_connection_env_reaches_moto(
    s3_server: MotoServer, s3_client: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in airflow_s3_connection(s3_server.endpoint_url).items():
        monkeypatch.setenv(name, value)
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3_client.put_object(Bucket=s3_bucket, Key="in/a.jpg", Body=b"a")
    hook = S3Hook(aws_conn_id="privacy_s3")
    conn = hook.get_conn()
    assert conn.meta.endpoint_url == s3_server.endpoint_url
    assert conn.meta.region_name == "us-east-1"
    assert hook.check_for_bucket(s3_bucket)
    assert hook.list_keys(bucket_name=s3_bucket, prefix="in/") == ["in/a.jpg"]

    # the operators hand exactly this client to the storage layer
    store: Storage = open_storage(f"s3://{s3_bucket}/in", s3_client=conn)
    store.write("b.jpg", b"b")
    assert list(store.list()) == ["a.jpg", "b.jpg"]
