"""Incremental runs: only inputs the release lacks are processed; the release stays whole.

The decision (:mod:`airflow_privacy.core.incremental`) is one function for both
drivers. The CLI's batch is run here with the real model, the detector wrapped to
count the images it is shown (a run that processes nothing must show it none); the
Airflow listing, merge and publish are run on synthetic records (no model); one
``dag.test()`` builds on a release the CLI made, adding and removing an input.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from airflow_privacy.core.batch import run_batch
from airflow_privacy.core.expectations import validate_manifest
from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.incremental import CARRIED, RETRACT, Increment, find_baseline
from airflow_privacy.core.manifest import (
    MANIFEST,
    SUMMARY,
    read_manifest,
    write_manifest,
    write_summary,
)
from airflow_privacy.core.naming import Pseudonymizer
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.publish import SUCCESS_MARKER, publish, release_digest
from airflow_privacy.core.release import assemble_manifest, check_release, publish_release
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.core.shards import RECORDS, STAGING, list_shards, shard_keys, write_entries
from airflow_privacy.storage import open_storage
from tests.airflow_env import run_dag_test
from tests.conftest import COCO, SAMPLES

PERSON_FREE = COCO / "images" / "000000000025.jpg"  # giraffes: published untouched
OTHER = COCO / "images" / "000000000009.jpg"
COUNTS = ("carried", "new", "changed", "reprocessed", "vanished", "retracted")


class CountingDetector:
    """The real detector, counting the calls that show it an image (detection, confirmation
    and verification all go through ``detect`` or ``detect_each``)."""

    def __init__(self, real: Any) -> None:
        self._real, self.calls = real, 0

    def detect(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._real.detect(*args, **kwargs)

    def detect_each(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._real.detect_each(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _summary(report: Path) -> dict[str, Any]:
    return json.loads((report / SUMMARY).read_text())


def _release(release: Path) -> dict[str, str]:
    return {p.relative_to(release).as_posix(): sha256_bytes(p.read_bytes())
            for p in release.rglob("*") if p.is_file() and p.name != SUCCESS_MARKER}


def test_the_cli_batch_processes_only_what_the_release_lacks(pipeline, tmp_path):
    source, release, report = tmp_path / "src", tmp_path / "release", tmp_path / "report"
    source.mkdir()
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copy(SAMPLES / name, source / name)
    detector = CountingDetector(pipeline.detector)

    def run(settings: RunSettings | None = None) -> dict[str, Any]:
        detector.calls = 0
        tools = Pipeline(settings or RunSettings(), detector=detector,  # type: ignore[arg-type]
                         face_finder=pipeline.face_finder)
        stores = (open_storage(str(p)) for p in (source, release, report))
        summary = run_batch(*stores, tools, incremental=True, workers=1).summary
        ok, why = check_release(open_storage(str(release)), open_storage(str(report)))
        assert ok, why
        assert validate_manifest(read_manifest(open_storage(str(report))),
                                 sorted(p.name for p in source.iterdir())).success
        return summary

    first = run()
    assert detector.calls > 0 and first["incremental"]["carried"] == 0
    assert "no readable _SUCCESS" in first["incremental"]["reason"]

    # Unchanged inputs: nothing shown to the model, the same release, a manifest still whole.
    second = run()
    assert detector.calls == 0
    counts = {k: second["incremental"][k] for k in COUNTS}
    assert counts == {"carried": 2, "new": 0, "changed": 0, "reprocessed": 0, "vanished": 0,
                      "retracted": 0}
    assert second["release_sha256"] == first["release_sha256"]
    assert second["published"] == 2 and second["images"] == 2
    records = read_manifest(open_storage(str(report)))
    assert {r["carried_from"] for r in records} == {first["manifest_sha256"]}

    # One new input: exactly one processed.
    shutil.copy(PERSON_FREE, source / "giraffes.jpg")
    third = run()
    assert detector.calls > 0
    assert (third["incremental"]["carried"], third["incremental"]["new"]) == (2, 1)
    records = {r["source"]: r for r in read_manifest(open_storage(str(report)))}
    assert [k for k, r in records.items() if "carried_from" not in r] == ["giraffes.jpg"]
    assert sorted(_release(release)) == ["bus.jpg", "giraffes.jpg", "zidane.jpg"]

    # A changed input is processed again and the release holds its new bytes; a vanished
    # input's output is retracted from the release.
    old = records["zidane.jpg"]["output_sha256"]
    shutil.copy(OTHER, source / "zidane.jpg")
    (source / "bus.jpg").unlink()
    fourth = run()
    counts = fourth["incremental"]
    assert (counts["carried"], counts["changed"], counts["vanished"], counts["retracted"]) == (
        1, 1, 1, 1)
    records = {r["source"]: r for r in read_manifest(open_storage(str(report)))}
    assert sorted(records) == ["giraffes.jpg", "zidane.jpg"]
    assert "carried_from" not in records["zidane.jpg"]
    assert records["zidane.jpg"]["input_sha256"] == sha256_bytes(OTHER.read_bytes())
    assert _release(release) == {k: r["output_sha256"] for k, r in records.items()}
    assert _release(release)["zidane.jpg"] != old
    assert fourth["release_sha256"] == release_digest(list(_release(release).items()))

    # Other settings: everything is processed again, and the summary says why.
    fifth = run(RunSettings().with_overrides(method="pixelate"))
    assert fifth["incremental"]["carried"] == 0 and fifth["incremental"]["reprocessed"] == 2
    assert "settings changed" in fifth["incremental"]["reason"]
    assert fifth["release_sha256"] != fourth["release_sha256"]
    assert not any("carried_from" in r for r in read_manifest(open_storage(str(report))))


# -- the decision and the Airflow driver's bookkeeping, on synthetic records ----------------------


def _record(key: str, data: bytes, output: bytes, settings_key: str) -> dict[str, Any]:
    """A verified manifest record shaped like the pipeline's, without running it."""
    return {"source": key, "output_key": key, "status": "verified", "settings_key": settings_key,
            "input_sha256": sha256_bytes(data), "output_sha256": sha256_bytes(output),
            "persons_detected": 0, "verification": {"passed": True, "residuals": []},
            "error": None, "quarantine": None, "metadata_stripped": True}


def _released(root: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """A source and the release, report and summary a previous full run left for it."""
    stores = {name: open_storage(str(root / name)) for name in ("src", "rel", "rep", "stage")}
    key = RunSettings().key()
    records = []
    for name, data in files.items():
        stores["src"].write(name, data)
        stores["stage"].write(name, b"anonymized " + data)
        records.append(_record(name, data, b"anonymized " + data, key))
    sha = write_manifest(stores["rep"], records)
    done = publish(records, stores["stage"], stores["rel"], policy="all_or_nothing",
                   manifest_sha256=sha)
    write_summary(stores["rep"], {"settings_key": key, "manifest_sha256": sha,
                                  "release_sha256": done["release_sha256"]})
    return {**stores, "key": key, "manifest_sha256": sha}


def _walk(stores: dict[str, Any], **kwargs: Any) -> tuple[Increment, dict[str, Any]]:
    increment = Increment.open(stores["src"], stores["rel"], stores["rep"],
                               kwargs.pop("key", stores["key"]), **kwargs)
    keys = sorted(stores["src"].list())
    return increment, dict(increment.walk(keys, {}))


def test_only_the_pinned_manifest_under_the_same_settings_is_a_baseline(tmp_path):
    stores = _released(tmp_path, {"a.jpg": b"a", "b.jpg": b"b"})
    assert find_baseline(stores["rep"], stores["rel"], stores["key"])[0] is not None
    _, decided = _walk(stores)
    assert all(decided.values())  # both carried

    # other settings, another pseudonym key: nothing carried; what the release holds of
    # inputs no longer listed is still retracted
    stores["src"].delete("b.jpg")
    increment, decided = _walk(stores, key="0" * 64)
    assert increment.baseline is not None and not increment.baseline.carries
    assert "settings changed" in increment.reason and decided == {"a.jpg": None}
    assert sorted(increment.retractions, key=lambda r: r["source"]) == [
        {"output_key": "a.jpg", "source": "a.jpg", "why": "reprocessed"},
        {"output_key": "b.jpg", "source": "b.jpg", "why": "vanished"}]
    stores["src"].write("b.jpg", b"b")
    increment, decided = _walk(stores, namer=Pseudonymizer(b"a key of at least sixteen bytes"))
    assert increment.counts["reprocessed"] == 2 and not any(decided.values())
    assert {r["why"] for r in increment.retractions} == {"reprocessed"}

    # a released output altered in place is made again
    stores["rel"].write("b.jpg", b"tampered")
    increment, decided = _walk(stores)
    assert decided["a.jpg"] and decided["b.jpg"] is None
    assert increment.counts["reprocessed"] == 1

    # a manifest that is not the one _SUCCESS pins, or no marker: no baseline
    data = stores["rep"].read(MANIFEST)
    stores["rep"].write(MANIFEST, data + b"\n")
    increment, decided = _walk(stores)
    assert increment.baseline is None and "not the manifest" in increment.reason
    stores["rep"].write(MANIFEST, data)
    stores["rel"].delete(SUCCESS_MARKER)
    increment, _ = _walk(stores)
    assert increment.baseline is None and "no readable _SUCCESS" in increment.reason


def test_the_airflow_listing_carries_records_and_publish_keeps_the_release_whole(tmp_path):
    stores = _released(tmp_path, {"a.jpg": b"a", "b.jpg": b"b", "c.jpg": b"c"})
    source, release, report = stores["src"], stores["rel"], stores["rep"]
    work = open_storage(str(tmp_path / "work"))
    source.write("b.jpg", b"b, changed")  # processed again
    source.delete("c.jpg")  # vanished: retracted at publish
    source.write("d.jpg", b"d")  # new
    increment = Increment.open(source, release, report, stores["key"])
    shards = list_shards(source, 1, work=work, increment=increment)
    assert [s["keys"] for s in shards] == [["b.jpg"], ["d.jpg"]]  # a.jpg is carried
    assert list(shard_keys(work, shards)) == ["a.jpg", "b.jpg", "d.jpg"]
    assert [json.loads(line)["source"] for line in work.read_lines(CARRIED)] == ["a.jpg"]
    assert sorted(json.loads(line)["output_key"] for line in work.read_lines(RETRACT)) == [
        "b.jpg", "c.jpg"]

    # what the verify tasks leave: records and staged outputs of the processed inputs
    staging = work.child(STAGING)
    for shard in shards:
        (key,) = shard["keys"]
        data = source.read(key)
        staging.write(key, b"anonymized " + data)
        write_entries(work, RECORDS, shard,
                      [_record(key, data, b"anonymized " + data, stores["key"])])
    records, sha = assemble_manifest(work, report, shards, settings=None,
                                     policy="all_or_nothing")
    assert [r["source"] for r in records] == ["a.jpg", "b.jpg", "d.jpg"]
    assert [r.get("carried_from") for r in records] == [stores["manifest_sha256"], None, None]
    summary = json.loads(report.read_text(SUMMARY))
    assert summary["incremental"]["carried"] == 1 and summary["incremental"]["vanished"] == 1
    assert validate_manifest(records, shard_keys(work, shards), report=report,
                             manifest_sha256=sha, policy="all_or_nothing").success
    result = publish_release(report, work, release, "all_or_nothing", manifest_sha256=sha)
    assert result["retracted"] == 1 and result["published"] == 3
    assert sorted(release.list()) == ["_SUCCESS", "a.jpg", "b.jpg", "d.jpg"]
    assert release.read("b.jpg") == b"anonymized b, changed"
    assert check_release(release, report) == (
        True, "the release matches its marker and its verified manifest")

    # every input carried: one empty shard, so the stages, the gate and publish still run
    again = open_storage(str(tmp_path / "work2"))
    shards = list_shards(source, 1, work=again,
                         increment=Increment.open(source, release, report, stores["key"]))
    assert shards == [{"shard_id": "00000", "keys": []}]
    write_entries(again, RECORDS, shards[0], [])
    records, sha2 = assemble_manifest(again, report, shards, policy="all_or_nothing")
    assert [r["carried_from"] for r in records] == [sha] * 3
    assert validate_manifest(records, shard_keys(again, shards), report=report,
                             manifest_sha256=sha2, policy="all_or_nothing").success
    second = publish_release(report, again, release, "all_or_nothing", manifest_sha256=sha2)
    assert second["release_sha256"] == result["release_sha256"] and second["retracted"] == 0
    assert check_release(release, report)[0]

    # a listing that is not incremental leaves no carried records behind in its work
    list_shards(source, 1, work=again)
    assert not again.exists(CARRIED) and not again.exists(RETRACT)


INCREMENTAL_DAG = '''
from airflow.sdk import DAG
from airflow_privacy.operators.task_group import anonymization_task_group

params = {"root": "", "incremental": False}
with DAG(dag_id="incremental_folder", schedule=None, params=params) as dag:
    anonymization_task_group(
        source="{{ params.root }}/source", release="{{ params.root }}/release",
        work="{{ params.root }}/work/{{ run_id | replace(':', '-') | replace('+', '-') }}",
        report="{{ params.root }}/report", incremental="{{ params.incremental }}",
        shard_size=1, policy="all_or_nothing",
    )
'''


def test_a_dag_run_builds_on_the_cli_release_processing_only_the_new_input(
        airflow_home, models, tmp_path):
    """The decision is shared: a DAG run carries what a CLI run released (same settings)."""
    from airflow_privacy.cli import main

    source, release, report = tmp_path / "source", tmp_path / "release", tmp_path / "report"
    source.mkdir()
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copy(SAMPLES / name, source / name)
    assert main(["run", str(source), str(release), "--report", str(report), "-q",
                 "--incremental"]) == 0
    first = _summary(report)
    shutil.copy(PERSON_FREE, source / "giraffes.jpg")
    (source / "bus.jpg").unlink()
    dags = tmp_path / "dags"  # dag.test() runs DAGs of the configured folder only
    dags.mkdir()
    (dags / "incremental_dag.py").write_text(INCREMENTAL_DAG)
    env = {**airflow_home, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    run = run_dag_test(env, dags / "incremental_dag.py", "incremental_folder",
                       {"root": str(tmp_path), "incremental": True})
    assert run["state"] == "success", run["log"][-4000:]
    refs = run["xcoms"]["anonymize_people.list_shards[-1].return_value"]
    assert [ref["count"] for ref in refs] == [1]  # only giraffes.jpg went to the stages
    summary = _summary(report)
    assert {k: summary["incremental"][k] for k in ("carried", "new", "vanished", "retracted")} \
        == {"carried": 1, "new": 1, "vanished": 1, "retracted": 1}
    assert summary["incremental"]["baseline_manifest_sha256"] == first["manifest_sha256"]
    records = {r["source"]: r for r in read_manifest(open_storage(str(report)))}
    assert sorted(records) == ["giraffes.jpg", "zidane.jpg"]
    assert records["zidane.jpg"]["carried_from"] == first["manifest_sha256"]
    assert sorted(_release(release)) == ["giraffes.jpg", "zidane.jpg"]
    ok, why = check_release(open_storage(str(release)), open_storage(str(report)))
    assert ok, why
