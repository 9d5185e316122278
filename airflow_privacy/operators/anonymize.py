"""Anonymization task: hide the detected people of one shard and stage the outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_privacy.operators.common import ShardOperator

if TYPE_CHECKING:
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.storage import Storage


class AnonymizePeopleOperator(ShardOperator):
    """Plan regions from the shard's detections, anonymize, encode, stage in ``{work}/staging``.

    Returns ``{"shard_id", "images", "errors", "regions"}``.

    :param pseudonymize_conn_id: publish under keyed pseudonyms (``<hmac>.<suffix>``, see
        :mod:`airflow_privacy.core.naming`), the HMAC key being this connection's password
    :param pseudonymize_variable: the same, the key being this Airflow Variable's value
    """

    def __init__(
        self,
        *,
        pseudonymize_conn_id: str | None = None,
        pseudonymize_variable: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pseudonymize_conn_id = pseudonymize_conn_id
        self.pseudonymize_variable = pseudonymize_variable

    def run_stage(self, pipeline: Pipeline, source: Storage, work: Storage, shard: dict) -> dict:
        from airflow_privacy.core.stages import anonymize_shard
        from airflow_privacy.operators.naming import pseudonymizer

        namer = pseudonymizer(self.pseudonymize_conn_id, self.pseudonymize_variable)
        return anonymize_shard(pipeline, source, work, shard, namer=namer)
