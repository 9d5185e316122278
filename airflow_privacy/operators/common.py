"""What every operator shares: opening locations through a connection, the shard base.

Locations are URIs (a local path or ``s3://bucket/prefix``). For S3 the boto3
client comes from the Amazon provider's ``S3Hook`` and the ``aws_conn_id``
connection, never from credentials passed as arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_privacy.operators.compat import BaseOperator

if TYPE_CHECKING:
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.storage import Storage


def open_locations(aws_conn_id: str | None, *uris: str) -> list[Storage]:
    """Storages for ``uris``; one S3 client, built from the connection, shared by all."""
    from airflow_privacy.storage import open_storage

    client = None
    if any(uri.startswith("s3://") for uri in uris):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    return [open_storage(uri, s3_client=client) for uri in uris]


class ShardOperator(BaseOperator):
    """Runs one stage on one shard; meant to be mapped: ``.partial(...).expand(shard=...)``.

    :param source: folder or ``s3://`` prefix of the input images (templated)
    :param work: the run's work location shared by the stages (templated)
    :param shard: one element of :class:`ListImageShardsOperator`'s output
    :param settings: ``RunSettings.to_dict()`` (or part of it); templated
    :param aws_conn_id: connection for ``s3://`` locations; ``None``: boto3's default chain
    """

    template_fields: Sequence[str] = ("source", "work", "settings")
    ui_color = "#e8d5f5"

    def __init__(
        self,
        *,
        source: str,
        work: str,
        shard: dict[str, Any],
        settings: dict[str, Any] | None = None,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.work = work
        self.shard = shard
        self.settings = settings
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_privacy.core.stages import build_pipeline

        source, work = open_locations(self.aws_conn_id, self.source, self.work)
        result = self.run_stage(build_pipeline(self.settings), source, work, self.shard)
        self.log.info("shard %s: %s", self.shard["shard_id"], result)
        return result

    def run_stage(self, pipeline: Pipeline, source: Storage, work: Storage, shard: dict) -> dict:
        raise NotImplementedError
