"""Detection task: find the people on one shard's images."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_privacy.operators.common import ShardOperator

if TYPE_CHECKING:
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.storage import Storage


class DetectPeopleOperator(ShardOperator):
    """Decode and detect people on one shard; writes ``{work}/detections/{shard_id}.jsonl``.

    Undecodable or unsafe inputs are recorded as errors, never fail the task.
    Returns ``{"shard_id", "images", "errors", "persons"}``.
    """

    def run_stage(self, pipeline: Pipeline, source: Storage, work: Storage, shard: dict) -> dict:
        from airflow_privacy.core.stages import detect_shard

        return detect_shard(pipeline, source, work, shard)
