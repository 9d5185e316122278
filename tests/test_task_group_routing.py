"""The task group sends each stage to the queue, pool and executor_config it is given.

A DAG-structure test: the DAG is built (not run) in a subprocess against a
throwaway Airflow home, and each task's routing is read back from it. This is
what lets detect and verify run on GPU workers (``celery worker -q gpu``)
while listing, validation and publication stay on CPU workers.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.airflow_env import airflow_env

BUILD = """
import json, sys
from airflow.sdk import DAG
from airflow_privacy.operators.task_group import anonymization_task_group
kwargs = json.loads(sys.argv[1])
with DAG("routing", schedule=None) as dag:
    anonymization_task_group("/src", "/release", "/work", "/report", **kwargs)
print(json.dumps({t.task_id.split(".")[-1]: [t.queue, t.pool, t.executor_config or {}]
                  for t in dag.tasks}))
"""


def _build(tmp_path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BUILD, json.dumps(kwargs)],
                          env=airflow_env(tmp_path / "home"), capture_output=True, text=True,
                          timeout=300)


def test_detect_and_verify_go_to_the_gpu_queue_and_the_rest_stay_on_the_default(tmp_path):
    gpu = {"pod_override_gpus": 1}
    done = _build(tmp_path, stage_queues={"detect": "gpu", "verify": "gpu"},
                  stage_pools={"detect": "gpu_pool", "verify": "gpu_pool"},
                  stage_executor_config={"verify": gpu})
    assert done.returncode == 0, done.stderr[-3000:]
    tasks = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"list_shards", "detect", "anonymize", "verify", "validate_manifest",
            "publish"} <= set(tasks)
    for name, (queue, pool, config) in tasks.items():
        if name in ("detect", "verify"):
            assert (queue, pool) == ("gpu", "gpu_pool"), name
        else:
            assert queue != "gpu" and pool == "default_pool", name
        assert config == (gpu if name == "verify" else {}), name
    defaults = json.loads(_build(tmp_path).stdout.strip().splitlines()[-1])
    assert {queue for queue, _, _ in defaults.values()} == {tasks["publish"][0]}


def test_a_route_for_a_task_the_group_does_not_have_is_refused(tmp_path):
    done = _build(tmp_path, stage_queues={"detection": "gpu"})
    assert done.returncode != 0
    assert "no task ['detection']" in done.stderr
