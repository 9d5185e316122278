"""Example: adding anonymization to an existing ingestion DAG with one line.

The ingestion DAG was ``ingest >> load``: land new images in ``raw``, then hand
them to whatever consumes them. Adding privacy is the one line in the middle::

    ingest(...) >> anonymization_task_group(raw, release, work, report) >> load()

``load`` now runs only when the group released something (the publish task is
skipped, and ``load`` with it, when nothing passed), and reads the release, never
``raw``. Locations may be local paths or ``s3://`` prefixes (through
``aws_conn_id``). Params:

* ``landing``: where new images arrive (default ``AIRFLOW_PRIVACY_DEMO_SOURCE``,
  else the ultralytics sample images);
* ``output``: root of ``raw/``, ``release/``, ``work/<run_id>/`` and
  ``report/<run_id>/`` (default ``AIRFLOW_PRIVACY_DEMO_OUTPUT``, else a temp folder);
* ``aws_conn_id``: the connection for ``s3://`` locations.

The policy is the default, ``all_or_nothing``: one failed image releases nothing.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_privacy.operators.task_group import anonymization_task_group

RUN = "{{ run_id | replace(':', '-') | replace('+', '-') }}"


def _ultralytics_assets() -> str:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return ""
    return str(Path(spec.origin).parent / "assets")


LANDING = os.environ.get("AIRFLOW_PRIVACY_DEMO_SOURCE") or _ultralytics_assets()
OUTPUT = os.environ.get("AIRFLOW_PRIVACY_DEMO_OUTPUT") or str(
    Path(tempfile.gettempdir()) / "airflow-privacy-ingestion"
)


@task
def ingest(landing: str, raw: str, aws_conn_id: str) -> dict:
    """The existing ingestion step: copy newly landed images into ``raw``, one at a time."""
    from airflow_privacy.core.inputs import list_inputs
    from airflow_privacy.operators.common import open_locations

    source, target = open_locations(aws_conn_id, landing, raw)
    keys, _ = list_inputs(source)
    for key in keys:
        source.copy_to(key, target)
    return {"ingested": len(keys), "raw": target.uri}


@task
def load(ti=None) -> dict:
    """The existing downstream step, now fed from the release: here it reports what it got."""
    published = ti.xcom_pull(task_ids="anonymize_people.publish")
    print(f"loading {published['published']} anonymized images from {published['release']}")
    return {"loaded": published["published"], "release": published["release"]}


with DAG(
    dag_id="example_existing_ingestion",
    description="An ingestion DAG with anonymization added by one TaskGroup line.",
    schedule=None,
    catchup=False,
    tags=["privacy", "example"],
    params={
        "landing": Param(LANDING, type="string", description="folder or s3:// prefix"),
        "output": Param(OUTPUT, type="string", description="folder or s3:// prefix"),
        "aws_conn_id": Param("aws_default", type="string"),
    },
    doc_md=__doc__,
) as dag:
    raw, out, conn = "{{ params.output }}/raw", "{{ params.output }}", "{{ params.aws_conn_id }}"
    (
        ingest("{{ params.landing }}", raw, conn)
        # The one line that adds anonymization to the existing DAG:
        >> anonymization_task_group(raw, f"{out}/release", f"{out}/work/{RUN}",
                                    f"{out}/report/{RUN}", aws_conn_id=conn)
        >> load()
    )
