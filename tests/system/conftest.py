"""Fixtures of the system test: a real cluster (see ``cluster.py``) and a real S3 endpoint.

The ``system`` tests are kept out of the default ``pytest`` run: they are skipped
unless the ``-m`` expression names ``system`` (``pytest -m system tests/system``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.s3_server import MotoServer, airflow_s3_connection, running_moto
from tests.system.cluster import Cluster, ensure_system_packages, python_deps_missing

S3_CONN_ID = "privacy_s3"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "system: starts a real Airflow cluster (PostgreSQL, Redis, Celery workers); "
        "run with `pytest -m system tests/system`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "system" in (config.getoption("markexpr") or "").replace("not system", ""):
        return
    skip = pytest.mark.skip(reason="system test: run with `pytest -m system tests/system`")
    for item in items:
        if item.get_closest_marker("system"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def system_s3() -> Iterator[MotoServer]:
    """A moto S3 server on 127.0.0.1 for the cluster (its own, never restarted)."""
    yield from running_moto()


@pytest.fixture(scope="session")
def s3_env(system_s3: MotoServer) -> dict[str, str]:
    """The ``privacy_s3`` connection to ``system_s3``: the only way Airflow finds credentials
    (no ``AWS_*`` variable reaches the cluster or the in-process run)."""
    return airflow_s3_connection(system_s3.endpoint_url, S3_CONN_ID)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, models, s3_env: dict[str, str]) -> Iterator[Cluster]:
    """The running cluster; stopped (all process groups, Postgres, temp folder) pass or fail."""
    missing = python_deps_missing()
    if missing:
        pytest.fail(f"the 'cluster' extra is not installed (missing {missing}): "
                    "pip install -c constraints.txt -e '.[test,cluster]'")
    ensure_system_packages()
    extra = {**s3_env, "AIRFLOW_PRIVACY_MODEL_DIR": str(models)}
    cluster = Cluster(extra_env=extra)
    started = time.monotonic()
    # A SIGTERM (`timeout`, CI cancelling) must still tear the cluster down: as Ctrl-C does,
    # it unwinds through pytest, which runs this fixture's finally.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        cluster.start(timeout=600)
        print(f"\ncluster up in {time.monotonic() - started:.0f}s: API {cluster.api_url}, "
              f"state in {cluster.root}, workers {', '.join(cluster.workers)}")
        yield cluster
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the teardown finish
        if request.session.testsfailed or os.environ.get("AIRFLOW_PRIVACY_SYSTEM_LOGS"):
            print(cluster.diagnose())
            print(cluster.failed_task_logs())
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
