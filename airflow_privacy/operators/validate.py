"""The quality gate task: assemble the shards' records into the manifest, validate with GE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_privacy.operators.common import open_locations
from airflow_privacy.operators.compat import AirflowFailException, BaseOperator


class ValidateManifestOperator(BaseOperator):
    """Write ``{report}/manifest.jsonl`` and ``summary.json``, then run the GE suite on it.

    The suite (see :mod:`airflow_privacy.core.expectations`) checks one record
    per listed input, no residual person/face on what would be published, an
    output sha256 for every verified output, every failure explained, and the
    failure rate at most ``max_error_rate``. Its full result goes to
    ``{report}/validation.json``. A failed validation fails the task without
    retries (retrying cannot change the manifest); the message lists the failed
    expectations. Returns ``{"manifest", "manifest_sha256", "validation",
    "images", "verified", "quarantined", "errors"}``.

    :param work: the run's work location (templated)
    :param report: where the manifest, summary and validation go (templated)
    :param shards: the list task's output (an XComArg), i.e. the inputs to account for
    :param settings: the run's settings dict, recorded in the summary (templated)
    :param max_error_rate: largest tolerated fraction of rejected or quarantined inputs
    :param aws_conn_id: connection for ``s3://`` locations
    """

    template_fields: Sequence[str] = ("work", "report", "shards", "settings", "max_error_rate")
    ui_color = "#d5f5e3"

    def __init__(
        self,
        *,
        work: str,
        report: str,
        shards: Any,
        settings: dict[str, Any] | None = None,
        max_error_rate: float = 0.1,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.work = work
        self.report = report
        self.shards = shards
        self.settings = settings
        self.max_error_rate = max_error_rate
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_privacy.core.expectations import ManifestValidationError, validate_manifest
        from airflow_privacy.core.stages import assemble_manifest

        work, report = open_locations(self.aws_conn_id, self.work, self.report)
        shards = list(self.shards)
        records, manifest_sha256 = assemble_manifest(work, report, shards, settings=self.settings)
        inputs = [key for shard in shards for key in shard["keys"]]
        try:
            result = validate_manifest(records, inputs, report=report,
                                       max_error_rate=float(self.max_error_rate),
                                       manifest_sha256=manifest_sha256)
        except ManifestValidationError as exc:
            raise AirflowFailException(str(exc)) from exc
        counts = {s: sum(r["status"] == s for r in records)
                  for s in ("verified", "quarantined", "error")}
        self.log.info("manifest %s valid: %s", manifest_sha256, counts)
        return {
            "manifest": report.uri_of("manifest.jsonl"),
            "manifest_sha256": manifest_sha256,
            "validation": result.path,
            "images": len(records),
            "verified": counts["verified"],
            "quarantined": counts["quarantined"],
            "errors": counts["error"],
        }
