"""Anonymization added to an existing DAG in one call.

::

    with DAG("ingest", schedule=None) as dag:
        land = ...
        land >> anonymization_task_group(
            "s3://raw/photos", "s3://public/photos", "s3://scratch/{{ run_id }}",
            "s3://reports/photos/{{ ds }}", aws_conn_id="aws_default",
        )
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import TaskGroup

from airflow_privacy.operators.anonymize import AnonymizePeopleOperator
from airflow_privacy.operators.detect import DetectPeopleOperator
from airflow_privacy.operators.publish import PublishReleaseOperator
from airflow_privacy.operators.shards import ListImageShardsOperator
from airflow_privacy.operators.validate import ValidateManifestOperator
from airflow_privacy.operators.verify import VerifyAnonymizationOperator

RETRY_DEFAULTS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
}


def anonymization_task_group(
    source: str,
    release: str,
    work: str,
    report: str,
    *,
    settings: Any = None,
    aws_conn_id: str | None = None,
    shard_size: int | str = 16,
    policy: str = "all_or_nothing",
    max_error_rate: float | str = 0.1,
    release_alias: str | None = None,
    pseudonymize_conn_id: str | None = None,
    pseudonymize_variable: str | None = None,
    group_id: str = "anonymize_people",
    **group_kwargs: Any,
) -> TaskGroup:
    """list -> detect -> anonymize -> verify (each mapped over shards) -> validate -> publish.

    Every location is templated (a local path or ``s3://bucket/prefix``, read and
    written through ``aws_conn_id``); ``work`` should be unique per run (e.g.
    contain ``{{ run_id }}``) since it holds the run's staged outputs and the
    per-input checkpoints that let a retried shard skip finished inputs.
    ``settings`` is a :class:`~airflow_privacy.core.settings.RunSettings` or its
    ``to_dict()`` (partial dicts work: missing values take the defaults).
    ``shard_size``, ``policy`` and ``max_error_rate`` may be templates too.
    ``pseudonymize_conn_id`` / ``pseudonymize_variable`` publish outputs under
    keyed pseudonyms instead of their file names (see
    :class:`~airflow_privacy.operators.anonymize.AnonymizePeopleOperator`).

    Publication happens only after the manifest passed validation, so a failed
    check publishes nothing; under ``policy="all_or_nothing"`` (the default) a
    single failed input fails validation. The publish task's outlet is the
    release Asset (or the AssetAlias ``release_alias``, default ``{dag_id}_release``,
    when ``release`` is templated), with the
    counts in the event's ``extra``.

    Unless ``default_args`` say otherwise, every task is retried twice with
    exponential backoff: storage outages are transient, and retried shards
    only redo the inputs that had not finished.
    """
    group_kwargs.setdefault("default_args", {})
    for key, value in RETRY_DEFAULTS.items():
        group_kwargs["default_args"].setdefault(key, value)
    if hasattr(settings, "to_dict"):
        settings = settings.to_dict()
    locations = {"source": source, "work": work, "settings": settings,
                 "aws_conn_id": aws_conn_id}
    with TaskGroup(group_id=group_id, **group_kwargs) as group:
        shards = ListImageShardsOperator(task_id="list_shards", source=source, work=work,
                                         shard_size=shard_size, aws_conn_id=aws_conn_id)
        # One shard per mapped task; "{{ task.shard.shard_id }}" names the map index.
        naming = {"pseudonymize_conn_id": pseudonymize_conn_id,
                  "pseudonymize_variable": pseudonymize_variable}
        steps = [
            operator.partial(task_id=task_id, map_index_template="{{ task.shard.shard_id }}",
                             **locations, **extra).expand(shard=shards.output)
            for task_id, operator, extra in (
                ("detect", DetectPeopleOperator, {}),
                ("anonymize", AnonymizePeopleOperator, naming),
                ("verify", VerifyAnonymizationOperator, {}),
            )
        ]
        validate = ValidateManifestOperator(
            task_id="validate_manifest", work=work, report=report, shards=shards.output,
            settings=settings, max_error_rate=max_error_rate, policy=policy,
            aws_conn_id=aws_conn_id,
            multiple_outputs=True,  # so publish can pin the manifest_sha256 key alone
        )
        publish = PublishReleaseOperator(
            task_id="publish", work=work, report=report, release=release, policy=policy,
            manifest_sha256=validate.output["manifest_sha256"], release_alias=release_alias,
            aws_conn_id=aws_conn_id,
        )
        shards >> steps[0] >> steps[1] >> steps[2] >> validate >> publish
    return group
