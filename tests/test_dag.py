"""The example DAG end to end with ``dag.test()``, the stages on a bad input, and the GE gate.

The DAG runs in a subprocess against a throwaway Airflow (see ``airflow_env``),
then the test inspects what it left in storage: the release, the manifest and
GE's ``validation.json``. What "anonymized" means is checked independently of
the DAG: the detector is run on the originals here, and each person it finds
must lie inside a manifest region whose pixels changed in the published image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from airflow_privacy.core.geometry import covered_fraction, region_mask, to_pixels
from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.storage import open_storage
from tests.airflow_env import DAGS, run_dag_test

DAG_ID = "example_anonymize_folder"
DAG_FILE = DAGS / f"{DAG_ID}.py"
SAMPLE_PEOPLE = {"bus.jpg": 4, "zidane.jpg": 2}


@pytest.fixture(scope="session")
def demo_run(airflow_home, models, tmp_path_factory) -> dict:
    """The example DAG run once on a copy of the ultralytics samples."""
    from tests.conftest import SAMPLES

    root = tmp_path_factory.mktemp("demo")
    source = root / "source"
    source.mkdir()
    for name in SAMPLE_PEOPLE:
        shutil.copy(SAMPLES / name, source / name)
    output = root / "output"
    result = run_dag_test(airflow_home, DAG_FILE, DAG_ID,
                          {"source": str(source), "output": str(output)})
    return {**result, "source": source, "output": output}


def test_the_existing_ingestion_example_runs_ingest_then_anonymization_then_load(
    airflow_home, models, tmp_path
):
    """The one-line TaskGroup between an ingest and a load task, on one sample image."""
    from tests.conftest import SAMPLES

    landing, output = tmp_path / "landing", tmp_path / "output"
    landing.mkdir()
    shutil.copy(SAMPLES / "zidane.jpg", landing / "zidane.jpg")
    dag_id = "example_existing_ingestion"
    run = run_dag_test(airflow_home, DAGS / f"{dag_id}.py", dag_id,
                       {"landing": str(landing), "output": str(output)})
    assert run["state"] == "success", run["log"][-4000:]
    assert set(run["tasks"].values()) == {"success"} and "load[-1]" in run["tasks"]
    assert run["xcoms"]["ingest[-1].return_value"]["ingested"] == 1
    assert run["xcoms"]["load[-1].return_value"] == {"loaded": 1,
                                                     "release": str(output / "release")}
    assert sorted(p.name for p in (output / "release").iterdir()) == ["_SUCCESS", "zidane.jpg"]
    [event] = run["asset_events"]
    assert event["uri"] == (output / "release").as_uri() and event["extra"]["published"] == 1


def _manifest(output: Path) -> list[dict]:
    lines = (output / "report" / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("dag_file", sorted(DAGS.glob("*.py")), ids=lambda p: p.stem)
def test_parsing_a_dag_imports_no_model_or_validation_library(airflow_home, dag_file):
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        "heavy = {'torch', 'ultralytics', 'great_expectations', 'cv2'} & set(sys.modules);"
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(dag_file)], env=airflow_home,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dag_run_succeeds_and_publishes_every_input(demo_run):
    assert demo_run["state"] == "success", demo_run["log"][-4000:]
    assert demo_run["tasks"] and set(demo_run["tasks"].values()) == {"success"}
    # The release's Asset event (through the DAG's alias) carries the counts.
    [event] = demo_run["asset_events"]
    assert event["uri"] == (demo_run["output"] / "release").as_uri()
    assert event["extra"]["published"] == 2 and event["extra"]["policy"] == "all_or_nothing"
    mapped = [t for t in demo_run["tasks"] if t.startswith("anonymize_people.verify[")]
    assert len(mapped) == len(SAMPLE_PEOPLE)  # shard_size=1: one mapped task per image
    release = demo_run["output"] / "release"
    assert sorted(p.name for p in release.iterdir()) == ["_SUCCESS", *sorted(SAMPLE_PEOPLE)]


def test_the_manifest_is_complete_and_validated(demo_run, pipeline):
    output = demo_run["output"]
    records = _manifest(output)
    from airflow_privacy.core.flow import begin

    expected_fields = set(begin(pipeline, "x", "x").record)
    assert sorted(r["source"] for r in records) == sorted(SAMPLE_PEOPLE)
    for record in records:
        assert set(record) == expected_fields
        assert record["status"] == "verified"
        assert record["verification"]["passed"] and not record["verification"]["residuals"]
        assert record["persons_detected"] == SAMPLE_PEOPLE[record["source"]]
        assert record["settings_key"] == pipeline.settings.key()
        published = (output / "release" / record["output_key"]).read_bytes()
        assert sha256_bytes(published) == record["output_sha256"]
    manifest_sha = sha256_bytes((output / "report" / "manifest.jsonl").read_bytes())
    validation = json.loads((output / "report" / "validation.json").read_text())
    assert validation["success"] is True
    assert validation["meta"]["manifest_sha256"] == manifest_sha
    marker = json.loads((output / "release" / "_SUCCESS").read_text())
    assert marker["manifest_sha256"] == manifest_sha and marker["published"] == 2
    summary = json.loads((output / "report" / "summary.json").read_text())
    assert summary["published"] == 2 and summary["persons_detected"] == 6
    assert summary["settings_key"] == pipeline.settings.key()


def test_every_person_on_the_originals_is_anonymized_in_the_release(demo_run, pipeline):
    import cv2

    found = 0
    for record in _manifest(demo_run["output"]):
        original = pipeline.decode((demo_run["source"] / record["source"]).read_bytes())
        released = cv2.imread(str(demo_run["output"] / "release" / record["output_key"]))
        regions = [tuple(r["box"]) for r in record["regions"]]
        mask = region_mask(regions, original.width, original.height)
        diff = np.abs(original.pixels.astype(np.int16) - released.astype(np.int16)).mean(axis=2)
        outside = diff[~mask].mean()  # JPEG re-encoding noise only
        for person in pipeline.detect(original):
            found += 1
            assert covered_fraction(person.box, mask) >= 0.99, (record["source"], person.box)
            x1, y1, x2, y2 = to_pixels(person.box, original.width, original.height)
            assert diff[y1:y2, x1:x2].mean() > max(8.0, 3 * outside), (record["source"], person)
    assert found == sum(SAMPLE_PEOPLE.values())


def test_stages_turn_a_bad_input_into_an_error_record(pipeline, sample_dir, tmp_path):
    from airflow_privacy.core import stages
    from airflow_privacy.core.expectations import validate_manifest

    (sample_dir / "bus.jpg").unlink()
    (sample_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "outside.jpg").write_bytes((sample_dir / "zidane.jpg").read_bytes())
    (sample_dir / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    source = open_storage(str(sample_dir))
    work, report = open_storage(str(tmp_path / "work")), open_storage(str(tmp_path / "report"))
    shards = stages.list_shards(source, 8, work=work)
    assert shards == [{"shard_id": "00000", "keys": ["broken.jpg", "escape.jpg", "zidane.jpg"]}]
    for stage in (stages.detect_shard, stages.anonymize_shard, stages.verify_shard):
        stage(pipeline, source, work, shards[0])
    records, _ = stages.assemble_manifest(work, report, shards)
    by_source = {r["source"]: r for r in records}
    broken = by_source["broken.jpg"]
    assert broken["status"] == "error" and broken["error"]["code"]
    assert broken["input_sha256"] and broken["quarantine"] is None  # hash only, by default
    assert set(broken) == set(by_source["zidane.jpg"])
    assert by_source["escape.jpg"]["error"]["code"] == "unsafe_path"
    assert by_source["zidane.jpg"]["status"] == "verified"
    assert work.exists("staging/zidane.jpg") and not work.exists("staging/broken.jpg")
    assert validate_manifest(records, shards[0]["keys"], report=report, max_error_rate=0.7).success


def test_list_shards_cuts_every_listed_key_and_records_what_it_skips(tmp_path):
    from airflow_privacy.core.shards import PLAN, list_shards, load_shard

    for name in ("b.png", "a.jpg", "sub/c.jpeg", "notes.txt", ".hidden.jpg", "_SUCCESS"):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(b"x")
    source, work = open_storage(str(tmp_path / "src")), open_storage(str(tmp_path / "work"))
    shards = list_shards(source, 2, work=work)
    # every listed key is an input; the ones not processed carry their skip reason
    whole = [load_shard(work, shard) for shard in shards]
    assert [shard["keys"] for shard in whole] == [
        [".hidden.jpg", "_SUCCESS"], ["a.jpg", "b.png"], ["notes.txt", "sub/c.jpeg"]]
    refused = {k: v[0] for shard in whole for k, v in (shard.get("refused") or {}).items()}
    assert refused == {".hidden.jpg": "hidden_file", "_SUCCESS": "hidden_file",
                       "notes.txt": "unsupported_format"}
    assert work.exists(PLAN)
    assert list_shards(open_storage(str(tmp_path / "empty")), 2) == []
    with pytest.raises(ValueError):
        list_shards(source, 0)


def _record(source: str, status: str = "verified") -> dict:
    verified = status == "verified"
    return {
        "source": source,
        "status": status,
        "output_sha256": "ab" * 32 if verified else None,
        "verification": {"passed": verified, "residuals": []},
        "error": None if verified else {"code": "decode_failed", "message": "not an image"},
        "quarantine": None,
        "metadata_stripped": True if verified else None,
    }


def test_the_gate_fails_on_a_residual_among_verified_records_and_nothing_is_published(tmp_path):
    from airflow_privacy.core.expectations import ManifestValidationError, validate_manifest
    from airflow_privacy.core.manifest import write_manifest
    from airflow_privacy.core.publish import PublishRefused
    from airflow_privacy.core.release import publish_release

    records = [_record("a.jpg"), _record("b.jpg")]
    records[1]["verification"]["residuals"] = [
        {"kind": "face", "box": [1, 2, 30, 40], "confidence": 0.7, "covered": 0.2}]
    report, work, release = (open_storage(str(tmp_path / n)) for n in ("report", "work", "rel"))
    sha = write_manifest(report, records)
    with pytest.raises(ManifestValidationError) as failure:
        validate_manifest(records, ["a.jpg", "b.jpg"], report=report, manifest_sha256=sha)
    message = str(failure.value)
    assert "zero residual persons/faces" in message and "b.jpg" in message
    assert failure.value.failed == [line for line in failure.value.failed if "residual" in line]
    assert json.loads(report.read_text("validation.json"))["success"] is False
    with pytest.raises(PublishRefused, match="failed validation"):
        publish_release(report, work, release, "publish_passing", manifest_sha256=sha)
    assert list(release.list()) == []


def test_the_gate_accounts_for_every_input_and_bounds_the_error_rate():
    from airflow_privacy.core.expectations import ManifestValidationError, validate_manifest

    good = [_record("a.jpg"), _record("b.jpg"), {**_record("c.jpg", "error"), "quarantine": "q"}]
    assert validate_manifest(good, ["a.jpg", "b.jpg", "c.jpg"], max_error_rate=0.5).success
    with pytest.raises(ManifestValidationError, match="error rate bound"):
        validate_manifest(good, ["a.jpg", "b.jpg", "c.jpg"], max_error_rate=0.1)
    with pytest.raises(ManifestValidationError, match="one record per listed input"):
        validate_manifest(good[:2], ["a.jpg", "b.jpg", "c.jpg"], max_error_rate=0.5)
    unexplained = [_record("a.jpg"), {**_record("c.jpg", "error"), "error": {"code": None}}]
    with pytest.raises(ManifestValidationError) as failure:
        validate_manifest(unexplained, ["a.jpg", "c.jpg"], max_error_rate=0.5)
    assert "error code" in str(failure.value) and "quarantine path or a reason" in str(
        failure.value)


def test_the_gate_refuses_what_is_both_published_and_quarantined_or_keeps_metadata():
    from airflow_privacy.core.expectations import ManifestValidationError, validate_manifest

    both = {**_record("a.jpg"), "quarantine": "s3://b/quarantine/a.jpg"}
    with pytest.raises(ManifestValidationError, match="both to be published and quarantined"):
        validate_manifest([both], ["a.jpg"])
    kept = {**_record("a.jpg"), "metadata_stripped": None}
    with pytest.raises(ManifestValidationError, match="carry no metadata"):
        validate_manifest([kept], ["a.jpg"])


def test_all_or_nothing_tolerates_no_failed_input_whatever_the_error_bound():
    from airflow_privacy.core.expectations import ManifestValidationError, validate_manifest

    records = [_record("a.jpg"), {**_record("b.jpg", "error"), "quarantine": "q"}]
    assert validate_manifest(records, ["a.jpg", "b.jpg"], max_error_rate=0.5).success
    with pytest.raises(ManifestValidationError) as failure:
        validate_manifest(records, ["a.jpg", "b.jpg"], max_error_rate=0.5,
                          policy="all_or_nothing")
    assert failure.value.failed == [
        "every input is verified (policy all_or_nothing; error rate bound 0%): "
        "expect_column_values_to_be_between on failure_rate, "
        "1 unexpected (e.g. 1 of 2 processed inputs failed (50.0%): b.jpg)"]


def test_publish_is_idempotent_and_retracts_the_marker_of_another_manifest(tmp_path):
    from airflow_privacy.core.publish import SUCCESS_MARKER, publish, release_digest

    staging, release = open_storage(str(tmp_path / "staging")), open_storage(str(tmp_path / "r"))
    records = []
    for name in ("a.jpg", "sub/b.jpg"):
        staging.write(name, name.encode())
        records.append({**_record(name), "output_key": name,
                        "output_sha256": sha256_bytes(name.encode())})
    first = publish(records, staging, release, policy="all_or_nothing", manifest_sha256="m1")
    snapshot = {key: release.read(key) for key in release.list()}
    again = publish(records, staging, release, policy="all_or_nothing", manifest_sha256="m1")
    assert again == first and {key: release.read(key) for key in release.list()} == snapshot
    marker = json.loads(release.read_text(SUCCESS_MARKER))
    assert marker["manifest_sha256"] == "m1" and marker["published"] == 2
    assert marker["release_sha256"] == release_digest(
        [(r["output_key"], r["output_sha256"]) for r in records])

    # A later run that may release nothing leaves the previous, complete release alone...
    failed = [records[0], {**_record("c.jpg", "error"), "output_key": "c.jpg"}]
    held = publish(failed, staging, release, policy="all_or_nothing", manifest_sha256="m2")
    assert held["published"] == 0
    assert json.loads(release.read_text(SUCCESS_MARKER))["manifest_sha256"] == "m1"
    # ...and one that changes the release takes the old marker down before it starts.
    staging.write("a.jpg", b"tampered")
    with pytest.raises(Exception, match="does not match its verified sha256"):
        publish(records[:1], staging, release, policy="publish_passing", manifest_sha256="m3")
    assert not release.exists(SUCCESS_MARKER)
    assert release.read("a.jpg") == b"a.jpg"  # nothing unverified was written


GROUP_OPTIONS = """
from airflow.sdk import DAG
from airflow_privacy.operators.task_group import anonymization_task_group
with DAG("options", schedule=None) as dag:
    anonymization_task_group("in", "out", "work", "report", pseudonymize_variable="name_key")
anonymize = dag.get_task("anonymize_people.anonymize")
detect = dag.get_task("anonymize_people.detect")
print(anonymize.partial_kwargs["pseudonymize_variable"], detect.retries,
      "pseudonymize_variable" in detect.partial_kwargs)
"""


def test_the_group_passes_pseudonymization_to_anonymize_and_retries_its_tasks(airflow_home):
    done = subprocess.run([sys.executable, "-c", GROUP_OPTIONS], env=airflow_home,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["name_key", "2", "False"]
