"""Storage backends: local folders, and object storage through fsspec: S3 (s3fs against
a real moto server over HTTP) and fsspec's memory filesystem.

The S3 fixtures (``s3_server``, ``s3_client``, ``s3_fs``, ``s3_bucket``,
``isolated_s3_server``) come from ``tests/s3_server.py`` through ``tests/conftest.py``.
The contract tests at the end run the same promises against every backend.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import s3fs
from fsspec.implementations.memory import MemoryFileSystem

from airflow_privacy.exceptions import SettingsError
from airflow_privacy.storage import (
    Storage,
    StorageError,
    TransientStorageError,
    UnsafeKeyError,
    open_storage,
)
from airflow_privacy.storage.local import LocalStorage
from airflow_privacy.storage.objectstore import ObjectStorage, parse_uri
from tests.s3_server import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    MotoServer,
    airflow_s3_connection,
    new_bucket_name,
    s3_filesystem,
)

UNSAFE_KEYS = ["../x", "/etc/passwd", "a/../../x", "a/..", "..", "", "a\x00b", "\\x"]


def _calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` the client sends, to prove *how* a
    result was reached (paginated, server-side copy, multipart), not only that it was.

    ``client``: a boto3 client, or s3fs's aiobotocore client (``fs.s3``)."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(params)

    client.meta.events.register(f"provide-client-params.s3.{operation}", record)
    return seen


class FailingSource(io.RawIOBase):
    """A file that yields 1 MiB reads and fails once ``after`` bytes were read: a source
    that goes away in the middle of an upload."""

    def __init__(self, after: int) -> None:
        self.after, self.sent = after, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.sent >= self.after:
            raise OSError("the source went away")
        self.sent += 1024 * 1024
        return os.urandom(1024 * 1024)


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


class NoRequests:
    """An S3 filesystem that refuses to do anything but name paths: any other attribute
    access would mean a request was about to be made."""

    protocol = ("s3", "s3a")

    def __init__(self, key: str = "") -> None:
        self.key = key

    @staticmethod
    def _strip_protocol(path: str) -> str:
        return s3fs.S3FileSystem._strip_protocol(path)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"fs.{name} used for unsafe key {self.key!r}")


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
    assert parse_uri(uri) == ("s3", bucket, prefix)
    store = ObjectStorage(uri, NoRequests())
    assert store.uri == normal
    assert store.uri_of("a/b.jpg") == f"{normal}/a/b.jpg"


def test_s3_bad_uris() -> None:
    with pytest.raises(StorageError):
        ObjectStorage("s3://", NoRequests())
    with pytest.raises(StorageError):
        ObjectStorage("/local/path", NoRequests())
    with pytest.raises(UnsafeKeyError):
        ObjectStorage("s3://bkt/a/../../b", NoRequests())
    # a connection id belongs to the operators, credentials to a connection: never a URI
    for uri in ("s3://conn@bkt/p", "s3://AKIAKEY:SECRETVALUE@bkt/p"):
        with pytest.raises(SettingsError) as info:
            ObjectStorage(uri, NoRequests())
        assert "SECRETVALUE" not in str(info.value)


@pytest.mark.parametrize("key", UNSAFE_KEYS + ["a\\..\\b", "a/\\../b"])
def test_s3_refuses_unsafe_keys_before_any_request(key: str) -> None:
    fs = NoRequests(key)
    store = ObjectStorage("s3://bkt/prefix", fs)
    other = ObjectStorage("s3://bkt/other", fs)  # same filesystem: the server-side copy path
    elsewhere = ObjectStorage("s3://bkt/other", NoRequests(key))  # the generic read + write
    for attempt in (
        lambda: store.read(key),
        lambda: list(store.read_lines(key)),
        lambda: store.write(key, b"x"),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.modified(key),
        lambda: store.child(key),
        lambda: store.uri_of(key),
        lambda: store.copy_to(key, other, "fine.jpg"),
        lambda: store.copy_to("fine.jpg", other, key),
        lambda: store.copy_to(key, elsewhere, "fine.jpg"),
        lambda: store.copy_to("fine.jpg", elsewhere, key),
        lambda: store.copy_checked(key, other, "0" * 64, "fine.jpg"),
        lambda: store.copy_checked("fine.jpg", other, "0" * 64, key),
        lambda: store.copy_checked("fine.jpg", elsewhere, "0" * 64, key),
    ):
        with pytest.raises(UnsafeKeyError):
            attempt()


class _Answer:
    """What botocore needs of an HTTP response that a ``before-call`` hook supplies."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}


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
    """The S3 error answer is injected at botocore's ``before-call`` hook, so it travels
    through the real aiobotocore client, s3fs's retries and its translation to OSError."""
    fs = s3_filesystem("http://127.0.0.1:9")  # never contacted: the hook answers first
    answers: list[str] = []

    def answer(**_: Any) -> tuple[_Answer, dict[str, Any]]:
        answers.append(code)
        return _Answer(status), {
            "Error": {"Code": code, "Message": f"{code} said the server"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }

    fs.s3.meta.events.register("before-call.s3.GetObject", answer)
    store = ObjectStorage("s3://bkt/p", fs)
    with pytest.raises(StorageError) as info:
        store.read("k.jpg")
    assert answers  # the request was answered by the hook, not by a network error
    assert isinstance(info.value, TransientStorageError) is transient
    assert "s3://bkt/p/k.jpg" in str(info.value)
    assert code in str(info.value)


# ---------------------------------------------------------------------------- S3 on moto


def test_s3_roundtrip(s3_fs: Any, s3_client: Any, s3_bucket: str) -> None:
    store = open_storage(f"s3://{s3_bucket}/data", filesystem=s3_fs)
    assert isinstance(store, ObjectStorage)
    assert not store.exists("img/a.jpg")
    store.write("img/a.jpg", b"first")
    store.write("img/a.jpg", b"second")
    assert store.exists("img/a.jpg")
    assert store.read("img/a.jpg") == b"second"
    head = s3_client.head_object(Bucket=s3_bucket, Key="data/img/a.jpg")
    assert head["ContentType"] == "image/jpeg"
    store.write_text("report.json", '{"ok": true}')
    assert store.read_text("report.json") == '{"ok": true}'
    assert not store.exists("img")  # a "folder" is not an object
    store.delete("img/a.jpg")
    store.delete("img/a.jpg")  # deleting a missing object is not an error
    assert not store.exists("img/a.jpg")
    assert store.uri_of("x.png") == f"s3://{s3_bucket}/data/x.png"


def test_s3_list_is_sorted_relative_and_skips_markers(
    s3_fs: Any, s3_client: Any, s3_bucket: str
) -> None:
    for key in [
        "data/b.jpg",
        "data/a/c.jpg",
        "data/A.jpg",
        "data/folder/",  # a console "folder": not an object
        "data2/sibling.jpg",  # same string prefix, other "folder"
        "top.jpg",
    ]:
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    store = ObjectStorage(f"s3://{s3_bucket}/data/", s3_fs)
    assert list(store.list()) == ["A.jpg", "a/c.jpg", "b.jpg"]
    whole = ObjectStorage(f"s3://{s3_bucket}", s3_fs)
    assert list(whole.list()) == [
        "data/A.jpg",
        "data/a/c.jpg",
        "data/b.jpg",
        "data2/sibling.jpg",
        "top.jpg",
    ]
    assert list(ObjectStorage(f"s3://{s3_bucket}/empty", s3_fs).list()) == []


def test_s3_list_sees_what_another_client_wrote_since(
    s3_fs: Any, s3_client: Any, s3_bucket: str
) -> None:
    """s3fs caches listings per filesystem; a run must see objects that another worker
    wrote (and not see those it deleted) a moment after the last listing."""
    store = ObjectStorage(f"s3://{s3_bucket}/in", s3_fs)
    store.write("a.jpg", b"a")
    assert list(store.list()) == ["a.jpg"]
    assert s3_fs.ls(f"{s3_bucket}/in")  # fill s3fs's listing cache, as any caller may
    s3_client.put_object(Bucket=s3_bucket, Key="in/b.jpg", Body=b"b")
    s3_client.put_object(Bucket=s3_bucket, Key="in/sub/c.jpg", Body=b"c")
    assert list(store.list()) == ["a.jpg", "b.jpg", "sub/c.jpg"]
    assert store.exists("b.jpg") and store.read("sub/c.jpg") == b"c"
    s3_client.delete_object(Bucket=s3_bucket, Key="in/a.jpg")
    assert list(store.list()) == ["b.jpg", "sub/c.jpg"]
    assert not store.exists("a.jpg")


def test_s3_list_paginates(s3_fs: Any, s3_client: Any, s3_bucket: str) -> None:
    count = 1100  # more than one 1000-key page
    keys = [f"many/{i:05d}.jpg" for i in range(count)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: s3_client.put_object(Bucket=s3_bucket, Key=k, Body=b""), keys))
    uploaded = time.monotonic()
    calls = _calls(s3_fs.s3, "ListObjectsV2")
    listed = list(ObjectStorage(f"s3://{s3_bucket}/many", s3_fs).list())
    assert listed == [k.removeprefix("many/") for k in keys]
    assert len(calls) == 2
    assert calls[1].get("ContinuationToken")
    # keep an eye on cost: the whole test should stay a few seconds on a shared CI box
    print(
        f"put {count} objects in {uploaded - started:.1f}s, listed in "
        f"{time.monotonic() - uploaded:.1f}s"
    )


def test_s3_child(s3_fs: Any, s3_bucket: str) -> None:
    root = ObjectStorage(f"s3://{s3_bucket}", s3_fs)
    leaf = root.child("runs").child("r1/")
    assert leaf.uri == f"s3://{s3_bucket}/runs/r1"
    leaf.write("out/a.jpg", b"a")
    root.write("runs/r2/b.jpg", b"b")
    assert list(leaf.list()) == ["out/a.jpg"]
    assert list(root.list()) == ["runs/r1/out/a.jpg", "runs/r2/b.jpg"]
    assert root.read("runs/r1/out/a.jpg") == b"a"
    assert leaf.uri_of("out/a.jpg") == f"s3://{s3_bucket}/runs/r1/out/a.jpg"


def test_s3_copy_to_is_server_side_on_the_same_filesystem(
    s3_server: MotoServer, s3_fs: Any, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    other_bucket = new_bucket_name()
    s3_client.create_bucket(Bucket=other_bucket)
    src = ObjectStorage(f"s3://{s3_bucket}/in", s3_fs)
    same_bucket = ObjectStorage(f"s3://{s3_bucket}/out", s3_fs)
    elsewhere = ObjectStorage(f"s3://{other_bucket}/pub", s3_fs)
    src.write("a/img.jpg", b"pixels")

    gets, copies = _calls(s3_fs.s3, "GetObject"), _calls(s3_fs.s3, "CopyObject")
    src.copy_to("a/img.jpg", same_bucket)
    src.copy_to("a/img.jpg", elsewhere, "renamed.jpg")
    src.copy_to("a/img.jpg", src)  # onto itself: a no-op, not an S3 error
    assert (len(gets), len(copies)) == (0, 2)
    assert same_bucket.read("a/img.jpg") == b"pixels"
    assert elsewhere.read("renamed.jpg") == b"pixels"

    # other backends (and other filesystems: other credentials) go through read + write
    local = LocalStorage(tmp_path)
    src.copy_to("a/img.jpg", local)
    assert local.read("a/img.jpg") == b"pixels"
    local.copy_to("a/img.jpg", same_bucket, "from-local.jpg")
    assert same_bucket.read("from-local.jpg") == b"pixels"
    stranger = ObjectStorage(f"s3://{s3_bucket}/out", s3_filesystem(s3_server.endpoint_url))
    copies.clear()
    src.copy_to("a/img.jpg", stranger, "via-bytes.jpg")
    assert not copies and stranger.read("via-bytes.jpg") == b"pixels"

    with pytest.raises(StorageError, match="no such object"):
        src.copy_to("missing.jpg", same_bucket)
    with pytest.raises(StorageError, match="no such object"):
        src.copy_to("missing.jpg", src)


def test_s3_copy_checked_is_one_copy_whose_checksum_is_the_verified_sha256(
    s3_fs: Any, s3_client: Any, s3_bucket: str
) -> None:
    """Publishing's fast path: one request per object, S3 hashing what it copied."""
    staging = ObjectStorage(f"s3://{s3_bucket}/staging", s3_fs)
    release = ObjectStorage(f"s3://{s3_bucket}/release", s3_fs)
    staging.write("a.jpg", b"verified")
    good = hashlib.sha256(b"verified").hexdigest()
    copies, gets = _calls(s3_fs.s3, "CopyObject"), _calls(s3_fs.s3, "GetObject")
    deletes = _calls(s3_fs.s3, "DeleteObject")
    assert staging.copy_checked("a.jpg", release, good)
    assert len(copies) == 1 and copies[0]["ChecksumAlgorithm"] == "SHA256" and not gets
    head = s3_client.head_object(Bucket=s3_bucket, Key="release/a.jpg", ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == good
    assert release.read("a.jpg") == b"verified"
    # the staged object was replaced after verification: the copy is taken back and the
    # careful path (hash, then a pinned copy) refuses it
    staging.write("b.jpg", b"not what was verified")
    assert not staging.copy_checked("b.jpg", release, good)
    assert not release.exists("b.jpg")
    assert [d["Key"] for d in deletes] == ["release/b.jpg"] and len(copies) == 2


def test_s3_copy_checked_without_checksums_is_pinned_to_the_bytes_it_hashed(
    s3_fs: Any, s3_client: Any, s3_bucket: str
) -> None:
    """A store that reports no checksum on a copy: hash, then copy pinned to the ETag."""
    staging = ObjectStorage(f"s3://{s3_bucket}/staging", s3_fs)
    release = ObjectStorage(f"s3://{s3_bucket}/release", s3_fs)

    def no_checksums(params: dict[str, Any], **_: Any) -> None:
        params.pop("ChecksumAlgorithm", None)  # what such a store ignores

    s3_fs.s3.meta.events.register("provide-client-params.s3.CopyObject", no_checksums)
    copies = _calls(s3_fs.s3, "CopyObject")
    staging.write("a.jpg", b"verified")
    good = hashlib.sha256(b"verified").hexdigest()
    assert staging.copy_checked("a.jpg", release, good)
    assert release.read("a.jpg") == b"verified"
    etag = s3_client.head_object(Bucket=s3_bucket, Key="staging/a.jpg")["ETag"]
    # moto ignores CopySourceIfMatch, so the race itself cannot be played here; what S3
    # enforces is that the copy names the ETag of exactly the bytes that were hashed
    assert [c.get("CopySourceIfMatch") for c in copies] == [None, etag]
    # asked once: from then on this store goes straight to the careful path
    staging.write("c.jpg", b"verified")
    assert staging.copy_checked("c.jpg", release, good)
    assert [c.get("CopySourceIfMatch") for c in copies][2:] == [etag]
    # other bytes than the verified ones: nothing is copied
    staging.write("b.jpg", b"not what was verified")
    assert not staging.copy_checked("b.jpg", release, good)
    assert not release.exists("b.jpg") and len(copies) == 3


def test_s3_copy_checked_refused_by_its_precondition_publishes_nothing(
    s3_fs: Any, s3_bucket: str
) -> None:
    """What S3 answers when the staged object was replaced between the hash and the copy
    (412 PreconditionFailed on CopySourceIfMatch), injected at botocore's hook because
    moto does not evaluate the condition: a permanent, named refusal."""
    staging = ObjectStorage(f"s3://{s3_bucket}/staging", s3_fs)
    release = ObjectStorage(f"s3://{s3_bucket}/release", s3_fs)
    staging.write("a.jpg", b"verified")

    def precondition_failed(**_: Any) -> tuple[_Answer, dict[str, Any]]:
        return _Answer(412), {
            "Error": {"Code": "PreconditionFailed", "Message": "At least one of the "
                      "pre-conditions you specified did not hold"},
            "ResponseMetadata": {"HTTPStatusCode": 412},
        }

    s3_fs.s3.meta.events.register("before-call.s3.CopyObject", precondition_failed)
    with pytest.raises(StorageError, match="changed meanwhile") as info:
        staging.copy_checked("a.jpg", release, hashlib.sha256(b"verified").hexdigest())
    assert not isinstance(info.value, TransientStorageError)
    assert f"s3://{s3_bucket}/staging/a.jpg" in str(info.value)
    assert not release.exists("a.jpg")


def test_s3_multipart_write_is_used_for_big_payloads(
    s3_fs: Any, s3_client: Any, s3_bucket: str
) -> None:
    mib = 1024 * 1024
    store = ObjectStorage(f"s3://{s3_bucket}/big", s3_fs, multipart_threshold=5 * mib)
    payload = os.urandom(6 * mib)
    starts = _calls(s3_fs.s3, "CreateMultipartUpload")
    store.write("video.bin", payload)
    assert len(starts) == 1
    assert store.read("video.bin") == payload
    etag = s3_client.head_object(Bucket=s3_bucket, Key="big/video.bin")["ETag"]
    assert etag.strip('"').endswith("-2")  # two parts, completed as one object
    store.write("small.bin", b"tiny")
    assert len(starts) == 1  # small payloads stay a single put_object


def test_s3_a_stream_that_fails_midway_leaves_no_object_and_no_upload(
    s3_fs: Any, s3_client: Any, s3_bucket: str
) -> None:
    """fsspec's ``with open(...)`` would commit what was written when the source fails;
    the storage must abort the multipart upload instead, and keep the old object."""
    mib = 1024 * 1024
    store = ObjectStorage(f"s3://{s3_bucket}/big", s3_fs, multipart_threshold=5 * mib)
    store.write("video.bin", b"old")

    parts = _calls(s3_fs.s3, "UploadPart")
    with pytest.raises(StorageError, match="video.bin") as info:
        store.write_file("video.bin", FailingSource(7 * mib))  # after one 5 MiB part
    assert "went away" in str(info.value.__cause__)
    assert parts  # a multipart upload had started
    assert store.read("video.bin") == b"old"
    with pytest.raises(StorageError):
        store.write_file("new.bin", FailingSource(7 * mib))
    assert not store.exists("new.bin")
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_s3_missing_key_and_bucket(s3_fs: Any, s3_bucket: str) -> None:
    store = ObjectStorage(f"s3://{s3_bucket}/p", s3_fs)
    with pytest.raises(StorageError, match="no such object") as info:
        store.read("nope.jpg")
    assert not isinstance(info.value, TransientStorageError)
    assert f"s3://{s3_bucket}/p/nope.jpg" in str(info.value)
    assert not store.exists("nope.jpg")
    with pytest.raises(StorageError, match="no such object"):
        list(store.read_lines("nope.jpg"))

    ghost = ObjectStorage(f"s3://{new_bucket_name('ghost')}/p", s3_fs)
    with pytest.raises(StorageError, match="does not exist") as info:
        list(ghost.list())
    assert not isinstance(info.value, TransientStorageError)
    with pytest.raises(StorageError):
        ghost.write("k.jpg", b"x")


def test_s3_object_with_dotdot_key_is_listed_but_unreadable(
    s3_fs: Any, s3_client: Any, s3_bucket: str
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="in/../evil.jpg", Body=b"x")
    s3_client.put_object(Bucket=s3_bucket, Key="in/ok.jpg", Body=b"ok")
    store = ObjectStorage(f"s3://{s3_bucket}/in", s3_fs)
    assert list(store.list()) == ["../evil.jpg", "ok.jpg"]
    with pytest.raises(UnsafeKeyError):
        store.read("../evil.jpg")
    with pytest.raises(UnsafeKeyError):
        store.clear()  # refused before anything is deleted
    assert store.read("ok.jpg") == b"ok"


def test_s3_endpoint_down_is_transient_then_recovers(isolated_s3_server: MotoServer) -> None:
    server = isolated_s3_server
    client = server.client()
    bucket = new_bucket_name()
    client.create_bucket(Bucket=bucket)
    store = ObjectStorage(
        f"s3://{bucket}/p",
        s3_filesystem(server.endpoint_url),
        multipart_threshold=5 * 1024 * 1024,
    )
    store.write("a.jpg", b"a")

    server.stop()
    attempts = {
        "read": lambda: store.read("a.jpg"),
        "read lines": lambda: list(store.read_lines("a.jpg")),
        "write": lambda: store.write("b.jpg", b"b"),
        "multipart write": lambda: store.write("big.bin", b"\0" * (6 * 1024 * 1024)),
        "list": lambda: list(store.list()),
        "exists": lambda: store.exists("a.jpg"),
        "modified": lambda: store.modified("a.jpg"),
        "delete": lambda: store.delete("a.jpg"),
        "copy": lambda: store.copy_to("a.jpg", store, "c.jpg"),
        "checked copy": lambda: store.copy_checked("a.jpg", store, "0" * 64, "c.jpg"),
    }
    for name, attempt in attempts.items():
        started = time.monotonic()
        with pytest.raises(TransientStorageError) as info:
            attempt()
        message = str(info.value)
        assert server.endpoint_url in message, name
        assert FAKE_ACCESS_KEY_ID not in message and FAKE_SECRET_ACCESS_KEY not in message
        assert time.monotonic() - started < 15, f"{name} took too long to fail"

    server.start()  # same port, same filesystem; moto restarts empty
    with pytest.raises(StorageError, match="does not exist"):
        store.read("a.jpg")
    client.create_bucket(Bucket=bucket)
    store.write("a.jpg", b"again")
    assert store.read("a.jpg") == b"again"
    assert list(store.list()) == ["a.jpg"]


def test_credentials_never_in_error_messages(s3_server: MotoServer, s3_bucket: str) -> None:
    secret = "SUPERSECRETvalue0123456789abcdefghijklmn"
    key_id = "AKIAIOSFODNN7SECRETID"
    fs = s3_filesystem(s3_server.endpoint_url, key=key_id, secret=secret)
    store = ObjectStorage(f"s3://{s3_bucket}/p", fs)
    failed = 0
    for attempt in (lambda: store.read("missing.jpg"), lambda: list(store.child("x").list()),
                    lambda: store.write("k.jpg", b"x")):
        try:
            attempt()
        except StorageError as exc:
            failed += 1
            assert secret not in str(exc) and key_id not in str(exc)
            assert secret not in repr(exc.__cause__)
    assert failed >= 1


def test_airflow_connection_env_reaches_moto(
    s3_server: MotoServer, s3_client: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = f"privacy_s3_{uuid.uuid4().hex[:8]}"  # Airflow caches a filesystem per conn id
    for name, value in airflow_s3_connection(s3_server.endpoint_url, conn_id).items():
        monkeypatch.setenv(name, value)
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import ObjectStoragePath

    from airflow_privacy.operators.common import open_locations

    s3_client.put_object(Bucket=s3_bucket, Key="in/a.jpg", Body=b"a")
    hook = S3Hook(aws_conn_id=conn_id)
    assert hook.check_for_bucket(s3_bucket)

    # the operators open s3:// through ObjectStoragePath and the aws_conn_id connection
    path = ObjectStoragePath(f"s3://{s3_bucket}/in", conn_id=conn_id)
    assert [p.name for p in path.iterdir()] == ["a.jpg"]
    store, out = open_locations(conn_id, f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out")
    assert isinstance(store, ObjectStorage) and store.fs is path.fs is out.fs
    assert store.uri == f"s3://{s3_bucket}/in"
    store.write("b.jpg", b"b")
    assert list(store.list()) == ["a.jpg", "b.jpg"]
    assert s3_client.get_object(Bucket=s3_bucket, Key="in/b.jpg")["Body"].read() == b"b"
    assert store.copy_checked("b.jpg", out, hashlib.sha256(b"b").hexdigest())
    assert out.read("b.jpg") == b"b"


# ---------------------------------------------------------------------------- schemes


@pytest.mark.parametrize(("uri", "install"), [("gs://bucket/images", "gcsfs"),
                                              ("abfs://container/p", "adlfs")])
def test_a_scheme_without_its_filesystem_fails_clearly(uri: str, install: str) -> None:
    with pytest.raises(SettingsError, match="not supported") as info:
        open_storage(uri)
    assert uri.split(":")[0] + "://" in str(info.value) and f"install {install}" in str(info.value)


def test_open_storage_without_a_filesystem_uses_fsspecs_default(s3_server: MotoServer) -> None:
    """The CLI's path: ``fsspec.filesystem("s3")`` (s3fs on the standard AWS chain)."""
    store = open_storage("s3://some-bucket/prefix")
    assert isinstance(store, ObjectStorage) and isinstance(store.fs, s3fs.S3FileSystem)
    assert store.uri == "s3://some-bucket/prefix"


# ---------------------------------------------------------------------------- memory


def test_memory_storage_write_is_atomic_when_the_source_fails() -> None:
    """The memory filesystem shows a file while it is written: the backend writes to a
    temporary key and moves it, so a failed write leaves the old object and no debris."""
    store = ObjectStorage(f"memory://{new_bucket_name()}/p", MemoryFileSystem())
    store.write("a.jpg", b"old")

    with pytest.raises(StorageError, match="a.jpg"):
        store.write_file("a.jpg", FailingSource(3 * 1024 * 1024))
    assert store.read("a.jpg") == b"old"
    assert list(store.list()) == ["a.jpg"]


def test_memory_storage_missing_objects_and_modified() -> None:
    store = ObjectStorage(f"memory://{new_bucket_name()}/p", MemoryFileSystem())
    assert list(store.list()) == []
    with pytest.raises(StorageError, match="no such object") as info:
        store.read("nope.jpg")
    assert not isinstance(info.value, TransientStorageError)
    store.write("a.jpg", b"a")
    assert store.modified("a.jpg").tzinfo is not None
    assert store.clear() == 1 and list(store.list()) == []


# ---------------------------------------------------------------------------- contract


def _local(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    return LocalStorage(tmp_path / "contract")


def _memory(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    return ObjectStorage(f"memory://{new_bucket_name()}/contract", MemoryFileSystem())


def _s3(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    fs, bucket = request.getfixturevalue("s3_fs"), request.getfixturevalue("s3_bucket")
    return ObjectStorage(f"s3://{bucket}/contract", fs)


@pytest.fixture(params=[_local, _memory, _s3], ids=["local", "memory", "s3"])
def contract_store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Every backend, for the promises :class:`Storage` makes whatever is behind it."""
    return request.param(tmp_path, request)


def test_contract_roundtrip_listing_and_children(contract_store: Storage) -> None:
    store = contract_store
    assert list(store.list()) == [] and not store.exists("a.jpg")
    for key in ["b.jpg", "a/c.jpg", "a/b/d.jpg", "A.jpg", "a.jpg"]:
        store.write(key, key.encode())
    store.write("a.jpg", b"twice")
    assert list(store.list()) == ["A.jpg", "a.jpg", "a/b/d.jpg", "a/c.jpg", "b.jpg"]
    assert store.read("a.jpg") == b"twice" and store.read_text("a/c.jpg") == "a/c.jpg"
    assert store.exists("a/b/d.jpg") and not store.exists("a/b")
    child = store.child("a")
    assert list(child.list()) == ["b/d.jpg", "c.jpg"]
    assert child.read("c.jpg") == b"a/c.jpg"
    assert store.uri_of("a/c.jpg") == child.uri_of("c.jpg")
    store.delete("b.jpg")
    store.delete("b.jpg")
    assert "b.jpg" not in list(store.list())
    assert abs((datetime.now(UTC) - store.modified("a.jpg")).total_seconds()) < 120
    assert store.clear() == 4 and list(store.list()) == []


def test_contract_streams_and_copies(contract_store: Storage, tmp_path: Path) -> None:
    store = contract_store
    lines = [f'{{"n": {i}, "pad": "{"x" * 300}"}}\n'.encode() for i in range(5000)]  # ~1.5 MB
    store.write_stream("manifest.jsonl", iter(lines))
    assert list(store.read_lines("manifest.jsonl")) == lines
    store.write("no-newline.txt", b"a\nb")
    assert list(store.read_lines("no-newline.txt")) == [b"a\n", b"b"]

    other = store.child("copies")
    store.copy_to("no-newline.txt", other, "copy.txt")
    assert other.read("copy.txt") == b"a\nb"
    assert store.copy_checked("no-newline.txt", other, hashlib.sha256(b"a\nb").hexdigest(),
                              "checked.txt")
    assert not store.copy_checked("no-newline.txt", other, "0" * 64, "refused.txt")
    assert not other.exists("refused.txt")
    local = LocalStorage(tmp_path / "elsewhere")
    store.copy_to("no-newline.txt", local)
    assert local.read("no-newline.txt") == b"a\nb"
    assert sorted(other.list()) == ["checked.txt", "copy.txt"]  # no temporary files left


def test_contract_missing_and_unsafe_keys(contract_store: Storage) -> None:
    store = contract_store
    with pytest.raises(StorageError) as info:
        store.read("nope.jpg")
    assert not isinstance(info.value, (UnsafeKeyError, TransientStorageError))
    for key in UNSAFE_KEYS:
        for attempt in (lambda k=key: store.read(k), lambda k=key: store.write(k, b"x"),
                        lambda k=key: store.exists(k), lambda k=key: store.delete(k),
                        lambda k=key: store.child(k)):
            with pytest.raises(UnsafeKeyError):
                attempt()
    assert list(store.list()) == []


# ---------------------------------------------------------------------------- operators


def test_a_gs_location_without_provider_or_connection_fails_clearly() -> None:
    """The google provider is not installed here: the message says which scheme, which
    connection and what to install, and a retry is not offered (a configuration error)."""
    from airflow_privacy.exceptions import ConfigurationError, is_retryable
    from airflow_privacy.operators.common import open_locations

    with pytest.raises(SettingsError) as info:
        open_locations("aws_default", "gs://my_gcp@bucket/images")
    message = str(info.value)
    assert "'gs'" in message and "'my_gcp'" in message
    assert "apache-airflow-providers-google" in message
    assert "gs://bucket/images" in message  # the location, without the connection id
    assert isinstance(info.value, ConfigurationError) and not is_retryable(info.value)
    with pytest.raises(SettingsError, match="provider's default connection"):
        open_locations("aws_default", "gs://bucket/images")


def test_a_connection_id_in_a_uri_is_not_part_of_its_lineage_dataset() -> None:
    from airflow_privacy.operators.common import lineage_dataset_name

    assert lineage_dataset_name("gs://my_gcp@bucket/a/b") == ("gs://bucket", "a/b")
    assert lineage_dataset_name("s3://conn@bucket/a/") == ("s3://bucket", "a")


def test_a_location_with_credentials_in_its_uri_is_refused_without_echoing_them() -> None:
    from airflow_privacy.operators.common import open_locations

    with pytest.raises(SettingsError) as info:
        open_locations(None, "s3://AKIAKEYID:SECRETVALUE@bucket/p")
    assert "SECRETVALUE" not in str(info.value) and "AKIAKEYID" not in str(info.value)


def test_an_undefined_connection_for_an_attached_scheme_fails_clearly() -> None:
    from airflow_privacy.operators.common import open_locations

    with pytest.raises(SettingsError, match="no filesystem is registered") as info:
        open_locations(None, f"memory://undefined_{uuid.uuid4().hex[:8]}@bucket/p")
    assert "'memory'" in str(info.value)


def test_the_operators_run_a_shard_against_a_memory_filesystem(pipeline: Any) -> None:
    """Any fsspec filesystem Airflow knows runs the stages: here fsspec's memory filesystem,
    attached under a connection id and reached through ObjectStoragePath by the operators
    themselves (no S3, no disk)."""
    from airflow.sdk.io import attach

    from airflow_privacy.core import stages
    from airflow_privacy.core.images import sha256_bytes
    from airflow_privacy.operators.anonymize import AnonymizePeopleOperator
    from airflow_privacy.operators.common import open_locations
    from airflow_privacy.operators.detect import DetectPeopleOperator
    from airflow_privacy.operators.verify import VerifyAnonymizationOperator
    from tests.conftest import SAMPLES

    conn_id = f"privacy_mem_{uuid.uuid4().hex[:8]}"
    fs = MemoryFileSystem(global_store=False, skip_instance_cache=True)
    attach(protocol="memory", conn_id=conn_id, fs=fs)
    base = f"memory://{conn_id}@bucket"
    uris = [f"{base}/{name}" for name in ("src", "work", "report", "release")]
    source, work, report, release = open_locations(None, *uris)
    assert all(isinstance(s, ObjectStorage) and s.fs is fs for s in (source, release))
    assert source.uri == "memory://bucket/src"  # the connection id is not part of it
    images = {"a/bus.jpg": (SAMPLES / "bus.jpg").read_bytes(),
              "zidane.jpg": (SAMPLES / "zidane.jpg").read_bytes()}
    for key, data in images.items():
        source.write(key, data)

    [shard] = stages.list_shards(source, 8, work=work)
    for operator in (DetectPeopleOperator, AnonymizePeopleOperator,
                     VerifyAnonymizationOperator):
        operator(task_id=operator.__name__, source=uris[0], work=uris[1], shard=shard,
                 aws_conn_id=None).execute({})
    records, sha = stages.assemble_manifest(work, report, [shard])
    stages.publish_release(report, work, release, "publish_passing", manifest_sha256=sha,
                           require_validation=False)
    verified = {r["output_key"]: r["output_sha256"] for r in records
                if r["status"] == "verified"}
    assert verified and sorted(release.list()) == sorted([*verified, "_SUCCESS"])
    for key, sha256 in verified.items():
        assert sha256_bytes(release.read(key)) == sha256
        assert release.read(key) != images.get(key)  # people were anonymized
    assert not [p for p in fs.find("/bucket") if ".tmp-" in p]  # no temporary debris
