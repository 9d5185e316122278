"""The quality gate task: assemble the shards' records into the manifest, validate with GE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.status import Status
from airflow_privacy.operators.common import (
    AWS_CONN_ID,
    LineageMixin,
    attestation_key,
    fail_fast_unless_retryable,
    open_locations,
    run_identity,
)

VALIDATION_XCOM = "validation_summary"


class ValidateManifestOperator(LineageMixin, BaseOperator):
    """Write ``{report}/manifest.jsonl`` and ``summary.json``, then run the GE suite on it.

    The suite (see :mod:`airflow_privacy.core.expectations`) checks one record
    per listed input, no residual person/face on what would be published, nothing
    both to be published and quarantined, an output sha256 and stripped metadata
    for every verified output, every failure explained, and the failure rate at
    most ``max_error_rate`` (zero under ``policy="all_or_nothing"``). Its full
    result goes to ``{report}/validation.json``; a small summary (``success``,
    ``evaluated``, ``failed``, ``path``) is pushed to XCom as
    ``validation_summary``, pass or fail. A failed validation fails the task
    without retries (retrying cannot change the manifest); the message lists the
    failed expectations. Returns ``{"manifest", "manifest_sha256", "validation",
    "images", "verified", "quarantined", "errors"}``.

    :param work: the run's work location (templated)
    :param report: where the manifest, summary and validation go (templated)
    :param shards: the list task's output (an XComArg), i.e. the inputs to account for
    :param settings: the run's settings dict, recorded in the summary (templated)
    :param max_error_rate: largest tolerated fraction of rejected or quarantined inputs
    :param policy: the publish policy; ``all_or_nothing`` tolerates no failed input
    :param aws_conn_id: connection for ``s3://`` locations (templated)
    :param attestation_conn_id: connection whose password signs ``attestation.json``

    When the gate fails, this task ends the run, so it writes the run's report and
    attestation (naming the failed expectations and the run's identity) before failing.
    """

    template_fields: Sequence[str] = ("work", "report", "shards", "settings", "max_error_rate",
                                      "policy", "aws_conn_id", "attestation_conn_id")
    ui_color = "#d5f5e3"
    lineage_inputs = ("work",)
    lineage_outputs = ("report",)

    def __init__(
        self,
        *,
        work: str,
        report: str,
        shards: Any,
        settings: dict[str, Any] | None = None,
        max_error_rate: float | str = 0.1,
        policy: str = "all_or_nothing",
        aws_conn_id: str | None = AWS_CONN_ID,
        attestation_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.work = work
        self.report = report
        self.shards = shards
        self.settings = settings
        self.max_error_rate = max_error_rate
        self.policy = policy
        self.aws_conn_id = aws_conn_id
        self.attestation_conn_id = attestation_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_privacy.core.expectations import ManifestValidationError, validate_manifest
        from airflow_privacy.core.release import assemble_manifest
        from airflow_privacy.core.shards import shard_keys

        shards = list(self.shards)  # references: the keys are read from work, shard by shard
        with fail_fast_unless_retryable():
            work, report = open_locations(self.aws_conn_id, self.work, self.report)
            inputs = shard_keys(work, shards)
            records, manifest_sha256 = assemble_manifest(
                work, report, shards, settings=self.settings,
                policy=self.policy,  # type: ignore[arg-type]
            )
            result = validate_manifest(records, inputs, report=report,
                                       max_error_rate=float(self.max_error_rate),
                                       manifest_sha256=manifest_sha256, policy=self.policy,
                                       raise_on_failure=False)
        summary = {**result.to_xcom(), "manifest_sha256": manifest_sha256}
        if (ti := context.get("ti")) is not None:
            ti.xcom_push(key=VALIDATION_XCOM, value=summary)
        if not result.success:
            error = ManifestValidationError(result.failed, result.path)
            self.log.error("%s", error)
            self._report_stopped_run(context, report)
            raise AirflowFailException(str(error))
        counts = {s.value: records.by_status.get(s.value, 0) for s in Status}  # running totals
        self.log.info("manifest %s valid: %s", manifest_sha256, counts)
        return {
            "manifest": report.uri_of("manifest.jsonl"),
            "manifest_sha256": manifest_sha256,
            "validation": result.path,
            "images": len(records),
            "verified": counts[Status.VERIFIED],
            "quarantined": counts[Status.QUARANTINED],
            "errors": counts[Status.ERROR],
        }

    def _report_stopped_run(self, context: Any, report: Any) -> None:
        """The run ends here: write its report (no release) before the task fails."""
        from airflow_privacy.core.report import write_report_from

        with fail_fast_unless_retryable():
            uri = write_report_from(report, None, run=run_identity(context),
                                    key=attestation_key(self.attestation_conn_id),
                                    key_id=self.attestation_conn_id)
        self.log.error("the quality gate stopped the run; report: %s", uri)
