"""A trivial DAG for the system test: four mapped tasks, each saying where it ran.

Each mapped task sleeps a little so that one worker (concurrency 1) cannot take
all four before the other asks for work; the test then checks that both workers
appear among the task-instance hostnames and in the returned records.
"""

from __future__ import annotations

import os
import socket
import time

from airflow.sdk import dag, task


@dag(dag_id="system_worker_spread", schedule=None, catchup=False, tags=["system-test"])
def system_worker_spread():
    @task
    def where(item: int) -> dict:
        time.sleep(3)
        return {
            "item": item,
            "hostname": socket.gethostname(),
            "worker": os.environ.get("AIRFLOW_PRIVACY_WORKER_NAME"),
            "pid": os.getpid(),
        }

    where.expand(item=[0, 1, 2, 3])


system_worker_spread()
