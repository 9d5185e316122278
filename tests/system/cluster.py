"""A real, throwaway Airflow cluster on 127.0.0.1: PostgreSQL, Redis, Celery workers.

What ``make system-test`` starts, each component its own process (group):

* PostgreSQL (``initdb``/``pg_ctl`` from ``/usr/lib/postgresql/*/bin``, as the
  ``postgres`` user when run as root) as the metadata DB and Celery result backend;
* Redis (``--save '' --appendonly no``) as the Celery broker;
* Airflow's API server, scheduler, dag-processor and ``WORKERS`` Celery workers
  (``--celery-hostname w1@%h``, concurrency 1 each).

Everything listens on 127.0.0.1 only, on free ports, with all state under one
temporary folder that :meth:`Cluster.stop` removes (``AIRFLOW_PRIVACY_KEEP_CLUSTER=1``
keeps it, logs included). Should the test process die without stopping the cluster
(SIGKILL), a reaper process it started cleans up all the same. All the configuration is in
one place, :meth:`Cluster.env` (the executor part, :data:`EXECUTOR_ENV`, is what
``docker/docker-compose.yaml`` must match; ``tests/test_docker_config.py`` checks).

The workers share one host, so each gets a name (``AIRFLOW_PRIVACY_WORKER_NAME``)
and Airflow's ``hostname_callable`` is :func:`worker_hostname`: a task instance's
``hostname`` then says which worker ran it (``w1@<host>``), as on separate hosts.

This module is stdlib only: :func:`worker_hostname` is imported by the workers
(``PYTHONPATH`` holds the project), and the docker config test imports it in the
default suite. Interactive use (start, print the env, wait for Ctrl-C)::

    .venv/bin/python -m tests.system.cluster install   # apt-get the servers if missing
    .venv/bin/python -m tests.system.cluster up
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
SYSTEM_DAGS = Path(__file__).resolve().parent / "dags"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
WORKERS = ("w1", "w2")
WORKER_NAME_ENV = "AIRFLOW_PRIVACY_WORKER_NAME"
DB_USER = DB_NAME = DB_PASSWORD = "airflow"
DEBIAN_PACKAGES = ("postgresql", "redis-server")

# The executor settings this test proves; docker/docker-compose.yaml uses the same values.
EXECUTOR_ENV: dict[str, str] = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    # One task at a time per worker: each task loads the model and uses every core.
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
}


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` here: ``w1@<fqdn>`` in worker w1, else the fqdn."""
    fqdn = socket.getfqdn()
    name = os.environ.get(WORKER_NAME_ENV)
    return f"{name}@{fqdn}" if name else fqdn


# ---------------------------------------------------------------------------------------------
# helpers


def free_port() -> int:
    """A loopback port nobody listens on now (the race with other processes is acceptable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: SIGTERM this child when the test process dies, even by SIGKILL."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait(what: str, check, timeout: float, interval: float = 0.5, diagnose=None) -> Any:
    """Poll ``check()`` until it returns something truthy; raise with ``diagnose()`` if not."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = diagnose() if diagnose else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f}s\n{detail}")
        time.sleep(interval)


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding initdb and pg_ctl."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def missing_system_packages() -> list[str]:
    missing = []
    if postgres_bin() is None:
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    return missing


def ensure_system_packages() -> None:
    """Install PostgreSQL and Redis from Debian packages if missing (idempotent; needs root)."""
    missing = missing_system_packages()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {', '.join(missing)}: install them (Debian: apt-get install "
                           f"{' '.join(DEBIAN_PACKAGES)}), or run as root with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env, timeout=900)
    if missing_system_packages():
        raise RuntimeError(f"still missing after apt-get: {missing_system_packages()}")


def python_deps_missing() -> list[str]:
    """The Python modules of the ``cluster`` extra that are not importable."""
    import importlib.util

    modules = ("airflow.providers.celery", "celery", "redis", "psycopg2")
    missing = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ModuleNotFoundError:
            missing.append(name)
    return missing


# Started with the cluster in a session of its own, it outlives the test process: when that
# dies without stopping the cluster (SIGKILL), it kills the process groups listed in
# <root>/pgids, stops PostgreSQL (daemonized by pg_ctl, so no parent-death signal reaches it)
# and removes <root>. A normal stop ends it last, after everything else.
REAPER = r"""
import os, shutil, signal, subprocess, sys, time
parent, root, *pg_stop = sys.argv[1:]
while os.getppid() == int(parent):
    time.sleep(1)
try:
    with open(os.path.join(root, "pgids")) as handle:
        pgids = [int(line) for line in handle.read().split()]
except OSError:
    pgids = []
for pgid in pgids:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
try:
    subprocess.run(pg_stop, timeout=60, capture_output=True)
except Exception:
    pass
shutil.rmtree(root, ignore_errors=True)
"""


@dataclass
class Component:
    """One server process, the leader of its own process group; logs to ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self, cwd: Path, die_with_parent: bool = True) -> None:
        linux = sys.platform.startswith("linux")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent and linux else None,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``grace`` seconds."""
        process, self.process = self.process, None  # never signal a (reused) pgid twice
        if process is None:
            return
        pgid = process.pid  # start_new_session: the leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # The leader may be gone while forked children (celery pool, task supervisors) live on.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} ({self.log}) ---\n{_log_tail(self.log, lines)}"


@dataclass
class Cluster:
    """PostgreSQL + Redis + Airflow (API server, scheduler, dag-processor, Celery workers)."""

    workers: tuple[str, ...] = WORKERS
    dags_folder: Path = PROJECT / "dags"
    extra_dag_folders: tuple[Path, ...] = (SYSTEM_DAGS,)
    extra_env: dict[str, str] = field(default_factory=dict)
    root: Path | None = None
    pg_port: int = 0
    redis_port: int = 0
    api_port: int = 0
    components: list[Component] = field(default_factory=list)
    _pg_started: bool = False
    _reaper: Component | None = None

    def __post_init__(self) -> None:
        self._secrets = {
            "jwt": secrets.token_urlsafe(64),
            "api": secrets.token_urlsafe(32),
            "fernet": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        }

    # -- configuration, all in one place ------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def airflow_home(self) -> Path:
        assert self.root is not None
        return self.root / "airflow"

    def env(self, worker: str | None = None) -> dict[str, str]:
        """The environment of every Airflow process of this cluster (plus a worker's name)."""
        db = f"{DB_USER}:{DB_PASSWORD}@{HOST}:{self.pg_port}/{DB_NAME}"
        bundles = [{"name": "dags-folder",
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {}}]
        bundles += [{"name": f"extra-{i}",
                     "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                     "kwargs": {"path": str(folder)}}
                    for i, folder in enumerate(self.extra_dag_folders)]
        # Nothing from the caller's Airflow or AWS setup: connections come from extra_env only.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "AWS_"))}
        env.pop(WORKER_NAME_ENV, None)
        env.update(EXECUTOR_ENV)
        env.update({
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt"],
            "AIRFLOW__API__SECRET_KEY": self._secrets["api"],
            "AIRFLOW__CORE__FERNET_KEY": self._secrets["fernet"],
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.system.cluster.worker_hostname",
            # Never bind 0.0.0.0: no health-check server, workers start with --skip-serve-logs.
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "PYTHONPATH": os.pathsep.join(
                [str(PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "YOLO_OFFLINE": "1",
            # One thread per task: two workers share the cores, and the in-process comparison
            # run uses the same setting, so both compute the same pixels.
            "OMP_NUM_THREADS": "1",
            "NO_PROXY": "*",
            "no_proxy": "*",
        })
        env.update(self.extra_env)
        if worker:
            env[WORKER_NAME_ENV] = worker
        return env

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 600) -> None:
        """Start everything and wait until the scheduler, dag-processor and workers are up."""
        deadline = time.monotonic() + timeout
        missing = missing_system_packages()
        if missing:
            raise RuntimeError(f"missing {missing}: run ensure_system_packages() first")
        self.root = Path(tempfile.mkdtemp(prefix="airflow-privacy-cluster-"))
        self.root.chmod(0o755)  # the postgres user must reach its data folder below
        (self.root / "logs").mkdir()
        self._start_reaper()
        self.airflow_home.mkdir()
        self.pg_port, self.redis_port, self.api_port = free_port(), free_port(), free_port()
        self._start_postgres()
        self._start_redis()
        self.airflow("db", "migrate", timeout=max(60.0, deadline - time.monotonic()))

        self._spawn("api-server", ["api-server", "--host", HOST, "--port", str(self.api_port)])
        self._spawn("scheduler", ["scheduler", "--skip-serve-logs"])
        self._spawn("dag-processor", ["dag-processor"])
        for worker in self.workers:
            self._spawn(f"worker-{worker}",
                        ["celery", "worker", "--celery-hostname", f"{worker}@%h",
                         "--concurrency", "1", "--skip-serve-logs"], worker=worker)
        remaining = lambda: max(5.0, deadline - time.monotonic())  # noqa: E731
        _wait("API server health", self._healthy, remaining(), 1.0, self.diagnose)
        for worker in self.workers:
            component = self.component(f"worker-{worker}")
            _wait(f"celery worker {worker} ready",
                  lambda c=component: self._check_alive() and " ready." in _log_tail(c.log, 400),
                  remaining(), 1.0, self.diagnose)

    def stop(self) -> None:
        """Stop everything (workers first, Postgres last) and remove the temporary folder."""
        for component in reversed(self.components):
            component.stop(grace=10 if component.name.startswith("worker") else 15)
        if self._pg_started and self.root is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(self._pg_ctl_stop("fast"), capture_output=True, timeout=60,
                               check=True, cwd="/", stdin=subprocess.DEVNULL)
            self._pg_started = False
        if self._reaper is not None:
            self._reaper.stop(grace=5)
            self._reaper = None
        if self.root is not None and not os.environ.get("AIRFLOW_PRIVACY_KEEP_CLUSTER"):
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- PostgreSQL and Redis -----------------------------------------------------------------

    @property
    def _pgdata(self) -> Path:
        assert self.root is not None
        return self.root / "postgres"

    def _as_postgres(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """Run a PostgreSQL tool; as the ``postgres`` user if root (initdb refuses root)."""
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True,
                              cwd="/", stdin=subprocess.DEVNULL)

    def _pg_ctl_stop(self, mode: str) -> list[str]:
        pg = postgres_bin()
        assert pg is not None
        argv = [str(pg / "pg_ctl"), "stop", "-D", str(self._pgdata), "-m", mode, "-w", "-t", "30"]
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def _start_reaper(self) -> None:
        assert self.root is not None
        self._reaper = Component(
            "reaper", [sys.executable, "-c", REAPER, str(os.getpid()), str(self.root),
                       *self._pg_ctl_stop("immediate")],
            {**os.environ}, self.root / "logs" / "reaper.log")
        self._reaper.start(cwd=Path("/"), die_with_parent=False)

    def _start_postgres(self) -> None:
        pg = postgres_bin()
        assert pg is not None
        self._pgdata.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self._pgdata, "postgres", "postgres")
        self._pgdata.chmod(0o700)
        log = self.root / "logs" / "postgres.log"
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, "postgres", "postgres")
        # Trust on loopback only: a throwaway DB reachable from nowhere else.
        self._as_postgres([str(pg / "initdb"), "-D", str(self._pgdata), "-U", DB_USER,
                           "--auth=trust", "--encoding=UTF8", "--no-sync"], timeout=180)
        options = " ".join([
            f"-c listen_addresses={HOST}", f"-p {self.pg_port}",
            f"-c unix_socket_directories={self._pgdata}",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=200",
        ])
        try:
            self._as_postgres([str(pg / "pg_ctl"), "start", "-D", str(self._pgdata), "-l",
                               str(log), "-o", options, "-w", "-t", "60"], timeout=120)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"pg_ctl start failed: {exc.stdout}{exc.stderr}\n"
                               f"{_log_tail(log)}") from exc
        self._pg_started = True
        self._as_postgres([str(pg / "createdb"), "-h", HOST, "-p", str(self.pg_port),
                           "-U", DB_USER, DB_NAME], timeout=60)

    def _start_redis(self) -> None:
        folder = self.root / "redis"
        folder.mkdir()
        component = self._spawn("redis", [
            shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port),
            "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(folder),
            "--protected-mode", "yes", "--daemonize", "no",
        ], airflow_cli=False)
        _wait("redis answers PING", lambda: self._redis_ping() and component.running, 30, 0.2,
              self.diagnose)

    def _redis_ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.redis_port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    # -- Airflow ------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], *, worker: str | None = None,
               airflow_cli: bool = True) -> Component:
        argv = [str(BIN / "airflow"), *args] if airflow_cli else args
        component = Component(name, argv, self.env(worker), self.root / "logs" / f"{name}.log")
        component.start(cwd=PROJECT)
        self.components.append(component)
        with open(self.root / "pgids", "a") as handle:  # for the reaper
            handle.write(f"{component.process.pid}\n")
        return component

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the ``airflow`` CLI against this cluster; raises with its output if it fails."""
        done = subprocess.run([str(BIN / "airflow"), *args], env=self.env(), cwd=PROJECT,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def _check_alive(self) -> bool:
        dead = [c for c in self.components if not c.running]
        if dead:
            raise RuntimeError("exited: " + ", ".join(c.name for c in dead) + "\n"
                               + "\n".join(c.tail() for c in dead))
        return True

    def _healthy(self) -> bool:
        self._check_alive()
        try:
            health = self.api("GET", "/api/v2/monitor/health", timeout=5)
        except (OSError, RuntimeError):
            return False
        return all(health.get(part, {}).get("status") == "healthy"
                   for part in ("metadatabase", "scheduler", "dag_processor"))

    def diagnose(self) -> str:
        return "\n".join(c.tail() for c in self.components)

    def failed_task_logs(self, limit: int = 5, lines: int = 60) -> str:
        """The tails of (at most ``limit``) task logs that record an error."""
        if self.root is None or not (self.airflow_home / "logs").is_dir():
            return ""
        tails = []
        for path in sorted((self.airflow_home / "logs").glob("dag_id=*/**/*.log")):
            text = path.read_text(errors="replace")
            if '"level":"error"' in text.replace(" ", "") or "[error" in text:
                tails.append(f"--- task log {path} ---\n{_log_tail(path, lines)}")
            if len(tails) >= limit:
                break
        return "\n".join(tails)

    # -- REST API -----------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """One REST call (the all-admins auth manager needs no token); its JSON reply."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.api_url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  "Accept": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=timeout) as reply:
                text = reply.read().decode()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: "
                               f"{exc.read().decode(errors='replace')[:2000]}") from exc
        return json.loads(text) if text else None

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/api/v2/importErrors?limit=100")["import_errors"])

    def wait_for_dag(self, dag_id: str, file_name: str | None = None,
                     timeout: float = 180) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; fail early on an import error
        of ``file_name`` (the DAG's file name), report the others if it never appears."""
        def parsed() -> dict[str, Any] | None:
            self._check_alive()
            try:
                return self.api("GET", f"/api/v2/dags/{dag_id}")
            except RuntimeError as exc:
                if "HTTP 404" not in str(exc):
                    raise
            if file_name:
                errors = [e for e in self.import_errors()
                          if str(e.get("filename", "")).endswith(file_name)]
                if errors:
                    raise RuntimeError(f"{file_name} does not import: "
                                       f"{json.dumps(errors, indent=1)[:4000]}")
            return None

        def diagnose() -> str:
            return (self.diagnose() + "\nimport errors: "
                    + json.dumps(self.import_errors(), indent=1)[:4000])

        return _wait(f"DAG {dag_id} parsed", parsed, timeout, 2.0, diagnose)

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> str:
        """Unpause ``dag_id`` and trigger one run with ``conf``; its run id."""
        self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return str(self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """Wait until the run is finished (success or failed); the run as the API gives it."""
        quoted = urllib.parse.quote(run_id, safe="")

        def finished() -> dict[str, Any] | None:
            self._check_alive()
            run = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")
            return run if run["state"] in ("success", "failed") else None

        return _wait(f"run {run_id} of {dag_id} finished", finished, timeout, 3.0,
                     lambda: self.diagnose() + "\n" + json.dumps(
                         self.task_instances(dag_id, run_id), indent=1, default=str)[-4000:])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones included), paging through the API."""
        quoted = urllib.parse.quote(run_id, safe="")
        found: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances"
                                   f"?limit=100&offset={len(found)}")
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found


def spread(task_instances: list[dict[str, Any]], prefix: str = "") -> dict[str, list[str]]:
    """``{hostname: ["task[map_index]", ...]}`` of the mapped task instances (map_index >= 0)."""
    by_host: dict[str, list[str]] = {}
    for ti in sorted(task_instances, key=lambda t: (t["task_id"], t["map_index"])):
        if ti["map_index"] >= 0 and ti["task_id"].startswith(prefix):
            by_host.setdefault(ti.get("hostname") or "?", []).append(
                f"{ti['task_id']}[{ti['map_index']}]")
    return by_host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.system.cluster",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "up"],
                        help="install: apt-get postgresql/redis-server if missing; "
                             "up: start a cluster, print its env, stop it on Ctrl-C")
    args = parser.parse_args(argv)
    ensure_system_packages()
    if args.command == "install":
        missing = python_deps_missing()
        if missing:
            print(f"Python modules missing: {missing}; install the 'cluster' extra",
                  file=sys.stderr)
            return 1
        return 0
    with Cluster() as cluster:
        print(f"API: {cluster.api_url}  state: {cluster.root}")
        for key, value in sorted(cluster.env().items()):
            if key.startswith("AIRFLOW"):
                print(f"export {key}={value!r}")
        with contextlib.suppress(KeyboardInterrupt):
            while cluster._check_alive():
                time.sleep(2)
    return 0


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[Cluster]:
    """``with running_cluster() as cluster:`` started, and always stopped on the way out."""
    cluster = Cluster(**kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
