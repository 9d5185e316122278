"""Faults during a run: storage outages, killed workers, full or refusing disks, bad models.

Each test breaks something for real rather than mocking the code under test:

* the S3 endpoint goes off the network mid-stage (a TCP proxy in front of the real
  moto server stops forwarding, resetting open connections, then comes back with
  the store's state intact: ``tests/fault_proxy.py``);
* a worker process is SIGKILLed in the middle of a shard;
* the release location cannot be written (a path under a regular file) or the disk
  is full (``RLIMIT_FSIZE``: writes fail with EFBIG, which root cannot override);
* model files are missing, truncated or not the pinned ones.

The promise each time: a clear, typed error (retryable where retrying can help),
nothing half-published (no partial object, no ``_SUCCESS`` for an incomplete
release), nothing counted as verified that was not, and a retry that completes
the same release an uninterrupted run makes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from airflow_privacy.cli import main
from airflow_privacy.core import flow, stages
from airflow_privacy.core.batch import run_batch
from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.models import ModelError
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.storage import StorageError, TransientStorageError, open_storage
from tests.conftest import PROJECT, SAMPLES
from tests.fault_proxy import FaultProxy
from tests.s3_server import object_digests, s3_filesystem


def _mirrored(name: str) -> bytes:
    return cv2.imencode(".jpg", cv2.imread(str(SAMPLES / name))[:, ::-1])[1].tobytes()


def _images() -> dict[str, bytes]:
    """Four photos with people, in two shards of two."""
    return {
        "a/zidane.jpg": (SAMPLES / "zidane.jpg").read_bytes(),
        "a/bus.jpg": (SAMPLES / "bus.jpg").read_bytes(),
        "b/zidane-mirrored.jpg": _mirrored("zidane.jpg"),
        "b/bus-mirrored.jpg": _mirrored("bus.jpg"),
    }


def _files(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below ``root`` (hidden ones included)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): sha256_bytes(p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _run_stages(pipeline: Pipeline, source, work, report, release, *, shard_size: int = 2):
    shards = stages.list_shards(source, shard_size, work=work)
    for shard in shards:
        for stage in (stages.detect_shard, stages.anonymize_shard, stages.verify_shard):
            stage(pipeline, source, work, shard)
    _, sha = stages.assemble_manifest(work, report, shards)
    return stages.publish_release(report, work, release, "publish_passing",
                                  manifest_sha256=sha, require_validation=False)


def _without_marker(objects: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in objects.items() if k != "_SUCCESS"}


def _marker_facts(marker: bytes) -> dict[str, Any]:
    """What a _SUCCESS says about the release itself (the manifest differs in its timings)."""
    facts = json.loads(marker)
    return {k: facts[k] for k in ("published", "withheld", "policy", "release_sha256")}


# -- (a) the S3 endpoint goes away mid-run ----------------------------------------------------


def _filesystem(endpoint_url: str) -> Any:
    """As the operators' filesystem (s3fs), with few retries so that an outage fails in a
    second or two."""
    return s3_filesystem(endpoint_url)


def test_s3_outage_mid_stage_is_retryable_and_the_retry_completes_the_same_release(
    pipeline, s3_server, s3_client, s3_bucket
):
    for key, data in _images().items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"src/{key}", Body=data)

    def stores(filesystem: Any, run: str) -> list:
        return [open_storage(f"s3://{s3_bucket}/{prefix}", filesystem=filesystem)
                for prefix in ("src", f"{run}/work", f"{run}/report", f"{run}/release")]

    # the uninterrupted run, straight to the server
    _run_stages(pipeline, *stores(_filesystem(s3_server.endpoint_url), "reference"))
    reference = object_digests(s3_client, s3_bucket, "reference/release")
    assert len(_without_marker(reference)) == 4

    with FaultProxy(s3_server.endpoint_url) as proxy:
        source, work, report, release = stores(_filesystem(proxy.endpoint_url), "run")
        shards = stages.list_shards(source, 2, work=work)
        for shard in shards:
            stages.detect_shard(pipeline, source, work, shard, workers=1)
            stages.anonymize_shard(pipeline, source, work, shard, workers=1)

        # one input at a time (workers=1), so the cut falls on a known input.
        # verify of shard 0: the first input is staged and checkpointed (2 PUTs), then the
        # endpoint dies halfway through uploading the second input's staged output
        proxy.cut_after(2, part=0.5, operations=("PUT ",))
        started = time.monotonic()
        with pytest.raises(TransientStorageError, match="retrying may help"):
            stages.verify_shard(pipeline, source, work, shards[0], workers=1)
        assert proxy.cuts == 1 and not proxy.running
        assert time.monotonic() - started < 30
        staged = object_digests(s3_client, s3_bucket, "run/work/staging")
        assert sorted(staged) == [shards[0]["keys"][0]]  # the cut upload left nothing behind
        records = object_digests(s3_client, s3_bucket, "run/work/records")
        assert len(records) == 1 and "00000.jsonl" not in records  # one input's checkpoint

        # while it is down, every stage fails the same retryable way
        for stage in (stages.detect_shard, stages.verify_shard):
            with pytest.raises(TransientStorageError):
                stage(pipeline, source, work, shards[1], workers=1)

        proxy.start()  # back, same port, the store kept its state: Airflow's retry runs
        retried = stages.verify_shard(pipeline, source, work, shards[0], workers=1)
        assert (retried["skipped"], retried["computed"]) == (1, 1)
        assert retried["verified"] == 2
        stages.verify_shard(pipeline, source, work, shards[1], workers=1)
        _, manifest_sha = stages.assemble_manifest(work, report, shards)

        # publish: the first release object lands, the second is cut mid-upload
        proxy.cut_after(1, part=0.5, operations=(f"PUT /{s3_bucket}/run/release/",))
        with pytest.raises(TransientStorageError):
            stages.publish_release(report, work, release, "publish_passing",
                                   manifest_sha256=manifest_sha, require_validation=False)
        assert proxy.cuts == 2
        partial = object_digests(s3_client, s3_bucket, "run/release")
        assert "_SUCCESS" not in partial  # incomplete, and it says so
        # Copies run in parallel and a server-side copy carries no body, so the cut may fall
        # after the server made the copy: any number may have landed, but never the marker.
        assert 1 <= len(partial) <= 4
        for key, sha in partial.items():  # what is there is whole: a verified output
            assert reference[key] == sha

        proxy.start()
        result = stages.publish_release(report, work, release, "publish_passing",
                                        manifest_sha256=manifest_sha, require_validation=False)
    assert result["published"] == 4
    published = object_digests(s3_client, s3_bucket, "run/release")
    assert _without_marker(published) == _without_marker(reference)  # same keys, same bytes
    read = s3_client.get_object
    assert _marker_facts(read(Bucket=s3_bucket, Key="run/release/_SUCCESS")["Body"].read()) == (
        _marker_facts(read(Bucket=s3_bucket, Key="reference/release/_SUCCESS")["Body"].read()))
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket)
    assert not uploads.get("Uploads")


# -- (b) a worker killed mid-shard --------------------------------------------------------------

# One "worker": every stage of every shard, in order, in a fresh process. Verification of
# the input named on the command line hangs, so the parent can SIGKILL it mid-shard.
WORKER = """
import json, sys, time
from airflow_privacy.core import flow, stages
from airflow_privacy.storage import open_storage
source, work, victim = open_storage(sys.argv[1]), open_storage(sys.argv[2]), sys.argv[3]
pipeline = stages.build_pipeline({})
def verify_or_hang(pipeline, state):
    if state.record["source"] == victim:
        print("VERIFYING " + victim, flush=True)
        time.sleep(600)
    return flow.verify(pipeline, state)
flow.VERIFY = (flow.decode, verify_or_hang)
for shard in stages.list_shards(source, 2, work=work):
    for stage in (stages.detect_shard, stages.anonymize_shard, stages.verify_shard):
        done = stage(pipeline, source, work, shard, workers=1)  # one input at a time
        print("DONE " + json.dumps([stage.__name__, done]), flush=True)
"""


def test_a_worker_killed_mid_shard_leaves_only_the_missing_work_for_the_rerun(
    pipeline, tmp_path, monkeypatch
):
    source = _write_tree(tmp_path / "src", _images())
    victim = "b/zidane-mirrored.jpg"  # the second input of shard 00001 (keys are sorted)
    work, report, release = tmp_path / "work", tmp_path / "report", tmp_path / "release"

    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(source), str(work), victim],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT,
    )
    lines = []
    try:
        deadline = time.monotonic() + 300
        for line in worker.stdout:
            lines.append(line)
            if line.startswith("VERIFYING ") or time.monotonic() > deadline:
                break
        assert lines and lines[-1] == f"VERIFYING {victim}\n", "".join(lines) + worker.stderr.read()
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=60)
    assert worker.returncode == -signal.SIGKILL
    finished = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("DONE ")]
    assert [name for name, _ in finished] == ["detect_shard", "anonymize_shard", "verify_shard",
                                             "detect_shard", "anonymize_shard"]
    # the killed shard wrote no record file: a scheduler sees the task as not done
    assert not (work / "records" / "00001.jsonl").exists()
    assert (work / "records" / "00000.jsonl").exists()
    assert not release.exists()
    assert not [p for p in work.rglob("*") if p.name.startswith(".tmp-")]
    shard0_records = (work / "records" / "00000.jsonl").read_bytes()

    # the rerun (every task again, as after a lost worker) counts what really runs
    calls: dict[str, list[str]] = {"detect": [], "verify": []}

    def counting_find(pipeline, state):
        calls["detect"].append(state.record["source"])
        return flow.find(pipeline, state)

    def counting_verify(pipeline, state):
        calls["verify"].append(state.record["source"])
        return flow.verify(pipeline, state)

    monkeypatch.setattr(flow, "FIND", (flow.decode, counting_find))
    monkeypatch.setattr(flow, "VERIFY", (flow.decode, counting_verify))
    src, wrk = open_storage(str(source)), open_storage(str(work))
    results = {}
    shards = stages.list_shards(src, 2, work=wrk)
    for shard in shards:
        for stage in (stages.detect_shard, stages.anonymize_shard, stages.verify_shard):
            results[stage.__name__, shard["shard_id"]] = stage(pipeline, src, wrk, shard)
    assert calls == {"detect": [], "verify": [victim]}  # only the missing work
    skipped = {k: (r["skipped"], r["computed"]) for k, r in results.items()}
    assert skipped == {
        ("detect_shard", "00000"): (2, 0), ("anonymize_shard", "00000"): (2, 0),
        ("verify_shard", "00000"): (2, 0),
        ("detect_shard", "00001"): (2, 0), ("anonymize_shard", "00001"): (2, 0),
        ("verify_shard", "00001"): (1, 1),
    }
    assert (work / "records" / "00000.jsonl").read_bytes() == shard0_records
    _, sha = stages.assemble_manifest(wrk, open_storage(str(report)), shards)
    stages.publish_release(open_storage(str(report)), wrk, open_storage(str(release)),
                           "publish_passing", manifest_sha256=sha, require_validation=False)

    # an uninterrupted run gives the same release
    monkeypatch.undo()
    reference = tmp_path / "reference"
    _run_stages(pipeline, src, *(open_storage(str(reference / n))
                                 for n in ("work", "report", "release")))
    assert _without_marker(_files(release)) == _without_marker(_files(reference / "release"))
    assert len(_without_marker(_files(release))) == 4
    assert _marker_facts((release / "_SUCCESS").read_bytes()) == _marker_facts(
        (reference / "release" / "_SUCCESS").read_bytes())


# -- (c) the destination cannot be written ------------------------------------------------------


def _cli(source: Path, release: Path, report: Path, *extra: str) -> int:
    return main(["run", str(source), str(release), "--report", str(report), "-q",
                 "--workers", "1", *extra])


def test_a_release_location_that_cannot_be_created_fails_clearly_and_publishes_nothing(
    models, tmp_path, capsys
):
    source = _write_tree(tmp_path / "src", {"zidane.jpg": _images()["a/zidane.jpg"]})
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the release's parent folder should be")
    release, report = blocker / "release", tmp_path / "report"
    assert _cli(source, release, report) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: cannot write ") and "Not a directory" in error
    assert blocker.read_text().startswith("a regular file")  # untouched
    assert not (report / "summary.json").exists()  # the run did not complete


def test_a_write_refused_mid_publish_leaves_no_partial_object_and_no_marker(
    models, tmp_path, capsys
):
    images = _images()
    source = _write_tree(tmp_path / "src", {"a/zidane.jpg": images["a/zidane.jpg"],
                                            "b/zidane.jpg": images["b/zidane-mirrored.jpg"]})
    release, report = tmp_path / "release", tmp_path / "report"
    release.mkdir()
    (release / "b").write_text("a file where the folder b/ must go")  # refuses b/zidane.jpg
    assert _cli(source, release, report) == 1
    assert "cannot write" in capsys.readouterr().err
    records = {json.loads(line)["source"]: json.loads(line)
               for line in (report / "manifest.jsonl").read_text().splitlines()}
    left = _files(release)
    assert sorted(left) == ["a/zidane.jpg", "b"]  # no _SUCCESS, no temporary file
    assert left["a/zidane.jpg"] == records["a/zidane.jpg"]["output_sha256"]  # whole
    # fixed, the rerun publishes all of it
    (release / "b").unlink()
    assert _cli(source, release, report) == 0
    assert sorted(_files(release)) == ["_SUCCESS", "a/zidane.jpg", "b/zidane.jpg"]


@pytest.fixture
def file_size_limit():
    """Set RLIMIT_FSIZE for this process (writes past it fail with EFBIG, even for root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_fails_the_run_clearly_with_nothing_published(
    models, tmp_path, capsys, file_size_limit
):
    images = _images()
    source = _write_tree(tmp_path / "src", {"bus.jpg": images["a/bus.jpg"],
                                            "zidane.jpg": images["a/zidane.jpg"]})
    release, report = tmp_path / "release", tmp_path / "report"
    file_size_limit(32 * 1024)  # the anonymized photos are larger
    try:
        code = _cli(source, release, report)
    finally:
        file_size_limit(resource.RLIM_INFINITY)
    assert code == 1
    error = capsys.readouterr().err
    assert "cannot write" in error and "File too large" in error
    assert not release.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]  # no partial
    assert _files(source) == {k: sha256_bytes(v) for k, v in (
        ("bus.jpg", images["a/bus.jpg"]), ("zidane.jpg", images["a/zidane.jpg"]))}


# -- (d) verification cannot run ---------------------------------------------------------------


@pytest.fixture
def model_copy(models, tmp_path, monkeypatch) -> Path:
    """A private model directory holding copies of the pinned models."""
    directory = tmp_path / "models"
    directory.mkdir()
    for name in ("yolo11n-pose.pt", "centerface.onnx"):
        shutil.copy(models / name, directory / name)
    monkeypatch.setenv("AIRFLOW_PRIVACY_MODEL_DIR", str(directory))
    return directory


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100_000])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# (file to break, how, settings pointing at it, what the error must say)
MODEL_FAULTS = {
    "yolo-missing": ("yolo11n-pose.pt", Path.unlink, {}, "not found"),
    "yolo-sha256-mismatch": ("yolo11n-pose.pt", _flip_a_byte, {}, "refusing to load"),
    "yolo-truncated": ("yolo11n-pose.pt", _truncate, {}, "refusing to load"),
    "yolo-corrupt-unpinned": ("custom.pt", _truncate, {"detection": {"model": "{dir}/custom.pt"}},
                              "cannot load model"),
    "yolo-pin-mismatch": ("yolo11n-pose.pt", None,
                          {"detection": {"model_sha256": "0" * 64}}, "refusing to load"),
    "centerface-missing": ("centerface.onnx", Path.unlink, {}, "not found"),
    "centerface-sha256-mismatch": ("centerface.onnx", _flip_a_byte, {}, "refusing to load"),
    "centerface-truncated": ("centerface.onnx", _truncate, {}, "refusing to load"),
    "centerface-corrupt-unpinned": ("faces.onnx", _truncate,
                                    {"verification": {"face_model": "{dir}/faces.onnx"}},
                                    "cannot load face model"),
}


@pytest.mark.parametrize("fault", sorted(MODEL_FAULTS))
def test_a_missing_or_wrong_model_fails_the_run_before_anything_is_published(
    fault, model_copy, tmp_path, capsys
):
    target, breaks, settings, message = MODEL_FAULTS[fault]
    path = model_copy / target
    if not path.exists():  # a copy under another name, so that no pin applies
        shutil.copy(model_copy / ("yolo11n-pose.pt" if target.endswith(".pt")
                                  else "centerface.onnx"), path)
    if breaks is not None:
        breaks(path)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings).replace("{dir}", str(model_copy)))
    source = _write_tree(tmp_path / "src", {"zidane.jpg": _images()["a/zidane.jpg"]})
    release, report = tmp_path / "release", tmp_path / "report"
    code = _cli(source, release, report, "--settings", str(settings_file))
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error, error
    assert "Traceback" not in error
    assert not release.exists()  # nothing published, no _SUCCESS
    assert not report.exists()  # and no manifest could count the image as anything


def test_a_verifier_that_breaks_mid_batch_fails_the_run_and_counts_nothing_as_verified(
    pipeline, tmp_path
):
    """Verification that cannot run on one image (the face model raising) is not a pass."""

    class BrokenOnSecond:
        name, sha256 = "centerface.onnx", "0" * 64

        def __init__(self) -> None:
            self.calls = 0

        def detect(self, pixels):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("onnxruntime: device lost")
            return []

    broken = Pipeline(RunSettings(), detector=pipeline.detector, face_finder=BrokenOnSecond())
    source = _write_tree(tmp_path / "src", {"a.jpg": _images()["a/zidane.jpg"],
                                            "b.jpg": _images()["a/bus.jpg"]})
    stores = [open_storage(str(tmp_path / n)) for n in ("src", "release", "report")]
    with pytest.raises(RuntimeError, match="device lost"):
        run_batch(*stores[:1], stores[1], stores[2], broken, workers=1)
    assert _files(tmp_path / "release") == {}
    assert not (tmp_path / "report" / "manifest.jsonl").exists()
    assert _files(source)  # untouched


def test_a_model_broken_between_stages_stops_the_verify_task_and_the_publish(
    pipeline, model_copy, tmp_path
):
    """Each Airflow task builds its pipeline afresh: a bad face model fails verify loudly."""
    source = open_storage(str(_write_tree(tmp_path / "src",
                                          {"zidane.jpg": _images()["a/zidane.jpg"]})))
    work, report = open_storage(str(tmp_path / "work")), open_storage(str(tmp_path / "report"))
    shards = stages.list_shards(source, 2, work=work)
    stages.detect_shard(pipeline, source, work, shards[0])
    stages.anonymize_shard(pipeline, source, work, shards[0])
    _flip_a_byte(model_copy / "centerface.onnx")
    stages._PIPELINES.clear()  # a fresh worker process (models load when first needed)
    with pytest.raises(ModelError, match="refusing to load"):
        stages.verify_shard(stages.build_pipeline({}), source, work, shards[0])
    assert not work.exists("records/00000.jsonl")
    with pytest.raises((RuntimeError, StorageError)):  # no records: no manifest for part of it
        stages.assemble_manifest(work, report, shards)
    assert not report.exists("manifest.jsonl")
    stages._PIPELINES.clear()  # leave no pipeline built from the broken copy
