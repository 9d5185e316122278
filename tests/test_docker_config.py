"""docker/: the compose file runs what the system test proved, and the image is the project's.

Fast and engine-free: the compose file is read with PyYAML (anchors and merge keys
resolved) and compared with ``tests/system/cluster.py``; ``docker compose config``
validates it only where a Compose v2 client exists (no engine needed for that).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.system.cluster import EXECUTOR_ENV, Cluster

PROJECT = Path(__file__).resolve().parents[1]
DOCKER = PROJECT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yaml"
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler",
                    "airflow-dag-processor", "airflow-triggerer", "airflow-worker")
# Wiring the system test sets per run (ports, paths, secrets); compose must set each of them.
WIRING = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
          "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
          "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY",
          "AIRFLOW__CORE__DAGS_FOLDER")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def system_env() -> dict[str, str]:
    """The system test's environment for a cluster that is never started."""
    return Cluster(root=Path("/nonexistent"), pg_port=5432, redis_port=6379,
                   api_port=8080).env()


def _env(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def test_the_services_exist(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "minio", "minio-init", *AIRFLOW_SERVICES):
        assert name in services, name
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-init": ["db", "migrate"],
        "airflow-apiserver": ["api-server"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-triggerer": ["triggerer"],
        "airflow-worker": ["celery", "worker"],
    }


def test_the_executor_settings_are_the_system_tests(compose, system_env):
    assert EXECUTOR_ENV["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert {k: system_env[k] for k in EXECUTOR_ENV} == EXECUTOR_ENV
    for name in AIRFLOW_SERVICES:
        env = _env(compose["services"][name])
        assert {k: env.get(k) for k in EXECUTOR_ENV} == EXECUTOR_ENV, name
        missing = [k for k in WIRING if k not in env]
        assert not missing, f"{name} lacks {missing}"
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                    "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
            ours, theirs = urlsplit(env[key]), urlsplit(system_env[key])
            assert ours.scheme == theirs.scheme, (name, key, env[key])
            assert ours.path == theirs.path, (name, key, env[key])


def test_every_component_shares_one_configuration(compose):
    envs = {name: _env(compose["services"][name]) for name in AIRFLOW_SERVICES}
    reference = envs["airflow-apiserver"]
    for name, env in envs.items():
        for key, value in reference.items():
            assert env.get(key) == value, (name, key)
        assert env.get("AIRFLOW__API_AUTH__JWT_SECRET"), name


def test_the_wiring_points_at_the_services(compose):
    env = _env(compose["services"]["airflow-worker"])
    assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres"
    assert urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"]).hostname == "postgres"
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    assert urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname \
        == "airflow-apiserver"
    connection = yaml.safe_load(env["AIRFLOW_CONN_PRIVACY_S3"])  # JSON is YAML
    assert connection["conn_type"] == "aws"
    assert connection["extra"]["endpoint_url"] == "http://minio:9000"
    assert env["AIRFLOW_PRIVACY_DEMO_AWS_CONN_ID"] == "privacy_s3"
    assert "privacy" in " ".join(compose["services"]["minio-init"]["command"])


def test_the_example_dags_are_mounted(compose):
    for name in AIRFLOW_SERVICES:
        volumes = compose["services"][name].get("volumes", [])
        mounts = {v.split(":")[1]: v.split(":")[0] for v in volumes if isinstance(v, str)}
        assert mounts.get("/opt/airflow/dags") == "../dags", name
    assert (COMPOSE_FILE.parent / "../dags").resolve() == PROJECT / "dags"


def test_workers_scale_and_only_loopback_ports_are_published(compose):
    worker = compose["services"]["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_the_image_installs_the_pinned_provider_and_bakes_the_weights():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    pinned = re.search(r"^apache-airflow==(\S+)$",
                       (PROJECT / "constraints.txt").read_text(), re.M)
    assert pinned, "constraints.txt pins apache-airflow"
    assert f"ARG AIRFLOW_VERSION={pinned.group(1)}" in dockerfile
    assert "FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}" in dockerfile
    assert "ARG PYTHON_VERSION=3.11" in dockerfile
    assert re.search(r"-c /opt/airflow-privacy/constraints\.txt", dockerfile)
    assert "airflow-privacy models fetch" in dockerfile
    assert "AIRFLOW_PRIVACY_MODEL_DIR=/opt/airflow/models" in dockerfile
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "!airflow_privacy/**" in ignore and "!constraints.txt" in ignore


def _compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or a standalone v2 ``docker-compose``; None if neither."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for standalone in (shutil.which("docker-compose"),
                       shutil.which("docker-compose", path=str(Path(sys.executable).parent))):
        if standalone:
            candidates.append([standalone])
    for command in candidates:
        try:
            done = subprocess.run([*command, "version"], capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and re.search(r"v?2\.\d+", done.stdout):
            return command
    return None


def test_docker_compose_config_accepts_the_file():
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 client here (`docker compose` or docker-compose v2)")
    done = subprocess.run([*command, "-f", str(COMPOSE_FILE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60, cwd=DOCKER)
    assert done.returncode == 0, done.stdout + done.stderr
