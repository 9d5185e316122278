"""The package as an Airflow provider: discovery through the entry point, DAG parsing, lineage.

Everything Airflow runs in a subprocess with a throwaway ``AIRFLOW_HOME`` (see
``airflow_env``), the venv's own ``airflow`` CLI, as an operator would call it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.airflow_env import DAGS, PROJECT, airflow, airflow_env, json_output

EXAMPLE_DAGS = {"example_anonymize_folder", "example_anonymize_s3", "example_existing_ingestion"}
OPERATORS = {
    "ListImageShardsOperator", "DetectPeopleOperator", "AnonymizePeopleOperator",
    "VerifyAnonymizationOperator", "ValidateManifestOperator", "PublishReleaseOperator",
    "CleanupRunOperator",
}


def test_airflow_providers_list_shows_the_package(tmp_path):
    env = airflow_env(tmp_path)  # no metadata DB needed: discovery reads the entry points
    listed = json_output(airflow(env, "providers", "list", "-o", "json"))
    [ours] = [p for p in listed if p["package_name"] == "airflow-privacy"]
    from airflow_privacy import __version__

    assert ours["version"] == __version__


def test_airflow_providers_get_lists_the_operators_and_the_task_group(tmp_path):
    env = airflow_env(tmp_path)
    [info] = json_output(airflow(env, "providers", "get", "airflow-privacy", "--full",
                                 "-o", "json"))
    modules = [m for group in info["operators"] for m in group["python-modules"]]
    assert "airflow_privacy.operators.publish" in modules and len(modules) == 7
    assert info["task-groups"] == ["airflow_privacy.operators.task_group.anonymization_task_group"]
    triggers = [m for group in info["triggers"] for m in group["python-modules"]]
    assert triggers == ["airflow_privacy.triggers.release"]  # registered for the triggerer
    # Every listed module imports and holds the operators the provider advertises.
    code = (
        "import importlib, inspect, json, sys\n"
        "from airflow.sdk import BaseOperator\n"
        "found = set()\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    module = importlib.import_module(name)\n"
        "    found |= {n for n, c in inspect.getmembers(module, inspect.isclass)\n"
        "              if issubclass(c, BaseOperator) and c.__module__ == name}\n"
        "print(json.dumps(sorted(found)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(modules)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout.splitlines()[-1])) == OPERATORS


def test_the_example_dags_are_listed_without_import_errors(airflow_home):
    listed = json_output(airflow(airflow_home, "dags", "list", "--local", "-o", "json"))
    assert EXAMPLE_DAGS <= {d["dag_id"] for d in listed}
    assert {p.stem for p in DAGS.glob("example_*.py")} == EXAMPLE_DAGS
    errors = json_output(airflow(airflow_home, "dags", "list-import-errors", "--local",
                                 "-o", "json"))
    assert errors == []


LINEAGE = """
import importlib.util, json
from airflow_privacy.operators.common import lineage_dataset_name
from airflow_privacy.operators.publish import PublishReleaseOperator
from airflow_privacy.operators.detect import DetectPeopleOperator
publish = PublishReleaseOperator(task_id="publish", work="s3://scratch/run-1",
                                 report="/data/report", release="s3://public/photos/")
detect = DetectPeopleOperator(task_id="detect", source="s3://raw/photos", work="/tmp/w",
                              shard={"shard_id": "00000", "keys": []})
print(json.dumps({
    "installed": importlib.util.find_spec("airflow.providers.openlineage") is not None,
    "names": [lineage_dataset_name(u) for u in ("s3://raw/photos/", "s3://bucket", "/data/x")],
    "publish": repr(publish.get_openlineage_facets_on_complete(None)),
    "detect": repr(detect.get_openlineage_facets_on_start()),
    "outlets": [[type(o).__name__, o.name] for o in publish.outlets],
}))
"""


def test_operators_report_openlineage_datasets_only_when_openlineage_is_installed(tmp_path):
    done = subprocess.run([sys.executable, "-c", LINEAGE], env=airflow_env(tmp_path),
                          capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["names"] == [["s3://raw", "photos"], ["s3://bucket", "/"], ["file", "/data/x"]]
    if result["installed"]:
        assert "s3://public" in result["publish"] and "photos" in result["publish"]
        assert "s3://raw" in result["detect"]
    else:  # an optional dependency: without it the hooks are inert
        assert result["publish"] == result["detect"] == "None"
    # an alias even for a static release: an event is added only for a new release
    assert [kind for kind, _ in result["outlets"]] == ["AssetAlias"]
