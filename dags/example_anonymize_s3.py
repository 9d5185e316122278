"""Example: the sharded pipeline from S3 to S3, one mapped task per shard and stage.

``list_shards`` lists ``source`` once and cuts it into shards of ``shard_size``
images; ``detect``, ``anonymize`` and ``verify`` are mapped over the shards
(``.partial().expand()``, one shard per task instance, on any worker: they share
nothing but the ``work`` location); ``validate_manifest`` merges the shards'
records into the manifest and runs the Great Expectations gate; ``publish``
copies the verified outputs from staging into ``release`` and writes
``_SUCCESS`` (holding the manifest's sha256) last. Every object is streamed one
at a time: nothing downloads the dataset.

Params (set them at trigger time; the defaults come from the environment):

================  ==========================================  ==============================
param             default (environment variable)              meaning
================  ==========================================  ==============================
``source``        ``AIRFLOW_PRIVACY_S3_SOURCE``               images to anonymize (read only)
                  or ``s3://airflow-privacy/incoming``
``release``       ``AIRFLOW_PRIVACY_S3_RELEASE``              only verified outputs + ``_SUCCESS``
                  or ``s3://airflow-privacy/release``
``work``          ``AIRFLOW_PRIVACY_S3_WORK``                 scratch root; the run uses
                  or ``s3://airflow-privacy/work``            ``{work}/{run_id}``
``report``        ``AIRFLOW_PRIVACY_S3_REPORT``               report root; the run writes
                  or ``s3://airflow-privacy/reports``         ``{report}/{run_id}/manifest.jsonl``,
                                                              ``summary.json``, ``validation.json``
``aws_conn_id``   ``AIRFLOW_PRIVACY_AWS_CONN_ID``             Airflow connection (type ``aws``):
                  or ``aws_default``                          credentials and, for MinIO/moto,
                                                              ``endpoint_url`` in its extra
``shard_size``    16                                          images per mapped task
``policy``        ``all_or_nothing``                          or ``publish_passing``
``max_error_rate``  0.1                                       tolerated failures (publish_passing)
``target``        ``person``                                  or ``head``
``method``        ``blur``                                    or ``pixelate``, ``fill``
================  ==========================================  ==============================

Any location may also be a local path. ``{run_id}`` has ``:`` and ``+``
replaced by ``-``. Credentials are never params: they come from the connection.

Downstream DAGs schedule on released data only: the publish task's outlet is
the asset alias ``example_anonymize_s3_release``, which each successful publish
resolves to ``Asset("<release>")`` with ``extra`` = ``{"images", "published",
"withheld", "policy", "manifest_sha256", "release_sha256", "release"}``; a run
that releases nothing emits no event::

    from airflow.sdk import DAG, AssetAlias
    with DAG("use_released_images", schedule=[AssetAlias("example_anonymize_s3_release")]):
        ...

Parsing this file imports neither ultralytics, torch, OpenCV nor GE.
"""

from __future__ import annotations

import os

from airflow.sdk import DAG, Param

from airflow_privacy.operators.task_group import anonymization_task_group

RUN = "{{ run_id | replace(':', '-') | replace('+', '-') }}"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


with DAG(
    dag_id="example_anonymize_s3",
    description="Sharded anonymization from S3 to S3; release only what passed the gate.",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["privacy", "example", "s3"],
    params={
        "source": Param(_env("AIRFLOW_PRIVACY_S3_SOURCE", "s3://airflow-privacy/incoming"),
                        type="string", description="s3:// prefix (or folder) of the images"),
        "release": Param(_env("AIRFLOW_PRIVACY_S3_RELEASE", "s3://airflow-privacy/release"),
                         type="string", description="where verified outputs are released"),
        "work": Param(_env("AIRFLOW_PRIVACY_S3_WORK", "s3://airflow-privacy/work"),
                      type="string", description="scratch root; the run uses {work}/{run_id}"),
        "report": Param(_env("AIRFLOW_PRIVACY_S3_REPORT", "s3://airflow-privacy/reports"),
                        type="string", description="report root; the run uses {report}/{run_id}"),
        "aws_conn_id": Param(_env("AIRFLOW_PRIVACY_AWS_CONN_ID", "aws_default"), type="string",
                             description="Airflow AWS connection for the s3:// locations"),
        "shard_size": Param(16, type="integer", minimum=1, description="images per mapped task"),
        "policy": Param("all_or_nothing", enum=["all_or_nothing", "publish_passing"]),
        "max_error_rate": Param(0.1, type="number", minimum=0, maximum=1,
                                description="tolerated failed share under publish_passing"),
        "target": Param("person", enum=["person", "head"], description="what to hide"),
        "method": Param("blur", enum=["blur", "pixelate", "fill"], description="how to hide it"),
        "cleanup": Param(True, type="boolean",
                         description="remove the run's work data after a successful publish"),
    },
    doc_md=__doc__,
) as dag:
    anonymization_task_group(
        source="{{ params.source }}",
        release="{{ params.release }}",
        work="{{ params.work }}/" + RUN,
        report="{{ params.report }}/" + RUN,
        settings={"anonymization": {"target": "{{ params.target }}",
                                    "method": "{{ params.method }}"}},
        aws_conn_id="{{ params.aws_conn_id }}",
        shard_size="{{ params.shard_size }}",
        policy="{{ params.policy }}",
        max_error_rate="{{ params.max_error_rate }}",
        release_alias="example_anonymize_s3_release",
        cleanup="{{ params.cleanup }}",
    )
