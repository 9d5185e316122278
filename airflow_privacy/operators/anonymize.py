"""Anonymization task: hide the detected people of one shard and stage the outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_privacy.operators.common import ShardOperator

if TYPE_CHECKING:
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.storage import Storage


class AnonymizePeopleOperator(ShardOperator):
    """Plan regions from the shard's detections, anonymize, encode, stage in ``{work}/staging``.

    Returns ``{"shard_id", "images", "errors", "regions"}``.
    """

    def run_stage(self, pipeline: Pipeline, source: Storage, work: Storage, shard: dict) -> dict:
        from airflow_privacy.core.stages import anonymize_shard

        return anonymize_shard(pipeline, source, work, shard)
