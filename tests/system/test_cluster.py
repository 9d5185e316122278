"""Scale-out for real: a CeleryExecutor cluster with two workers runs the mapped tasks.

``pytest -m system tests/system`` (``make system-test``). The cluster (PostgreSQL,
Redis, API server, scheduler, dag-processor, two Celery workers; see
``cluster.py``) is started once for the session and torn down at the end, pass or
fail. The output (``-s`` or the captured section of a failure) records the wall
times and which worker ran which mapped task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import image_dataset
from tests.s3_server import object_digests
from tests.system.cluster import WORKERS, spread

pytestmark = pytest.mark.system

SPREAD_DAG = "system_worker_spread"
S3_DAG = "example_anonymize_s3"
IMAGES, SHARD_SIZE = 40, 10
MAX_ERROR_RATE = 0.25  # publish_passing: COCO has hard images; the run must still succeed
RUN_TIMEOUT_S = 15 * 60
STAGES = ("detect", "anonymize", "verify")


def _print_spread(title: str, by_host: dict[str, list[str]], seconds: float) -> None:
    print(f"\n{title}: {seconds:.0f}s wall, mapped task instances per worker:")
    for host, tasks in sorted(by_host.items()):
        print(f"  {host}: {len(tasks)}  {' '.join(tasks)}")


def test_both_workers_take_mapped_tasks(cluster):
    cluster.wait_for_dag(SPREAD_DAG)
    started = time.monotonic()
    run_id = cluster.trigger(SPREAD_DAG, {})
    run = cluster.wait_for_run(SPREAD_DAG, run_id, timeout=300)
    seconds = time.monotonic() - started
    tis = cluster.task_instances(SPREAD_DAG, run_id)
    by_host = spread(tis)
    _print_spread(f"{SPREAD_DAG} run {run_id}", by_host, seconds)

    assert run["state"] == "success", json.dumps(tis, indent=1, default=str)
    assert sum(len(t) for t in by_host.values()) == 4
    workers = {host.split("@", 1)[0] for host in by_host}
    assert workers == set(WORKERS), by_host


# -- the sharded S3 example DAG on 40 images -------------------------------------------------


def _conf(bucket: str, prefix: str) -> dict[str, Any]:
    return {
        "source": f"s3://{bucket}/incoming",
        "release": f"s3://{bucket}/{prefix}/release",
        "work": f"s3://{bucket}/{prefix}/work",
        "report": f"s3://{bucket}/{prefix}/reports",
        "aws_conn_id": "privacy_s3",
        "shard_size": SHARD_SIZE,
        "policy": "publish_passing",
        "max_error_rate": MAX_ERROR_RATE,
    }


@pytest.fixture(scope="module")
def source_bucket(system_s3) -> str:
    """A bucket whose ``incoming/`` holds the 40 images."""
    client = system_s3.client()
    bucket = "privacy-system"
    client.create_bucket(Bucket=bucket)
    for name, data in image_dataset(IMAGES).items():
        client.put_object(Bucket=bucket, Key=f"incoming/{name}", Body=data)
    return bucket


def _in_process_run(conf: dict[str, Any], s3_env: dict[str, str], models: Path,
                    tmp_path: Path) -> dict[str, Any]:
    """The same DAG with ``dag.test()`` in one process (SQLite, no executor), same settings."""
    from tests.airflow_env import DAGS, migrate, run_dag_test

    env = {k: v for k, v in migrate(tmp_path / "airflow_home").items()
           if not k.startswith("AWS_")}
    env.update(s3_env)
    env.update(AIRFLOW_PRIVACY_MODEL_DIR=str(models), YOLO_OFFLINE="1", OMP_NUM_THREADS="1")
    return run_dag_test(env, DAGS / f"{S3_DAG}.py", S3_DAG, conf, timeout=RUN_TIMEOUT_S)


def test_the_sharded_dag_on_two_workers_releases_what_one_process_does(
        cluster, system_s3, source_bucket, s3_env, models, tmp_path):
    client = system_s3.client()
    cluster.wait_for_dag(S3_DAG, f"{S3_DAG}.py")
    started = time.monotonic()
    run_id = cluster.trigger(S3_DAG, _conf(source_bucket, "cluster"))
    run = cluster.wait_for_run(S3_DAG, run_id, timeout=RUN_TIMEOUT_S)
    cluster_s = time.monotonic() - started
    tis = cluster.task_instances(S3_DAG, run_id)
    by_host = spread(tis)
    _print_spread(f"{S3_DAG} on {len(WORKERS)} Celery workers, {IMAGES} images in shards of "
                  f"{SHARD_SIZE}", by_host, cluster_s)
    states = {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in tis}
    assert run["state"] == "success", json.dumps(states, indent=1)
    assert set(states.values()) == {"success"}, states

    shards = IMAGES // SHARD_SIZE
    for stage in STAGES:  # one task instance per shard and stage, all on the cluster's workers
        mapped = [t for t in tis if t["task_id"].endswith(f".{stage}") and t["map_index"] >= 0]
        assert len(mapped) == shards, (stage, states)
    workers = {host.split("@", 1)[0] for host in by_host}
    assert workers == set(WORKERS), f"mapped shard tasks ran on {sorted(by_host)} only"

    started = time.monotonic()
    local = _in_process_run(_conf(source_bucket, "in-process"), s3_env, models, tmp_path)
    local_s = time.monotonic() - started
    print(f"the same DAG with dag.test() in one process: {local_s:.0f}s wall")
    assert local["state"] == "success", local["log"][-6000:]

    released = object_digests(client, source_bucket, "cluster/release")
    expected = object_digests(client, source_bucket, "in-process/release")
    marker, expected_marker = (json.loads(client.get_object(
        Bucket=source_bucket, Key=f"{prefix}/release/_SUCCESS")["Body"].read())
        for prefix in ("cluster", "in-process"))
    released.pop("_SUCCESS"), expected.pop("_SUCCESS")
    print(f"released {len(released)} of {IMAGES} images on the cluster, "
          f"{len(expected)} in process; release_sha256 {marker['release_sha256']}")
    assert len(released) >= IMAGES * (1 - MAX_ERROR_RATE)
    assert released == expected  # the same keys, byte for byte
    assert marker["release_sha256"] == expected_marker["release_sha256"]
