"""Release compliance: the audit trail, data minimisation, the downstream contract, first run.

Real parts throughout: the real model, real storage, real ``dag.test()`` (triggers
run in-process), real Great Expectations, headless Chromium for the gate report.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from airflow_privacy.core.batch import run_batch
from airflow_privacy.core.images import encode_image
from airflow_privacy.core.release import check_release
from airflow_privacy.core.report import verify_attestation
from airflow_privacy.core.retention import Retention, expire_quarantine
from airflow_privacy.exceptions import ConfigurationError, NamingError, is_retryable
from airflow_privacy.storage import open_storage
from tests.airflow_env import DAGS, run_dag_test
from tests.conftest import SAMPLES

KEY = b"an attestation key of 32 bytes!!"
DAG_ID = "example_anonymize_folder"


def _source(root: Path) -> Path:
    """bus.jpg, an iPhone-named JPEG, a real HEIC, an AVIF, a corrupt JPEG and a text file."""
    root.mkdir(parents=True)
    zidane = cv2.imread(str(SAMPLES / "zidane.jpg"))
    (root / "bus.jpg").write_bytes((SAMPLES / "bus.jpg").read_bytes())
    (root / "IMG_0001.HEIC").write_bytes((SAMPLES / "zidane.jpg").read_bytes())
    (root / "phone.heic").write_bytes(encode_image(zidane, ".heic"))
    (root / "phone.avif").write_bytes(encode_image(zidane, ".avif"))
    (root / "broken.jpg").write_bytes((SAMPLES / "bus.jpg").read_bytes()[:5000])
    (root / "notes.txt").write_text("a note")
    return root


def _batch(pipeline, root: Path, **options):
    src, rel, rep = (open_storage(str(root / n)) for n in ("src", "rel", "rep"))
    return run_batch(src, rel, rep, pipeline, **options)


@pytest.fixture(scope="module")
def batch(pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("compliance")
    _source(root / "src")
    result = _batch(pipeline, root, run={"run_id": "first run", "driver": "test"},
                    attestation_key=KEY, attestation_key_id="test")
    return {"root": root, "result": result,
            "records": {r["source"]: r for r in result.records}}


def test_every_listed_file_has_a_record_and_phone_formats_are_anonymized(batch):
    records = batch["records"]
    assert set(records) == {"bus.jpg", "IMG_0001.HEIC", "phone.heic", "phone.avif",
                            "broken.jpg", "notes.txt"}
    skipped = records["notes.txt"]
    assert skipped["status"] == "error" and skipped["error"]["code"] == "unsupported_format"
    assert "plain text" in skipped["error"]["message"] and skipped["input_sha256"]
    for name, fmt in (("IMG_0001.HEIC", "JPEG"), ("phone.heic", "HEIF"), ("phone.avif", "AVIF")):
        record = records[name]
        assert record["status"] == "verified", record["error"]
        assert record["format"] == fmt and record["persons_detected"] >= 2
        assert record["output_format"] in ("HEIF", "AVIF", "JPEG")
        assert (batch["root"] / "rel" / record["output_key"]).exists()
    page = (batch["root"] / "rep" / "report.html").read_text()
    assert "notes.txt" in page and 'data-skipped="notes.txt"' in page


def test_a_rejected_input_leaves_only_its_hash_unless_asked(batch, pipeline, tmp_path):
    record = batch["records"]["broken.jpg"]
    assert record["status"] == "error" and record["input_sha256"] and record["quarantine"] is None
    quarantine = batch["root"] / "rep" / "quarantine"
    assert not (quarantine / "broken.jpg").exists() and not (quarantine / "notes.txt").exists()
    _source(tmp_path / "src")
    kept = _batch(pipeline, tmp_path, retention=Retention(keep_rejected_source=True))
    broken = next(r for r in kept.records if r["source"] == "broken.jpg")
    assert (tmp_path / "rep" / "quarantine" / "broken.jpg").read_bytes() == (
        tmp_path / "src" / "broken.jpg").read_bytes()
    assert broken["quarantine"].endswith("broken.jpg")


def test_outputs_get_the_permissions_the_umask_gives(batch):
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [batch["root"] / "rel" / "bus.jpg", batch["root"] / "rel" / "_SUCCESS",
                 batch["root"] / "rep" / "manifest.jsonl", batch["root"] / "rep" / "report.html"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_the_report_speaks_plainly_and_the_attestation_is_signed_and_kept_per_run(
        batch, pipeline):
    rep = batch["root"] / "rep"
    page = (rep / "report.html").read_text()
    assert "people found and hidden" in page and "faces left by the independent check" in page
    assert "withheld" in page and "first run" in page  # the run's identity
    document = json.loads((rep / "attestation.json").read_text())
    assert verify_attestation(document, KEY) and not verify_attestation(document, b"x" * 32)
    claims = document["claims"]
    assert claims["report_sha256"] == __import__("hashlib").sha256(
        (rep / "report.html").read_bytes()).hexdigest()
    assert claims["release_sha256"] == json.loads((batch["root"] / "rel" / "_SUCCESS")
                                                  .read_text())["release_sha256"]
    assert claims["provenance"]["models"] and claims["provenance"]["versions"]["pillow-heif"]
    document["claims"]["outcome"]["published"] += 1
    assert not verify_attestation(document, KEY)  # tampering breaks the signature
    assert (rep / "runs" / "first-run" / "report.html").exists()


def test_quarantine_expires_after_its_retention(tmp_path):
    quarantine = open_storage(str(tmp_path))
    quarantine.write("old.jpg", b"old")
    quarantine.write("new.jpg", b"new")
    os.utime(tmp_path / "old.jpg", (0, 40 * 86400))
    now = __import__("datetime").datetime.fromtimestamp(80 * 86400, __import__("datetime").UTC)
    assert expire_quarantine(quarantine, 30, now=now) == ["old.jpg"]
    assert sorted(quarantine.list()) == ["new.jpg"]


def test_a_release_that_does_not_match_its_marker_is_not_verified(batch, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(batch["root"] / "rel", release)
    report = open_storage(str(batch["root"] / "rep"))
    assert check_release(open_storage(str(release)), report)[0]
    (release / "bus.jpg").write_bytes(b"changed")
    ok, reason = check_release(open_storage(str(release)), report)
    assert not ok and "not the release" in reason


def test_configuration_errors_fail_without_retry():
    from airflow_privacy.core.naming import from_secret

    with pytest.raises(NamingError) as short:
        from_secret("short", "connection 'k'")
    assert isinstance(short.value, ConfigurationError) and not is_retryable(short.value)


def test_the_cli_finds_the_weights_make_linked_into_the_environment(monkeypatch, tmp_path):
    from airflow_privacy.core import models

    (tmp_path / "share" / "airflow-privacy" / "models").mkdir(parents=True)
    monkeypatch.delenv(models.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert models.model_dir() == tmp_path / "share" / "airflow-privacy" / "models"


# -- Airflow: dag.test() ------------------------------------------------------------------------


def test_a_gate_failure_leaves_a_report_naming_the_expectation_and_the_run(
        airflow_home, models, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLES / "bus.jpg", src / "bus.jpg")
    (src / "broken.jpg").write_bytes((SAMPLES / "bus.jpg").read_bytes()[:5000])
    out = tmp_path / "out"
    run = run_dag_test(airflow_home, DAGS / f"{DAG_ID}.py", DAG_ID,
                       {"source": str(src), "output": str(out), "policy": "all_or_nothing"})
    assert run["state"] == "failed"
    assert run["tasks"]["anonymize_people.validate_manifest[-1]"] == "failed"
    assert not (out / "release" / "bus.jpg").exists()
    page = (out / "report" / "report.html").read_text()
    assert 'data-story="gate"' in page and "every input is verified" in page
    assert run["run_id"] in page and DAG_ID in page
    folders = list((out / "report" / "runs").iterdir())
    assert len(folders) == 1 and (folders[0] / "attestation.json").exists()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it: scripts/system-deps.sh)")
    shot = tmp_path / "gate.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1200,1600",
                    (out / "report" / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=False)
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.std() > 5  # rendered, not blank


def test_a_rerun_emits_no_new_event_cleans_up_and_the_sensor_sees_the_release(
        airflow_home, models, sample_dir, tmp_path):
    out = tmp_path / "out"
    conf = {"source": str(sample_dir), "output": str(out)}
    when = "2024-05-01T00:00:00+00:00"
    first = run_dag_test(airflow_home, DAGS / f"{DAG_ID}.py", DAG_ID, conf, logical_date=when)
    assert first["state"] == "success", first["tasks"]
    assert len(first["asset_events"]) == 1
    assert not any((out / "work").rglob("*"))  # the cleanup task removed the run's work data
    second = run_dag_test(airflow_home, DAGS / f"{DAG_ID}.py", DAG_ID, conf, logical_date=when)
    assert second["state"] == "success" and second["run_id"] == first["run_id"]
    assert len(second["asset_events"]) == 1  # still the first run's event only
    published = second["xcoms"]["anonymize_people.publish[-1].return_value"]
    assert published["release_sha256"] == published["previous_release_sha256"]

    # the consumer DAG of the example file, its sensor pointed at this output
    env = {**airflow_home, "AIRFLOW_PRIVACY_DEMO_OUTPUT": str(out)}
    waited = run_dag_test(env, DAGS / f"{DAG_ID}.py", "example_release_consumer", {})
    assert waited["state"] == "success", waited["log"][-3000:]
    event = waited["xcoms"]["wait_for_verified_release[-1].return_value"]
    # the sensor defers at once, so this is the trigger's event (run in-process by dag.test)
    assert event["status"] == "verified" and "verified manifest" in event["reason"]
