"""A throwaway Airflow installation for tests: its own home, SQLite DB and DAGs folder.

Airflow reads its configuration when it is first imported, so the tests never
import it in the pytest process: every Airflow command, ``dag.test()``
included, runs in a subprocess of the project's interpreter with this
environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[1]
DAGS = PROJECT / "dags"
BIN = Path(sys.executable).parent

# Runs one DAG with dag.test() and prints, as JSON: its final state, the task states, the
# run's XComs ("task[map_index].key") and the asset events its tasks emitted. A given
# logical date (ISO) makes a second call re-run the same DAG run (same run_id).
DAG_TEST = """
import json, runpy, sys
from datetime import datetime
dag_file, dag_id, conf, logical = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
found = runpy.run_path(dag_file)  # a file may hold several DAGs: take the one named
dag = next(v for v in found.values() if getattr(v, "dag_id", None) == dag_id and hasattr(v, "test"))
when = datetime.fromisoformat(logical) if logical else None
kwargs = {"logical_date": when, "run_after": when} if when else {}
run = dag.test(run_conf=conf, **kwargs)
tasks = {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in run.get_task_instances()}

from airflow import settings
from airflow.models.asset import AssetEvent, AssetModel
from airflow.models.xcom import XComModel
session = settings.Session()
xcoms = {
    f"{x.task_id}[{x.map_index}].{x.key}": XComModel.deserialize_value(x)
    for x in session.query(XComModel).filter_by(dag_id=dag_id, run_id=run.run_id)
}
events = [
    {"uri": uri, "task_id": event.source_task_id, "extra": event.extra}
    for event, uri in session.query(AssetEvent, AssetModel.uri)
    .filter(AssetEvent.asset_id == AssetModel.id)
    .filter(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run.run_id)
    .order_by(AssetEvent.id)
]
print("DAG_TEST_RESULT " + json.dumps({"state": str(run.state), "run_id": run.run_id,
                                       "tasks": tasks, "xcoms": xcoms, "asset_events": events},
                                      default=str))
"""


def airflow_env(home: Path) -> dict[str, str]:
    """The environment of an Airflow living in ``home`` and parsing the project's DAGs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        YOLO_OFFLINE="1",
    )
    return env


def airflow(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the venv's ``airflow`` CLI; raises with its output when it fails."""
    done = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=PROJECT)
    if done.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def migrate(home: Path) -> dict[str, str]:
    """Create ``home`` with a migrated metadata DB; returns its environment."""
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home)
    airflow(env, "db", "migrate")
    return env


def json_output(done: subprocess.CompletedProcess) -> Any:
    """The JSON document an ``airflow ... -o json`` command printed (warnings aside)."""
    lines = [line for line in done.stdout.splitlines() if line.startswith(("[", "{"))]
    return json.loads(lines[-1])


def run_dag_test(
    env: dict[str, str],
    dag_file: Path,
    dag_id: str,
    conf: dict[str, Any],
    timeout: float = 900,
    *,
    logical_date: str | None = None,
) -> dict[str, Any]:
    """``dag.test(run_conf=conf)`` in a subprocess: state, task states, XComs, asset events, log.

    ``logical_date`` (ISO 8601) pins the run: calling again with the same one clears
    and re-runs the same DAG run, as "clear" in the UI does.
    """
    done = subprocess.run(
        [sys.executable, "-c", DAG_TEST, str(dag_file), dag_id, json.dumps(conf),
         logical_date or ""],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT,
    )
    log = done.stdout + done.stderr
    results = [line for line in done.stdout.splitlines() if line.startswith("DAG_TEST_RESULT ")]
    if done.returncode != 0 or not results:
        raise AssertionError(f"dag.test() of {dag_id} did not finish:\n{log[-8000:]}")
    return {**json.loads(results[-1].split(" ", 1)[1]), "log": log}



@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: Any) -> dict[str, str]:
    """A migrated throwaway Airflow, shared by the session (``tests/conftest.py`` imports it);
    the environment to run its commands with."""
    return migrate(tmp_path_factory.mktemp("airflow_home"))
