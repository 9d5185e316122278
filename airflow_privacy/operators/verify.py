"""Verification task: re-detect on the staged outputs of one shard, remediate or quarantine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_privacy.operators.common import ShardOperator

if TYPE_CHECKING:
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.storage import Storage


class VerifyAnonymizationOperator(ShardOperator):
    """Verify each staged output and write the shard's final manifest records.

    Outputs that still show a person after the bounded remediation rounds go to
    ``quarantine`` (default ``{work}/quarantine``); a rejected input leaves only
    its sha256 in the record unless ``keep_rejected_source``. Returns
    ``{"shard_id", "images", "errors", "verified", "quarantined"}``.

    :param quarantine: where failed outputs are kept for review (templated); the task
        group puts it below the report, outside the work location that cleanup removes
    :param keep_rejected_source: also keep the source bytes of rejected inputs
    """

    template_fields: Sequence[str] = (*ShardOperator.template_fields, "quarantine")

    def __init__(self, *, quarantine: str | None = None, keep_rejected_source: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quarantine = quarantine
        self.keep_rejected_source = keep_rejected_source

    def run_stage(self, pipeline: Pipeline, source: Storage, work: Storage, shard: dict) -> dict:
        from airflow_privacy.core.stages import verify_shard
        from airflow_privacy.operators.common import open_locations

        quarantine = None
        if self.quarantine:
            [quarantine] = open_locations(self.aws_conn_id, self.quarantine)
        return verify_shard(pipeline, source, work, shard, quarantine=quarantine,
                            keep_rejected_source=self.keep_rejected_source)
