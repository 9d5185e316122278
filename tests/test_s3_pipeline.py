"""The sharded S3 example DAG end to end, against a real S3 endpoint and a real connection.

``moto_server`` runs on 127.0.0.1 (``tests/s3_server.py``); Airflow reaches it
only through the ``privacy_s3`` connection, given as an ``AIRFLOW_CONN_*``
environment variable whose extra holds the ``endpoint_url``. No ``AWS_*``
variable is set for the code under test, so credentials can come from nowhere
else. Nothing is mocked in process: the DAG runs with ``dag.test()`` in a
subprocess, the kill-and-retry run is a subprocess killed with SIGKILL.

* a 40-image run (4 shards of 10) publishes exactly the verified images, with
  ``_SUCCESS``, an Asset event carrying the counts, and no secret in logs/XCom;
* re-running the same DAG run skips every finished input and changes nothing;
* a shard killed mid-verify and run again skips what it had verified, and the
  completed run's release is identical (keys and sha256) to the DAG run's;
* one planted undecodable image under ``all_or_nothing`` fails the GE task with
  a readable message and releases nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.publish import release_digest
from tests.airflow_env import DAGS, PROJECT, run_dag_test
from tests.conftest import image_dataset
from tests.s3_server import (
    FAKE_SECRET_ACCESS_KEY,
    airflow_s3_connection,
    object_digests,
    seeded_bucket,
)

DAG_ID = "example_anonymize_s3"
DAG_FILE = DAGS / f"{DAG_ID}.py"
CONN_ID = "privacy_s3"
IMAGES, SHARD_SIZE = 40, 10
LOGICAL_DATE = "2025-01-02T03:04:05+00:00"
MAX_ERROR_RATE = 0.25  # the 40-image run uses publish_passing; COCO has hard images
STAGE_TASKS = ("detect", "anonymize", "verify")

# The stage tasks of one run in a fresh process, storage opened through the Airflow
# connection exactly as in a task. With a shard id, only that shard's detect, anonymize and
# verify operators run; without, every shard's, then the manifest, the GE gate and publish
# (publish_passing).
STAGES = """
import json, sys, time
T0 = time.monotonic()
from airflow_privacy.core import stages
from airflow_privacy.core.expectations import validate_manifest
from airflow_privacy.operators.anonymize import AnonymizePeopleOperator
from airflow_privacy.operators.common import open_locations
from airflow_privacy.operators.detect import DetectPeopleOperator
from airflow_privacy.operators.verify import VerifyAnonymizationOperator
conn, source_uri, work_uri, report_uri, release_uri, size, only, max_error = sys.argv[1:]
source, work, report, release = open_locations(conn, source_uri, work_uri, report_uri, release_uri)
shards = stages.list_shards(source, int(size), work=work)
for shard in shards:
    if only and shard["shard_id"] != only:
        continue
    for name, operator in (("detect", DetectPeopleOperator),
                           ("anonymize", AnonymizePeopleOperator),
                           ("verify", VerifyAnonymizationOperator)):
        task = operator(task_id=name, source=source_uri, work=work_uri, shard=shard,
                        aws_conn_id=conn)
        result = {"stage": name, **task.execute({}), "t": round(time.monotonic() - T0, 1)}
        print("STAGE " + json.dumps(result), flush=True)
if not only:
    records, sha = stages.assemble_manifest(work, report, shards, policy="publish_passing")
    inputs = [key for shard in shards for key in shard["keys"]]
    validate_manifest(records, inputs, report=report, max_error_rate=float(max_error),
                      manifest_sha256=sha, policy="publish_passing")
    result = stages.publish_release(report, work, release, "publish_passing",
                                    manifest_sha256=sha)
    print("PUBLISH " + json.dumps({**result, "t": round(time.monotonic() - T0, 1)}), flush=True)
"""


# -- fixtures ---------------------------------------------------------------------------------


def _read(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _records(client: Any, bucket: str, key: str) -> list[dict]:
    return [json.loads(line) for line in _read(client, bucket, key).decode().splitlines()]


def _shards(client: Any, bucket: str, dag_run: dict) -> list[dict]:
    """The run's whole shards: its XCom holds only references, the keys are in work."""
    refs = dag_run["xcoms"]["anonymize_people.list_shards[-1].return_value"]
    assert all(set(ref) == {"shard_id", "count", "path"} for ref in refs), refs
    return [json.loads(_read(client, bucket, f"{dag_run['work']}/{ref['path']}")) for ref in refs]


@pytest.fixture(scope="module")
def s3(s3_server, airflow_home, models) -> dict[str, Any]:
    """A bucket holding the 40 inputs (and a non-image), and the env to run Airflow with."""
    images = image_dataset(IMAGES)
    client, bucket = seeded_bucket(s3_server, "privacy", images, "incoming")
    client.put_object(Bucket=bucket, Key="incoming/README.txt", Body=b"not an image")
    env = {k: v for k, v in airflow_home.items() if not k.startswith("AWS_")}
    env.update(airflow_s3_connection(s3_server.endpoint_url, CONN_ID))
    env["AIRFLOW_PRIVACY_MODEL_DIR"] = os.environ["AIRFLOW_PRIVACY_MODEL_DIR"]
    return {"client": client, "bucket": bucket, "images": images, "env": env}


def _conf(bucket: str, prefix: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "source": f"s3://{bucket}/{prefix}incoming",
        "release": f"s3://{bucket}/{prefix}release",
        "work": f"s3://{bucket}/{prefix}work",
        "report": f"s3://{bucket}/{prefix}reports",
        "aws_conn_id": CONN_ID,
        **extra,
    }


def _run_prefix(run_id: str) -> str:
    return run_id.replace(":", "-").replace("+", "-")


@pytest.fixture(scope="module")
def dag_run(s3) -> dict[str, Any]:
    """The S3 example DAG, run once with dag.test() on the 40 images."""
    conf = _conf(s3["bucket"], shard_size=SHARD_SIZE, policy="publish_passing",
                 max_error_rate=MAX_ERROR_RATE,
                 cleanup=False)  # the killed-shard test seeds from this run's work data
    started = time.monotonic()
    result = run_dag_test(s3["env"], DAG_FILE, DAG_ID, conf, logical_date=LOGICAL_DATE)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    result["report"] = f"reports/{_run_prefix(result['run_id'])}"
    result["work"] = f"work/{_run_prefix(result['run_id'])}"
    print(f"\n40-image S3 DAG run: {result['elapsed_s']} s")
    return result


# -- the sharded DAG run ----------------------------------------------------------------------


def test_the_sharded_dag_publishes_exactly_the_verified_images(s3, dag_run):
    client, bucket = s3["client"], s3["bucket"]
    assert dag_run["state"] == "success", dag_run["log"][-6000:]
    tasks = dict(dag_run["tasks"])
    assert tasks.pop("anonymize_people.cleanup[-1]") == "skipped"  # kept: cleanup=False
    assert set(tasks.values()) == {"success"}, dag_run["tasks"]
    for stage in STAGE_TASKS:  # one mapped task instance per shard
        assert sorted(t for t in dag_run["tasks"] if t.startswith(f"anonymize_people.{stage}[")) \
            == [f"anonymize_people.{stage}[{i}]" for i in range(-(-(IMAGES + 1) // SHARD_SIZE))]
    shards = _shards(client, bucket, dag_run)
    # every listed key is an input: the 40 images and README.txt (recorded, skipped)
    assert sorted(k for s in shards for k in s["keys"]) == sorted([*s3["images"], "README.txt"])

    records = _records(client, bucket, f"{dag_run['report']}/manifest.jsonl")
    assert sorted(r["source"] for r in records) == sorted([*s3["images"], "README.txt"])
    [readme] = [r for r in records if r["source"] == "README.txt"]
    assert readme["error"]["code"] == "unsupported_format"
    verified = {r["output_key"]: r["output_sha256"] for r in records if r["status"] == "verified"}
    release = object_digests(client, bucket, "release")
    marker = json.loads(_read(client, bucket, "release/_SUCCESS"))
    del release["_SUCCESS"]
    assert release == verified  # exactly the verified outputs, byte for byte
    assert len(verified) >= IMAGES * (1 - MAX_ERROR_RATE)
    manifest = _read(client, bucket, f"{dag_run['report']}/manifest.jsonl")
    assert marker["manifest_sha256"] == sha256_bytes(manifest)
    assert marker["published"] == len(verified)
    assert marker["release_sha256"] == release_digest(list(release.items()))
    validation = json.loads(_read(client, bucket, f"{dag_run['report']}/validation.json"))
    assert validation["success"] is True and validation["meta"]["manifest_sha256"] == \
        marker["manifest_sha256"]
    summary = dag_run["xcoms"]["anonymize_people.validate_manifest[-1].validation_summary"]
    assert summary["success"] is True and summary["failed"] == []
    quarantined = [r for r in records if r["status"] != "verified"]
    print(f"published {len(verified)} of {IMAGES}; withheld: "
          f"{[(r['source'], r['error']['code']) for r in quarantined]}")


def test_the_publish_task_emits_the_release_asset_with_its_counts(s3, dag_run):
    [event] = dag_run["asset_events"]
    assert event["uri"] == f"s3://{s3['bucket']}/release"
    assert event["task_id"] == "anonymize_people.publish"
    publish = dag_run["xcoms"]["anonymize_people.publish[-1].return_value"]
    assert event["extra"] == {k: publish[k] for k in (
        "images", "published", "withheld", "policy", "manifest_sha256", "release_sha256",
        "release")}
    # every listed key is an input with a record: the 40 images and README.txt (skipped)
    assert event["extra"]["images"] == IMAGES + 1 and event["extra"]["published"] > 0


def test_no_secret_reaches_the_logs_or_xcom(dag_run):
    assert FAKE_SECRET_ACCESS_KEY not in dag_run["log"]
    assert FAKE_SECRET_ACCESS_KEY not in json.dumps(dag_run["xcoms"])
    assert FAKE_SECRET_ACCESS_KEY not in json.dumps(dag_run["asset_events"])


def test_rerunning_the_same_dag_run_skips_every_input_and_keeps_the_release(s3, dag_run):
    client, bucket = s3["client"], s3["bucket"]
    before = object_digests(client, bucket, "release")
    manifest = _read(client, bucket, f"{dag_run['report']}/manifest.jsonl")
    conf = _conf(bucket, shard_size=SHARD_SIZE, policy="publish_passing",
                 max_error_rate=MAX_ERROR_RATE, cleanup=False)
    again = run_dag_test(s3["env"], DAG_FILE, DAG_ID, conf, logical_date=LOGICAL_DATE)
    assert again["run_id"] == dag_run["run_id"]
    assert again["state"] == "success", again["log"][-6000:]
    shards = _shards(client, bucket, dag_run)
    for stage in STAGE_TASKS:
        for i, shard in enumerate(shards):
            result = again["xcoms"][f"anonymize_people.{stage}[{i}].return_value"]
            images = sum(key != "README.txt" for key in shard["keys"])  # a skip is re-recorded
            assert (result["skipped"], result["computed"]) == (
                images, len(shard["keys"]) - images), (stage, result)
    assert object_digests(client, bucket, "release") == before  # same keys, same bytes, no more
    # The reused records are the same records: the same manifest, hence the same _SUCCESS.
    assert _read(client, bucket, f"{dag_run['report']}/manifest.jsonl") == manifest


# -- a shard killed mid-way and run again -------------------------------------------------------


def _stages(s3: dict, prefix: str, *, only: str = "") -> subprocess.Popen[str]:
    bucket = s3["bucket"]
    args = [CONN_ID, f"s3://{bucket}/incoming", f"s3://{bucket}/{prefix}/work",
            f"s3://{bucket}/{prefix}/report", f"s3://{bucket}/{prefix}/release",
            str(SHARD_SIZE), only, str(MAX_ERROR_RATE)]
    return subprocess.Popen([sys.executable, "-c", STAGES, *args], env=s3["env"], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _count(client: Any, bucket: str, prefix: str) -> int:
    return client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)


def _seed_other_shards(client: Any, bucket: str, work: str, target: str, shard: dict) -> None:
    """The state of a run whose other shards are done: the DAG run's work objects, minus
    everything of ``shard`` (its stage files, checkpoints, candidates, staged outputs)."""
    keys = set(shard["keys"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=work + "/"):
        for item in page.get("Contents", ()):
            relative = item["Key"][len(work) + 1:]
            folder, _, rest = relative.partition("/")
            if rest.startswith(shard["shard_id"]) and folder in ("detections", "anonymized",
                                                                 "records"):
                continue
            if folder in ("candidates", "staging", "quarantine") and rest in keys:
                continue
            client.copy_object(CopySource={"Bucket": bucket, "Key": item["Key"]},
                               Bucket=bucket, Key=f"{target}/{relative}")


def test_a_killed_and_rerun_shard_skips_verified_inputs_and_the_release_is_identical(s3,
                                                                                       dag_run):
    """Shard 00001's tasks are killed (SIGKILL) after three inputs were verified, then the
    run is completed: the retried shard skips what was done, and the release equals the
    uninterrupted DAG run's, key for key and byte for byte."""
    client, bucket, prefix = s3["client"], s3["bucket"], "killed"
    shards = _shards(client, bucket, dag_run)
    _seed_other_shards(client, bucket, dag_run["work"], f"{prefix}/work", shards[1])
    checkpoints = f"{prefix}/work/records/00001/"
    assert _count(client, bucket, checkpoints) == 0

    started = time.monotonic()
    first = _stages(s3, prefix, only="00001")
    deadline = time.monotonic() + 300
    try:
        while _count(client, bucket, checkpoints) < 3:  # three inputs verified: kill
            assert first.poll() is None, first.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the shard never got to verify"
            time.sleep(0.05)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    done_before = _count(client, bucket, checkpoints)
    print(f"\nkilled after {time.monotonic() - started:.1f} s")
    assert 3 <= done_before < SHARD_SIZE
    assert _count(client, bucket, f"{prefix}/work/records/00001.jsonl") == 0
    assert _count(client, bucket, f"{prefix}/release/") == 0

    second = _stages(s3, prefix)
    output, _ = second.communicate(timeout=600)
    print("\n".join(line for line in output.splitlines() if line.startswith(("STAGE", "PUB"))))
    assert second.returncode == 0, output[-6000:]
    results = [json.loads(line.split(" ", 1)[1]) for line in output.splitlines()
               if line.startswith("STAGE ")]
    retried = {r["stage"]: r for r in results if r["shard_id"] == "00001"}
    assert retried["detect"]["skipped"] == SHARD_SIZE
    assert retried["anonymize"]["skipped"] == SHARD_SIZE
    assert retried["verify"]["skipped"] == done_before
    assert retried["verify"]["computed"] == SHARD_SIZE - done_before
    others = [r for r in results if r["shard_id"] != "00001"]  # done before: all skipped
    assert len(others) == (len(shards) - 1) * 3
    for result in others:
        [shard] = [s for s in shards if s["shard_id"] == result["shard_id"]]
        images = sum(key != "README.txt" for key in shard["keys"])  # a skip is re-recorded
        assert (result["skipped"], result["computed"]) == (
            images, len(shard["keys"]) - images), result
    print(f"\nkilled after {done_before} verified inputs; the retry skipped them and "
          f"verified {SHARD_SIZE - done_before}")

    rerun = object_digests(client, bucket, f"{prefix}/release")
    reference = object_digests(client, bucket, "release")
    marker, expected = (json.loads(_read(client, bucket, f"{p}/_SUCCESS"))
                        for p in (f"{prefix}/release", "release"))
    del rerun["_SUCCESS"], reference["_SUCCESS"]
    assert rerun == reference  # same keys, same sha256, nothing more
    assert marker["release_sha256"] == expected["release_sha256"]
    assert marker["published"] == expected["published"] == len(rerun)


# -- the gate under all_or_nothing --------------------------------------------------------------


def test_one_planted_failing_image_under_all_or_nothing_fails_the_gate_and_releases_nothing(
    s3,
):
    client, bucket, prefix = s3["client"], s3["bucket"], "planted/"
    client.put_object(Bucket=bucket, Key=f"{prefix}incoming/zidane.jpg",
                      Body=s3["images"]["zidane.jpg"])
    client.put_object(Bucket=bucket, Key=f"{prefix}incoming/planted.jpg",
                      Body=b"\xff\xd8\xff\xe0 this is not a JPEG")
    conf = _conf(bucket, prefix, shard_size=2)  # policy: the default, all_or_nothing
    run = run_dag_test(s3["env"], DAG_FILE, DAG_ID, conf)
    assert run["state"] == "failed"
    assert run["tasks"]["anonymize_people.validate_manifest[-1]"] == "failed"
    assert run["tasks"]["anonymize_people.publish[-1]"] == "upstream_failed"
    assert run["asset_events"] == []
    assert _count(client, bucket, f"{prefix}release/") == 0  # nothing, not even _SUCCESS

    assert "manifest failed 1 expectation(s)" in run["log"]
    assert "every input is verified (policy all_or_nothing" in run["log"]
    assert "planted.jpg" in run["log"]
    summary = run["xcoms"]["anonymize_people.validate_manifest[-1].validation_summary"]
    assert summary["success"] is False and len(summary["failed"]) == 1
    assert "planted.jpg" in summary["failed"][0]
    report = f"{prefix}reports/{_run_prefix(run['run_id'])}"
    validation = json.loads(_read(client, bucket, f"{report}/validation.json"))
    assert validation["success"] is False
    assert summary["path"] == f"s3://{bucket}/{report}/validation.json"
    records = {r["source"]: r for r in _records(client, bucket, f"{report}/manifest.jsonl")}
    assert records["planted.jpg"]["status"] == "error"
    assert records["zidane.jpg"]["status"] == "verified"
