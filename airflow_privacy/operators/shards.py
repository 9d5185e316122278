"""Listing the input once and cutting it into shards, the unit the other tasks map over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_privacy.operators.common import (
    LineageMixin,
    fail_fast_unless_retryable,
    open_locations,
)


class ListImageShardsOperator(LineageMixin, BaseOperator):
    """List the images below ``source`` and return them as shards for ``.expand(shard=...)``.

    Returns ``[{"shard_id": "00000", "keys": [...]}, ...]``: the keys are the
    only per-image data in an XCom, bounded by ``shard_size`` per mapped task.

    :param source: folder or ``s3://`` prefix of the input images (templated)
    :param work: where the plan (shards and ignored keys) is recorded (templated; optional)
    :param shard_size: images per shard, i.e. per mapped task (templated, e.g.
        ``"{{ params.shard_size }}"``; rendered text is converted with ``int()``)
    :param aws_conn_id: connection for ``s3://`` locations (templated)
    """

    template_fields: Sequence[str] = ("source", "work", "shard_size", "aws_conn_id")
    ui_color = "#f5ead5"
    lineage_inputs = ("source",)
    lineage_outputs = ("work",)

    def __init__(
        self,
        *,
        source: str,
        work: str | None = None,
        shard_size: int | str = 16,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.work = work
        self.shard_size = shard_size
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from airflow_privacy.core.shards import list_shards

        uris = [self.source] + ([self.work] if self.work else [])
        with fail_fast_unless_retryable():
            source, *work = open_locations(self.aws_conn_id, *uris)
            shards = list_shards(source, int(self.shard_size), work=work[0] if work else None)
        self.log.info("%d images in %d shards below %s",
                      sum(len(s["keys"]) for s in shards), len(shards), self.source)
        return shards
