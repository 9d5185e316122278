"""Hostile and odd inputs end to end: through the CLI, the sharded stages, and S3.

The corpus is generated here (nothing is committed) and run through the CLI
once; every test then checks one promise on that run's manifest, quarantine,
release and source folder:

* each input has one manifest record, with a stable reason code when rejected;
* a rejected input is quarantined (its source bytes, for review) and absent
  from the release, and the rest of the batch completes;
* valid but unusual formats are decoded, anonymized and published;
* an EXIF-rotated photo is anonymized in the orientation a viewer displays;
* odd file names keep their names; symlinks and keys leaving a root are
  refused, and nothing is read or written outside the roots (an audit hook
  records every file the run opens, creates, renames or deletes);
* the source is never modified.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image

from airflow_privacy.cli import main
from airflow_privacy.core.geometry import covered_fraction, region_mask, to_pixels
from airflow_privacy.core.images import sha256_bytes, sniff_format
from airflow_privacy.storage import open_storage
from tests.conftest import SAMPLES

ZIDANE = SAMPLES / "zidane.jpg"  # 1280 x 720, two people
BUS = SAMPLES / "bus.jpg"


# -- the corpus ----------------------------------------------------------------------------------


@dataclass
class Case:
    """One input file and what must become of it."""

    data: bytes
    code: str | None = None  # the rejection code; None: verified and published
    published_as: str | None = None  # output name when it differs from the input's
    quarantined: bool = True  # rejected inputs: are the source bytes kept for review?
    fmt: str | None = None  # content format of the published output
    size: tuple[int, int] | None = None  # (width, height) of the published output
    alpha: bool = False  # the published output keeps an alpha channel


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _rotated_jpeg(orientation: int) -> bytes:
    """zidane.jpg stored turned, with the EXIF orientation that turns it back for display."""
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    stored = Image.open(ZIDANE).transpose(turn)  # 720 x 1280 as stored
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return _save(stored, "JPEG", quality=95, exif=exif)


def _big_png(width: int, height: int) -> bytes:
    """A real, complete greyscale PNG (all black) of ``width`` x ``height``: tiny on disk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    pixels = zlib.compress(b"\x00" * ((width + 1) * height), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def _small(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A small person-free picture (smooth gradients), quick to process."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    np.full_like(x, (seed * 53) % 256)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


@functools.cache
def build_corpus() -> dict[str, Case]:
    zidane = Image.open(ZIDANE)
    zidane_bytes = ZIDANE.read_bytes()
    rgba = zidane.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(zidane.size))  # varying transparency
    deep16 = cv2.imencode(".png", cv2.imread(str(ZIDANE)).astype(np.uint16) * 257)[1].tobytes()
    frames = [_small(1), _small(2)]
    small_jpeg = _save(_small(3), "JPEG", quality=90)
    zw, zh = zidane.size
    return {
        # content that is not an image, or not all of one
        "empty.jpg": Case(b"", "empty_file"),
        "truncated.jpg": Case(zidane_bytes[: len(zidane_bytes) // 2], "truncated"),
        "notes.jpg": Case(b"Meeting notes: call Anna about the photos.\n" * 20, "not_an_image"),
        "page.jpg": Case(b"<!DOCTYPE html><html><body><img src=x></body></html>", "not_an_image"),
        "animated.gif": Case(_save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
                             "multi_frame"),
        "pages.tiff": Case(_save(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
                           "multi_frame"),
        "huge.png": Case(_big_png(8000, 7000), "too_many_pixels"),  # 56 MP > 50 MP limit
        # valid, if unusual
        "zidane.jpg": Case(zidane_bytes, fmt="JPEG", size=(zw, zh)),
        "alpha.png": Case(_save(rgba, "PNG"), fmt="PNG", size=(zw, zh), alpha=True),
        "deep-16bit.png": Case(deep16, fmt="PNG", size=(zw, zh)),
        "grey.jpg": Case(_save(zidane.convert("L"), "JPEG", quality=95), fmt="JPEG",
                         size=(zw, zh)),
        "cmyk.jpg": Case(_save(zidane.convert("CMYK"), "JPEG", quality=95), fmt="JPEG",
                         size=(zw, zh)),
        "rotated-6.jpg": Case(_rotated_jpeg(6), fmt="JPEG", size=(zw, zh)),
        "rotated-8.jpg": Case(_rotated_jpeg(8), fmt="JPEG", size=(zw, zh)),
        "photo.webp": Case(_save(zidane, "WEBP", quality=95), fmt="WEBP", size=(zw, zh)),
        "bus.tiff": Case(_save(Image.open(BUS), "TIFF"), fmt="TIFF", size=Image.open(BUS).size),
        "still.gif": Case(_save(_small(4), "GIF"), published_as="still.png", fmt="PNG",
                          size=(96, 64)),
        "one-pixel.png": Case(_save(_small(5, (1, 1)), "PNG"), fmt="PNG", size=(1, 1)),
        "thin-row.png": Case(_save(_small(6, (4000, 1)), "PNG"), fmt="PNG", size=(4000, 1)),
        "thin-column.png": Case(_save(_small(7, (1, 4000)), "PNG"), fmt="PNG", size=(1, 4000)),
        # odd names
        "with space.jpg": Case(small_jpeg, fmt="JPEG", size=(96, 64)),
        "ünïcödé 写真.jpg": Case(small_jpeg, fmt="JPEG", size=(96, 64)),
        "-leading-dash.jpg": Case(small_jpeg, fmt="JPEG", size=(96, 64)),
        "new\nline.jpg": Case(small_jpeg, fmt="JPEG", size=(96, 64)),
        "sub dir/--x.jpeg": Case(small_jpeg, fmt="JPEG", size=(96, 64)),
    }


REJECTED = sorted(name for name, case in build_corpus().items() if case.code)
PUBLISHED = sorted(name for name, case in build_corpus().items() if not case.code)


# -- watching the file system ------------------------------------------------------------------


class FileAudit:
    """Every path below ``watched`` that is opened, created, renamed or removed while active.

    A ``sys.addaudithook`` hook (hooks cannot be removed, so it does nothing while
    inactive). Paths are resolved when seen, so a read through a symlink is recorded
    as a read of its target.
    """

    _installed: FileAudit | None = None
    EVENTS = {"open": 1, "os.rename": 2, "os.remove": 1, "os.mkdir": 1, "os.rmdir": 1,
              "os.symlink": 2, "os.link": 2, "os.truncate": 1, "os.chmod": 1}

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def __init__(self, watched: Path) -> None:
        self.watched = str(watched.resolve())
        self.seen: list[tuple[str, str]] = []  # (event, resolved path); "open" or "write"
        self.active = False
        if FileAudit._installed is None:
            sys.addaudithook(FileAudit._hook)
        FileAudit._installed = self

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        audit = FileAudit._installed
        if audit is None or not audit.active or event not in FileAudit.EVENTS:
            return
        if event == "open":
            mode, flags = args[1], args[2]
            writes = bool(isinstance(mode, str) and set(mode) & set("wax+")) or bool(
                isinstance(flags, int) and flags & FileAudit.WRITE_FLAGS)
            kind = "write" if writes else "open"
        else:
            kind = "write"
        for path in args[: FileAudit.EVENTS[event]]:
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if isinstance(path, str | os.PathLike):
                resolved = os.path.realpath(path)
                if resolved.startswith(audit.watched):
                    audit.seen.append((kind, resolved))

    def __enter__(self) -> FileAudit:
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False

    def outside(self, *roots: Path, kind: str | None = None) -> list[tuple[str, str]]:
        """What was touched outside every one of ``roots`` (only ``kind`` events, if given)."""
        allowed = [str(r.resolve()) for r in roots]
        return [(event, path) for event, path in self.seen
                if (kind is None or event == kind)
                and not any(path == a or path.startswith(a + os.sep) for a in allowed)]


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry below ``root`` (symlinks not followed): file sha256 or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def released_files(release: Path) -> list[str]:
    return sorted(p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file())


# -- one CLI run over the whole corpus ------------------------------------------------------------


@dataclass
class CorpusRun:
    root: Path
    source: Path
    release: Path
    report: Path
    outside: Path
    exit_code: int
    records: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    before: dict[str, str]
    after: dict[str, str]
    outside_before: dict[str, str]
    outside_after: dict[str, str]
    audit: FileAudit
    stdout: str


@pytest.fixture(scope="module")
def corpus_run(models, tmp_path_factory) -> CorpusRun:
    root = tmp_path_factory.mktemp("corpus")
    source, release, report = root / "-in put", root / "release", root / "report"
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(ZIDANE.read_bytes() + b"secret")  # must stay unread
    (outside / "album").mkdir()
    (outside / "album" / "private.jpg").write_bytes(BUS.read_bytes())
    for name, case in build_corpus().items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(case.data)
    (source / "escape.jpg").symlink_to(outside / "secret.jpg")  # a file link leaving the root
    (source / "album").symlink_to(outside / "album", target_is_directory=True)
    (source / "README.txt").write_text("not an image: ignored, listed in the summary")
    before, outside_before = tree_digest(source), tree_digest(outside)

    audit = FileAudit(root)
    capture = io.StringIO()
    stdout, sys.stdout = sys.stdout, capture
    try:
        with audit:  # "--": SRC starts with a dash
            code = main(["run", "-q", "--report", str(report), "--", str(source), str(release)])
    finally:
        sys.stdout = stdout
    records = {}
    for line in (report / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["source"]] = record
    return CorpusRun(root, source, release, report, outside, code, records,
                     json.loads((report / "summary.json").read_text()), before,
                     tree_digest(source), outside_before, tree_digest(outside), audit,
                     capture.getvalue())


def test_every_input_has_one_record_and_the_batch_completes(corpus_run):
    corpus = build_corpus()
    assert corpus_run.exit_code == 3  # some rejected: "incomplete", not a failed run
    # every listed file has a record: README.txt too, skipped as not an image
    assert sorted(corpus_run.records) == sorted([*corpus, "escape.jpg", "README.txt"])
    assert corpus_run.records["README.txt"]["error"]["code"] == "unsupported_format"
    summary = corpus_run.summary
    assert summary["images"] == len(corpus) + 2
    assert summary["errors"] == len(REJECTED) + 2  # + the escaping symlink, + README.txt
    assert summary["verified"] == summary["published"] == len(PUBLISHED)
    assert summary["quarantined"] == 0 and summary["ignored"] == 1
    assert f"{len(PUBLISHED)} published" in corpus_run.stdout
    marker = json.loads((corpus_run.release / "_SUCCESS").read_text())
    assert marker["published"] == len(PUBLISHED)


@pytest.mark.parametrize("name", REJECTED)
def test_a_rejected_input_is_recorded_by_its_hash_and_not_published(corpus_run, name):
    """Data minimisation: the manifest keeps the sha256; the source bytes are not copied
    (``--keep-rejected-source`` keeps them: tests/test_compliance.py)."""
    case = build_corpus()[name]
    record = corpus_run.records[name]
    assert record["status"] == "error"
    assert record["error"]["code"] == case.code, record["error"]
    assert record["error"]["message"]
    assert record["output_sha256"] is None
    assert record["input_sha256"] == sha256_bytes(case.data)
    assert record["quarantine"] is None
    assert not (corpus_run.report / "quarantine" / name).exists()
    assert not (corpus_run.release / record["output_key"]).exists()
    assert not (corpus_run.release / name).exists()


def test_an_oversized_image_is_rejected_from_its_header_before_decoding(corpus_run):
    record = corpus_run.records["huge.png"]
    assert "8000x7000" in record["error"]["message"] and "not decoded" in record["error"]["message"]
    assert "decode" not in record["timings_ms"]  # it never reached the decoder's pixels
    assert record["width"] is None and record["height"] is None


def test_multi_frame_images_publish_no_frame(corpus_run):
    published = released_files(corpus_run.release)
    assert not [p for p in published if p.startswith(("animated", "pages"))]
    for name in ("animated.gif", "pages.tiff"):
        assert "more than one frame" in corpus_run.records[name]["error"]["message"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_a_valid_odd_input_is_processed_and_published_correctly(corpus_run, name):
    case = build_corpus()[name]
    record = corpus_run.records[name]
    assert record["status"] == "verified", record["error"]
    assert record["output_key"] == (case.published_as or name)
    assert record["quarantine"] is None
    published = (corpus_run.release / record["output_key"]).read_bytes()
    assert sha256_bytes(published) == record["output_sha256"]
    assert sniff_format(published) == case.fmt
    pixels = cv2.imdecode(np.frombuffer(published, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (pixels.shape[1], pixels.shape[0]) == case.size
    assert (pixels.ndim == 3 and pixels.shape[2] == 4) == case.alpha
    assert (record["width"], record["height"]) == case.size


def test_the_release_holds_exactly_the_verified_outputs(corpus_run):
    expected = sorted([*(corpus_run.records[n]["output_key"] for n in PUBLISHED), "_SUCCESS"])
    assert released_files(corpus_run.release) == expected


def test_unusual_pixel_formats_find_the_same_people(corpus_run):
    reference = corpus_run.records["zidane.jpg"]
    assert reference["persons_detected"] == 2
    for name in ("alpha.png", "deep-16bit.png", "grey.jpg", "cmyk.jpg", "photo.webp"):
        record = corpus_run.records[name]
        assert record["persons_detected"] >= 2, name
        mask = region_mask([r["box"] for r in record["regions"]], 1280, 720)
        for person in reference["detections"]:
            assert covered_fraction(person["box"], mask) >= 0.9, (name, person)
    assert corpus_run.records["bus.tiff"]["persons_detected"] >= 4


def _detail(pixels: np.ndarray, box: list[float]) -> float:
    x1, y1, x2, y2 = to_pixels(tuple(box), pixels.shape[1], pixels.shape[0])
    grey = cv2.cvtColor(pixels[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@pytest.mark.parametrize("name", ["rotated-6.jpg", "rotated-8.jpg"])
def test_an_exif_rotated_photo_is_anonymized_in_its_displayed_orientation(corpus_run, name):
    """The stored pixels are turned by 90 degrees; the people must be hidden where a viewer
    sees them, i.e. the regions found on the upright zidane.jpg, in an upright output."""
    record = corpus_run.records[name]
    assert record["status"] == "verified"
    assert (record["width"], record["height"]) == (1280, 720)  # displayed, not stored (720x1280)
    original = cv2.imread(str(ZIDANE))
    published = cv2.imread(str(corpus_run.release / name))
    assert published.shape == original.shape  # upright, and carries no EXIF to turn it again
    mask = region_mask([r["box"] for r in record["regions"]], 1280, 720)
    people = corpus_run.records["zidane.jpg"]["detections"]
    assert len(people) == 2
    for person in people:
        assert covered_fraction(person["box"], mask) >= 0.9, person
        # the person's pixels lost their detail in the published (upright) image
        assert _detail(published, person["box"]) < 0.25 * _detail(original, person["box"])
    # and everything outside the regions is the same picture, the same way up
    diff = np.abs(published.astype(np.int16) - original.astype(np.int16)).mean(axis=2)
    assert diff[~mask].mean() < 6


@pytest.mark.parametrize("name", ["with space.jpg", "ünïcödé 写真.jpg", "-leading-dash.jpg",
                                  "new\nline.jpg", "sub dir/--x.jpeg"])
def test_odd_file_names_are_published_under_the_same_name(corpus_run, name):
    assert (corpus_run.release / name).is_file()
    assert corpus_run.records[name]["output_key"] == name


def test_a_symlink_leaving_the_source_root_is_rejected_and_never_read(corpus_run):
    record = corpus_run.records["escape.jpg"]
    assert record["status"] == "error" and record["error"]["code"] == "unsafe_path"
    assert record["quarantine"] is None  # its bytes were never read, so none are kept
    assert record["input_sha256"] is None
    secret = sha256_bytes((corpus_run.outside / "secret.jpg").read_bytes())
    assert secret not in {r.get("input_sha256") for r in corpus_run.records.values()}
    assert not (corpus_run.release / "escape.jpg").exists()
    # a symlinked folder is not followed: nothing below it is listed, read or published
    assert not [k for k in corpus_run.records if k.startswith("album")]
    everything = [p for p in corpus_run.root.rglob("*") if p.is_file() and not p.is_symlink()]
    copies = [p for p in everything if corpus_run.outside not in p.parents
              and sha256_bytes(p.read_bytes()) == secret]
    assert copies == []


def test_nothing_is_read_or_written_outside_the_roots(corpus_run):
    audit = corpus_run.audit
    assert audit.seen  # the hook did watch the run
    assert audit.outside(corpus_run.source, corpus_run.release, corpus_run.report) == []
    # the source is only ever read
    assert audit.outside(corpus_run.release, corpus_run.report, kind="write") == []
    assert ("open", str((corpus_run.source / "zidane.jpg").resolve())) in audit.seen


def test_the_source_is_never_modified(corpus_run):
    assert corpus_run.after == corpus_run.before
    assert corpus_run.outside_after == corpus_run.outside_before


# -- name collisions -----------------------------------------------------------------------------


def test_an_input_that_would_take_another_inputs_output_name_is_rejected(models, tmp_path):
    """x.gif is published as x.png (GIF cannot be written): beside a real x.png it must not
    overwrite that image, nor stop the batch."""
    source, release, report = tmp_path / "src", tmp_path / "rel", tmp_path / "rep"
    source.mkdir()
    png, gif = _save(_small(8), "PNG"), _save(_small(9), "GIF")
    (source / "x.png").write_bytes(png)
    (source / "x.gif").write_bytes(gif)
    assert main(["run", str(source), str(release), "--report", str(report), "-q"]) == 3
    records = {json.loads(line)["source"]: json.loads(line)
               for line in (report / "manifest.jsonl").read_text().splitlines()}
    assert records["x.png"]["status"] == "verified"
    assert records["x.gif"]["error"]["code"] == "output_name_collision"
    assert records["x.gif"]["input_sha256"] == sha256_bytes(gif)
    assert not (report / "quarantine" / "x.gif").exists()  # hash only, by default
    assert released_files(release) == ["_SUCCESS", "x.png"]
    assert sha256_bytes((release / "x.png").read_bytes()) == records["x.png"]["output_sha256"]


# -- the sharded stages: keys that leave the root ---------------------------------------------


def _run_stages(pipeline, source, work, report, release, shard_size=8):
    from airflow_privacy.core import stages

    shards = stages.list_shards(source, shard_size, work=work)
    for shard in shards:
        for stage in (stages.detect_shard, stages.anonymize_shard, stages.verify_shard):
            stage(pipeline, source, work, shard)
    records, sha = stages.assemble_manifest(work, report, shards)
    stages.publish_release(report, work, release, "publish_passing", manifest_sha256=sha,
                           require_validation=False)
    return shards, {r["source"]: r for r in records}


def test_stage_keys_with_dotdot_or_absolute_paths_are_refused(pipeline, tmp_path):
    """A shard is an XCom: if it were tampered with, its keys still cannot leave the root."""
    from airflow_privacy.core import stages

    root = tmp_path / "roots"
    source = root / "src"
    source.mkdir(parents=True)
    (source / "ok.jpg").write_bytes(_save(_small(10), "JPEG"))
    (tmp_path / "secret.jpg").write_bytes(ZIDANE.read_bytes())
    outside_before = tree_digest(tmp_path)
    src, work, report, release = (open_storage(str(root / n))
                                  for n in ("src", "work", "report", "release"))
    shard = {"shard_id": "00000",
             "keys": ["../../secret.jpg", str(tmp_path / "secret.jpg"), "a/../../../secret.jpg",
                      "ok.jpg"]}
    with FileAudit(tmp_path) as audit:
        for stage in (stages.detect_shard, stages.anonymize_shard, stages.verify_shard):
            stage(pipeline, src, work, shard)
        records, sha = stages.assemble_manifest(work, report, [shard])
        stages.publish_release(report, work, release, "publish_passing", manifest_sha256=sha,
                               require_validation=False)
    by_source = {r["source"]: r for r in records}
    for key in shard["keys"][:3]:
        assert by_source[key]["status"] == "error"
        assert by_source[key]["error"]["code"] == "unsafe_path", by_source[key]["error"]
        assert by_source[key]["quarantine"] is None
    assert by_source["ok.jpg"]["status"] == "verified"
    assert released_files(root / "release") == ["_SUCCESS", "ok.jpg"]
    assert audit.outside(root) == []
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("roots")} == {
        k: v for k, v in outside_before.items() if not k.startswith("roots")}


def test_s3_keys_with_dotdot_are_refused_by_the_stages(pipeline, s3_fs, s3_client, s3_bucket):
    """Objects uploaded with raw keys (``src/../x``) are listed, rejected, never copied out."""
    uploads = {
        "src/ok.jpg": _save(_small(11), "JPEG"),
        "src/../evil.jpg": ZIDANE.read_bytes(),
        "src/a/../../evil2.jpg": ZIDANE.read_bytes(),
        "src/x\\..\\..\\evil3.jpg": ZIDANE.read_bytes(),
        "src//absolute.jpg": ZIDANE.read_bytes(),
        "src/page.jpg": b"<html>not an image</html>",
        "src/empty.jpg": b"",
    }
    for key, body in uploads.items():
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    stores = [open_storage(f"s3://{s3_bucket}/{p}", filesystem=s3_fs)
              for p in ("src", "work", "report", "release")]
    _, records = _run_stages(pipeline, *stores)
    assert sorted(records) == sorted(k[len("src/"):] for k in uploads)
    for key in ("../evil.jpg", "a/../../evil2.jpg", "x\\..\\..\\evil3.jpg", "/absolute.jpg"):
        assert records[key]["error"]["code"] == "unsafe_path", records[key]
        assert records[key]["quarantine"] is None
    assert records["page.jpg"]["error"]["code"] == "not_an_image"
    assert records["empty.jpg"]["error"]["code"] == "empty_file"
    assert records["ok.jpg"]["status"] == "verified"

    def body(key):
        return s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()

    keys = [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket) for o in page.get("Contents", [])]
    assert [k for k in keys if k.startswith("release/")] == ["release/_SUCCESS",
                                                           "release/ok.jpg"]
    # nothing was written beside the four prefixes, and no key we wrote climbs out of one
    assert {k.split("/", 1)[0] for k in keys} == {"src", "work", "report", "release"}
    ours = [k for k in keys if k not in uploads]
    assert not [k for k in ours if ".." in k.replace("\\", "/").split("/") or "//" in k]
    assert "work/quarantine/page.jpg" not in keys  # a rejected input: only its sha256 is kept
    for key, data in uploads.items():  # the source is untouched
        assert body(key) == data
