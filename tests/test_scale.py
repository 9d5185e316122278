"""The control plane at scale: shard references in XCom, streamed merge and gate, parallel publish.

Synthetic records and tiny objects only (no model), except the one ``dag.test()``
run that proves a run with more shards than ``max_map_length`` completes. The
100,000-key and 1,000,000-record measurements are ``bench/scale.py``'s.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from airflow_privacy.core.expectations import validate_manifest
from airflow_privacy.core.manifest import MANIFEST, SUMMARY, dumps_records, summarize
from airflow_privacy.core.publish import SUCCESS_MARKER, publish, release_digest
from airflow_privacy.core.release import assemble_manifest
from airflow_privacy.core.shards import (
    PLAN,
    RECORDS,
    list_shards,
    load_shard,
    plan_shards,
    shard_keys,
    shard_size_for,
    write_entries,
)
from airflow_privacy.exceptions import ManifestValidationError, PublishRefused, SettingsError
from airflow_privacy.storage import open_storage

SHA = "ab" * 32


def synthetic_record(key: str, status: str = "verified") -> dict[str, Any]:
    """A manifest record shaped like the pipeline's, without running it."""
    ok = status == "verified"
    return {
        "source": key, "output_key": key, "status": status, "input_sha256": SHA,
        "output_sha256": SHA if ok else None, "persons_detected": 1,
        "verification": {"passed": ok, "residuals": [], "remediation_rounds": 0},
        "error": None if ok else {"code": "decode_failed", "message": "not an image"},
        "quarantine": None if ok else f"q/{key}", "metadata_stripped": True if ok else None,
        "candidates": [{"box": [1.0, 2.0, 30.0, 40.0], "confidence": 0.9}],
    }


def tiny_tree(root: Path, count: int) -> Path:
    for i in range(count):
        path = root / f"d{i % 7}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def fake_run(tmp_path: Path, count: int, shard_size: int, **kwargs: Any) -> tuple[Any, Any, list]:
    """A listed source whose shards each have a records file: what verify leaves behind."""
    source = open_storage(str(tiny_tree(tmp_path / "src", count)))
    work = open_storage(str(tmp_path / "work"))
    shards = plan_shards(source, work, shard_size, **kwargs)
    for shard in shards:
        whole = load_shard(work, shard)
        write_entries(work, RECORDS, whole, [synthetic_record(k) for k in whole["keys"]])
    return work, open_storage(str(tmp_path / "report")), shards


# -- shard references, not key lists ---------------------------------------------------------


def test_xcom_bytes_do_not_grow_with_the_number_of_images(tmp_path):
    sizes = {}
    for count in (1_000, 100_000):
        source = open_storage(str(tiny_tree(tmp_path / f"src{count}", count)))
        work = open_storage(str(tmp_path / f"work{count}"))
        refs = plan_shards(source, work, 10, max_shards=64)
        assert len(refs) <= 64 and all(set(r) == {"shard_id", "count", "path"} for r in refs)
        assert sum(r["count"] for r in refs) == count
        assert list(shard_keys(work, refs)) == sorted(source.list())
        sizes[count] = len(json.dumps(refs))
    # 63 and 64 references; otherwise only the digits of "count" differ (16 vs 1563)
    assert abs(sizes[100_000] - sizes[1_000]) <= 64 * 3 + 60, sizes
    assert sizes[100_000] < 64 * 80  # vs ~1.7 MB for the 100,000 keys themselves


def test_shards_grow_so_that_there_are_never_more_than_max_shards():
    assert shard_size_for(100, 16) == 16
    assert shard_size_for(16 * 8, 16, 8) == 16
    assert shard_size_for(16 * 8 + 1, 16, 8) == 17
    assert shard_size_for(1_000_000, 16, 1024) == 977  # 1,024 shards of <= 977 keys
    with pytest.raises(ValueError):
        shard_size_for(10, 0)


def test_a_reference_reads_its_shard_from_work_and_refuses_another_listing(tmp_path):
    source = open_storage(str(tiny_tree(tmp_path / "src", 30)))
    work = open_storage(str(tmp_path / "work"))
    refs = plan_shards(source, work, 4, max_shards=3)
    assert [r["count"] for r in refs] == [10, 10, 10]
    plan = json.loads(work.read_text(PLAN))
    assert plan["shards"] == refs and plan["shard_size"] == 10 and plan["inputs"] == 30
    assert load_shard(work, refs[1])["keys"] == list_shards(source, 10)[1]["keys"]
    with pytest.raises(RuntimeError, match="list again"):
        load_shard(work, {**refs[0], "count": 9})
    with pytest.raises(ValueError):
        load_shard(work, {"shard_id": "../x", "count": 1})


# -- streaming merge and gate ------------------------------------------------------------------


def test_the_streamed_merge_writes_the_sorted_manifest_and_summed_summary(tmp_path):
    work, report, shards = fake_run(tmp_path, 500, 7)
    records, sha = assemble_manifest(work, report, list(reversed(shards)))
    expected = sorted((synthetic_record(k) for k in shard_keys(work, shards)),
                      key=lambda r: r["source"])
    assert report.read(MANIFEST) == dumps_records(expected)
    assert len(records) == 500 and records.by_status == {"verified": 500}
    summary = json.loads(report.read_text(SUMMARY))
    assert summary["manifest_sha256"] == sha
    assert {k: summary[k] for k in summarize(expected)} == summarize(expected)
    assert list(records) == expected


def test_the_merge_holds_one_shard_at_a_time(tmp_path):
    peaks = {}
    for count in (4_000, 16_000):
        work, report, shards = fake_run(tmp_path / str(count), count, 500)
        tracemalloc.start()
        assemble_manifest(work, report, shards)
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[16_000] < 1.3 * peaks[4_000], peaks  # 4x the records, the same memory


def test_the_gate_in_batches_counts_every_failure_and_names_examples(tmp_path):
    work, report, shards = fake_run(tmp_path, 100, 10)
    records, sha = assemble_manifest(work, report, shards)
    ok = validate_manifest(records, shard_keys(work, shards), report=report,
                           manifest_sha256=sha, batch_size=7)
    assert ok.success
    document = json.loads(report.read_text("validation.json"))
    assert document["meta"]["batches"] == 15 and document["meta"]["records"] == 100
    assert document["meta"]["manifest_sha256"] == sha and document["success"] is True

    keys = sorted(shard_keys(work, shards))
    bad = [synthetic_record(k) for k in keys]
    for i in (3, 50, 97):  # residuals in three different batches
        bad[i]["verification"]["residuals"] = [{"kind": "face"}]
    bad.insert(60, dict(bad[60]))  # one input recorded twice
    del bad[80]  # one input without a record
    with pytest.raises(ManifestValidationError) as failure:
        validate_manifest(iter(bad), iter(keys), batch_size=7, max_error_rate=0.5)
    message = str(failure.value)
    assert f"zero residual persons/faces on records to be published: " \
           f"expect_column_values_to_be_between on residuals, 3 unexpected (e.g. {keys[3]})" \
           in message
    assert "no input has more than one record" in message and keys[60] in message
    assert "one record per listed input (record count)" in message and keys[79] in message


def test_the_gate_bounds_the_failure_rate_over_all_batches():
    keys = [f"{i:04d}.jpg" for i in range(40)]
    records = [synthetic_record(k, "error" if i % 4 == 0 else "verified")
               for i, k in enumerate(keys)]  # 25 % failed, spread over every batch
    assert validate_manifest(records, keys, max_error_rate=0.25, batch_size=6).success
    with pytest.raises(ManifestValidationError, match=r"10 of 40 processed inputs failed"):
        validate_manifest(records, keys, max_error_rate=0.2, batch_size=6)


# -- parallel publish -------------------------------------------------------------------------


def test_publish_copies_server_side_in_parallel_and_refuses_a_changed_object(
        s3_fs, s3_bucket):
    staging = open_storage(f"s3://{s3_bucket}/work/staging", filesystem=s3_fs)
    release = open_storage(f"s3://{s3_bucket}/release", filesystem=s3_fs)
    records = []
    from airflow_privacy.core.images import sha256_bytes

    for i in range(120):
        key, data = f"p/{i:03d}.jpg", f"object {i}".encode()
        staging.write(key, data)
        records.append({**synthetic_record(key), "output_sha256": sha256_bytes(data)})
    calls: list[str] = []
    s3_fs.s3.meta.events.register("before-call.s3.CopyObject",
                                  lambda **kw: calls.append("copy"))
    s3_fs.s3.meta.events.register("before-call.s3.PutObject",
                                  lambda params, **kw: calls.append(params["url_path"]))
    result = publish(records, staging, release, policy="all_or_nothing", manifest_sha256="m")
    # server-side copies only: the one upload is the marker, last
    assert calls.count("copy") == 120 and calls[-1].endswith("/release/_SUCCESS")
    assert result["release_sha256"] == release_digest(
        [(r["output_key"], r["output_sha256"]) for r in records])
    assert sorted(release.list()) == sorted([r["output_key"] for r in records] + [SUCCESS_MARKER])

    # a re-run of the same manifest after a staged object was replaced: refused, the
    # replaced bytes are not left in the release, and no marker vouched for it meanwhile
    staging.write("p/077.jpg", b"replaced after verification")
    with pytest.raises(PublishRefused, match="p/077.jpg"):
        publish(records, staging, release, policy="all_or_nothing", manifest_sha256="m")
    assert not release.exists(SUCCESS_MARKER)
    assert not release.exists("p/077.jpg")


# -- storage schemes -----------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["gs://bucket/images", "abfs://c@account/p", "ftp://h/x",
                                 "nosuchscheme://bucket/p"])
def test_an_unsupported_scheme_fails_clearly_instead_of_reading_an_empty_folder(uri):
    with pytest.raises(SettingsError, match="not supported"):
        open_storage(uri)


def test_a_file_uri_is_a_local_folder(tmp_path):
    (tmp_path / "a b.jpg").write_bytes(b"x")
    assert list(open_storage((tmp_path).as_uri()).list()) == ["a b.jpg"]


# -- more shards than Airflow may map ------------------------------------------------------------

TINY_IMAGES, TINY_SHARD, MAX_MAP = 200, 4, 8


def tiny_crops(folder: Path, count: int) -> list[str]:
    """``count`` small real photos: 96 px crops of the COCO slice, saved as JPEG."""
    from PIL import Image

    from tests.conftest import COCO

    paths = sorted((COCO / "images").glob("*.jpg"))
    if not paths:
        pytest.skip(f"no COCO images in {COCO}")
    names = []
    for i in range(count):
        with Image.open(paths[i % len(paths)]) as image:
            x, y = (i * 37) % max(1, image.width - 96), (i * 53) % max(1, image.height - 96)
            crop = image.convert("RGB").crop((x, y, x + 96, y + 96))
            name = f"part{i % 3}/{i:04d}.jpg"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            crop.save(folder / name, quality=90)
            names.append(name)
    return names


def test_a_run_with_more_shards_than_max_map_length_completes(airflow_home, models, tmp_path):
    from tests.airflow_env import DAGS, run_dag_test

    names = tiny_crops(tmp_path / "incoming", TINY_IMAGES)
    env = {**airflow_home, "AIRFLOW__CORE__MAX_MAP_LENGTH": str(MAX_MAP),
           "AIRFLOW_PRIVACY_MODEL_DIR": str(models)}
    conf = {name: str(tmp_path / name) for name in ("release", "work", "report")}
    conf |= {"source": str(tmp_path / "incoming"), "shard_size": TINY_SHARD,
             "policy": "publish_passing", "max_error_rate": 1.0}
    run = run_dag_test(env, DAGS / "example_anonymize_s3.py", "example_anonymize_s3", conf,
                       timeout=600)
    assert run["state"] == "success", run["log"][-6000:]
    refs = run["xcoms"]["anonymize_people.list_shards[-1].return_value"]
    assert len(refs) == MAX_MAP  # 50 shards of 4 asked for; 8 of 25 made
    assert [r["count"] for r in refs] == [TINY_IMAGES // MAX_MAP] * MAX_MAP
    assert all("keys" not in r for r in refs)
    for stage in ("detect", "anonymize", "verify"):
        assert sum(t.startswith(f"anonymize_people.{stage}[") for t in run["tasks"]) == MAX_MAP
    assert "Airflow maps a task over at most 8 elements" in run["log"]
    report = next((tmp_path / "report").rglob(MANIFEST))
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["source"] for r in records] == sorted(names)
    released = next((tmp_path / "release").rglob(SUCCESS_MARKER), None)
    assert released is not None, "no _SUCCESS"
    assert json.loads(released.read_text())["published"] == sum(
        r["status"] == "verified" for r in records)
