"""Verification task: re-detect on the staged outputs of one shard, remediate or quarantine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_privacy.operators.common import ShardOperator

if TYPE_CHECKING:
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.storage import Storage


class VerifyAnonymizationOperator(ShardOperator):
    """Verify each staged output and write the shard's final manifest records.

    Outputs that still show a person after the bounded remediation rounds, and
    every rejected input, go to ``{work}/quarantine``. Returns
    ``{"shard_id", "images", "errors", "verified", "quarantined"}``.
    """

    def run_stage(self, pipeline: Pipeline, source: Storage, work: Storage, shard: dict) -> dict:
        from airflow_privacy.core.stages import verify_shard

        return verify_shard(pipeline, source, work, shard)
