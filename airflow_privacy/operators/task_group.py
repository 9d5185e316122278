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

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import TaskGroup

from airflow_privacy.core.retention import Retention
from airflow_privacy.operators.anonymize import AnonymizePeopleOperator
from airflow_privacy.operators.cleanup import CleanupRunOperator
from airflow_privacy.operators.common import AWS_CONN_ID
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
    aws_conn_id: str | None = AWS_CONN_ID,
    shard_size: int | str = 16,
    policy: str = "all_or_nothing",
    max_error_rate: float | str = 0.1,
    release_alias: str | None = None,
    pseudonymize_conn_id: str | None = None,
    pseudonymize_variable: str | None = None,
    retention: Retention | None = None,
    attestation_conn_id: str | None = None,
    cleanup: bool | str = True,
    incremental: bool | str = False,
    group_id: str = "anonymize_people",
    stage_queues: Mapping[str, str] | None = None,
    stage_pools: Mapping[str, str] | None = None,
    stage_executor_config: Mapping[str, dict[str, Any]] | None = None,
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

    ``stage_queues``, ``stage_pools`` and ``stage_executor_config`` route tasks by
    their id in the group (``list_shards``, ``detect``, ``anonymize``, ``verify``,
    ``validate_manifest``, ``publish``): e.g. ``stage_queues={"detect": "gpu",
    "verify": "gpu"}`` sends the two model stages to Celery workers started with
    ``celery worker -q gpu`` while listing, validation and publication stay on the
    default queue. A task not named keeps Airflow's default; a name that is no
    task of the group is an error (a typo would silently run a stage on the CPU).

    Data minimisation (``retention``, a :class:`~airflow_privacy.core.retention.Retention`):
    failed outputs are quarantined under ``{report}/quarantine``, rejected inputs leave only
    their sha256 unless ``keep_rejected_source``, and with ``cleanup`` (default) a last task
    removes the run's ``work`` location after a successful publish and deletes quarantined
    objects older than ``quarantine_days`` (``cleanup`` may be a template, e.g.
    ``"{{ params.cleanup }}"``). ``attestation_conn_id``: a connection whose
    password signs the run's ``attestation.json``.

    ``incremental`` (may be a template, e.g. ``"{{ params.incremental }}"``): process
    only the inputs that ``release`` does not already hold under the same settings
    (same input sha256, same output name, the release and the manifest in ``report``
    as the previous run's ``_SUCCESS`` pins them). Their records are carried into
    the new manifest, so it, ``_SUCCESS`` and ``release_sha256`` still describe the
    whole release; outputs of inputs that vanished or changed are retracted at
    publish. Without a usable previous release everything is processed (the
    summary's ``incremental.reason`` says why). The same decision as the CLI's
    ``--incremental`` (:mod:`airflow_privacy.core.incremental`).

    Unless ``default_args`` say otherwise, every task is retried twice with
    exponential backoff: storage outages are transient, and retried shards
    only redo the inputs that had not finished.
    """
    group_kwargs.setdefault("default_args", {})
    for key, value in RETRY_DEFAULTS.items():
        group_kwargs["default_args"].setdefault(key, value)
    if hasattr(settings, "to_dict"):
        settings = settings.to_dict()
    retention = retention or Retention()
    quarantine = f"{report.rstrip('/')}/quarantine"
    locations = {"source": source, "work": work, "settings": settings,
                 "aws_conn_id": aws_conn_id}
    routes = {"queue": dict(stage_queues or {}), "pool": dict(stage_pools or {}),
              "executor_config": dict(stage_executor_config or {})}

    def route(task_id: str) -> dict[str, Any]:
        """The queue/pool/executor_config given for this task, and only those."""
        return {kind: given[task_id] for kind, given in routes.items() if task_id in given}

    with TaskGroup(group_id=group_id, **group_kwargs) as group:
        naming = {"pseudonymize_conn_id": pseudonymize_conn_id,
                  "pseudonymize_variable": pseudonymize_variable}
        since = ({"incremental": incremental, "report": report, "release": release,
                  "settings": settings} if incremental else {})
        shards = ListImageShardsOperator(task_id="list_shards", source=source, work=work,
                                         shard_size=shard_size, aws_conn_id=aws_conn_id,
                                         **naming, **since, **route("list_shards"))
        # One shard per mapped task; "{{ task.shard.shard_id }}" names the map index.
        steps = [
            operator.partial(task_id=task_id, map_index_template="{{ task.shard.shard_id }}",
                             **locations, **extra, **route(task_id)).expand(shard=shards.output)
            for task_id, operator, extra in (
                ("detect", DetectPeopleOperator, {}),
                ("anonymize", AnonymizePeopleOperator, naming),
                ("verify", VerifyAnonymizationOperator,
                 {"quarantine": quarantine,
                  "keep_rejected_source": retention.keep_rejected_source}),
            )
        ]
        validate = ValidateManifestOperator(
            task_id="validate_manifest", work=work, report=report, shards=shards.output,
            settings=settings, max_error_rate=max_error_rate, policy=policy,
            aws_conn_id=aws_conn_id, attestation_conn_id=attestation_conn_id,
            multiple_outputs=True,  # so publish can pin the manifest_sha256 key alone
            **route("validate_manifest"),
        )
        publish = PublishReleaseOperator(
            task_id="publish", work=work, report=report, release=release, policy=policy,
            manifest_sha256=validate.output["manifest_sha256"], release_alias=release_alias,
            aws_conn_id=aws_conn_id, attestation_conn_id=attestation_conn_id,
            retention=retention.to_dict(), **route("publish"),
        )
        shards >> steps[0] >> steps[1] >> steps[2] >> validate >> publish
        if cleanup:
            publish >> CleanupRunOperator(
                task_id="cleanup", work=work, quarantine=quarantine,
                quarantine_days=retention.quarantine_days, aws_conn_id=aws_conn_id,
                enabled=cleanup, **route("cleanup"))
    tasks = {task_id.rsplit(".", 1)[-1] for task_id in group.children}
    unknown = sorted({name for given in routes.values() for name in given} - tasks)
    if unknown:
        raise ValueError(f"no task {unknown} in {group_id!r} to route; its tasks: {sorted(tasks)}")
    return group
