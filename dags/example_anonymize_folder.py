"""Example: anonymize a folder of images, verify, validate the manifest, publish.

What ``make demo`` runs. Locations are DAG params whose defaults come from the
environment, so a trigger can point it elsewhere without editing the file:

* ``AIRFLOW_PRIVACY_DEMO_SOURCE`` (param ``source``): the images; default: the
  sample images shipped with ultralytics (``bus.jpg``, ``zidane.jpg``).
* ``AIRFLOW_PRIVACY_DEMO_OUTPUT`` (param ``output``): receives ``release/``
  (what passed), ``report/`` (manifest, summary, validation) and ``work/<run_id>/``.
* ``AIRFLOW_PRIVACY_DEMO_AWS_CONN_ID``: a connection for ``s3://`` locations.

Params ``target``, ``method`` and ``policy`` choose what is hidden, how, and
whether one failed image withholds the whole release. Parsing this file imports
neither ultralytics, torch nor OpenCV: the default source is found with
``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from airflow.sdk import DAG, Asset, Param

from airflow_privacy.operators.publish import release_uri
from airflow_privacy.operators.task_group import anonymization_task_group
from airflow_privacy.sensors import VerifiedReleaseSensor


def _ultralytics_assets() -> str:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return ""
    return str(Path(spec.origin).parent / "assets")


SOURCE = os.environ.get("AIRFLOW_PRIVACY_DEMO_SOURCE") or _ultralytics_assets()
OUTPUT = os.environ.get("AIRFLOW_PRIVACY_DEMO_OUTPUT") or str(
    Path(tempfile.gettempdir()) / "airflow-privacy-demo"
)

with DAG(
    dag_id="example_anonymize_folder",
    description="Anonymize people in a folder of images; publish only verified outputs.",
    schedule=None,
    catchup=False,
    tags=["privacy", "example"],
    params={
        "source": Param(SOURCE, type="string", description="folder or s3:// prefix of images"),
        "output": Param(OUTPUT, type="string", description="folder or s3:// prefix for results"),
        "policy": Param("all_or_nothing", enum=["all_or_nothing", "publish_passing"]),
        "target": Param("person", enum=["person", "head"], description="what to hide"),
        "method": Param("blur", enum=["blur", "pixelate", "fill"], description="how to hide it"),
    },
    doc_md=__doc__,
) as dag:
    anonymization_task_group(
        source="{{ params.source }}",
        release="{{ params.output }}/release",
        work="{{ params.output }}/work/{{ run_id | replace(':', '-') | replace('+', '-') }}",
        report="{{ params.output }}/report",
        # Any part of RunSettings.to_dict(); what is left out takes the defaults.
        settings={"anonymization": {"target": "{{ params.target }}",
                                    "method": "{{ params.method }}"}},
        policy="{{ params.policy }}",
        aws_conn_id=os.environ.get("AIRFLOW_PRIVACY_DEMO_AWS_CONN_ID", "aws_default"),
        shard_size=1,
    )

# The downstream side: a DAG scheduled on the default release's Asset (one event per
# distinct release), which also checks the release against its manifest before reading it.
with DAG(
    dag_id="example_release_consumer",
    description="Runs on each new verified release of example_anonymize_folder.",
    schedule=[Asset(release_uri(f"{OUTPUT}/release"))],
    catchup=False,
    tags=["privacy", "example"],
) as consumer:
    VerifiedReleaseSensor(task_id="wait_for_verified_release", release=f"{OUTPUT}/release",
                          report=f"{OUTPUT}/report", poke_interval=5, timeout=600)
