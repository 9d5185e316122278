"""Listing the input once and cutting it into shards, the unit the other tasks map over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.operators.common import (
    AWS_CONN_ID,
    LineageMixin,
    fail_fast_unless_retryable,
    open_locations,
)


class ListImageShardsOperator(LineageMixin, BaseOperator):
    """List the images below ``source`` into shard files; return their references for ``.expand``.

    With ``work`` (as in the task group), each shard's keys go to
    ``{work}/shards/{shard_id}.json`` and the XCom is ``[{"shard_id": "00000",
    "count": 16, "path": "shards/00000.json"}, ...]``: no key, a few dozen bytes per
    shard, at most ``[core] max_map_length`` shards, so its size does not grow with
    the number of images. When ``shard_size`` would make more shards than Airflow
    may map (``max_map_length``, 1,024 by default), shards are made bigger instead:
    ``ceil(images / max_map_length)`` keys each (logged). Without ``work`` the
    whole shards (keys included) are returned, for small ad-hoc use.

    :param source: folder or ``s3://`` prefix of the input images (templated)
    :param work: where the shard files and the plan are written (templated; optional)
    :param shard_size: images per shard, i.e. per mapped task (templated, e.g.
        ``"{{ params.shard_size }}"``; rendered text is converted with ``int()``)
    :param max_shards: most shards to make; default ``[core] max_map_length``
    :param aws_conn_id: connection for ``s3://`` locations (templated)
    :param pseudonymize_conn_id: / ``pseudonymize_variable``: the pseudonym key the outputs
        will be named with (as given to the anonymize task), so that output-name
        collisions are judged on the names that will really be published, as the CLI does
    :param incremental: list only the inputs that ``release`` does not already hold under
        the same ``settings`` (templated; ``"false"``, ``"0"``, ``"no"``, ``"off"`` or ``""``
        render it off). Needs ``work``, ``report`` (where the previous manifest and
        summary are) and ``release``; the carried records and the outputs to retract
        are written to ``work`` for the validate and publish tasks (see
        :mod:`airflow_privacy.core.incremental`, which the CLI's ``--incremental`` shares).
        When every input is carried, one empty shard is returned so the run still
        writes its manifest, validates and publishes.
    :param report: the report location of the previous run (templated; incremental only)
    :param release: the release location (templated; incremental only)
    :param settings: the run's settings, whose key must match the previous run's
        (templated; incremental only)
    """

    template_fields: Sequence[str] = ("source", "work", "shard_size", "aws_conn_id",
                                      "incremental", "report", "release", "settings")
    ui_color = "#f5ead5"
    lineage_inputs = ("source",)
    lineage_outputs = ("work",)

    def __init__(
        self,
        *,
        source: str,
        work: str | None = None,
        shard_size: int | str = 16,
        max_shards: int | None = None,
        aws_conn_id: str | None = AWS_CONN_ID,
        pseudonymize_conn_id: str | None = None,
        pseudonymize_variable: str | None = None,
        incremental: bool | str = False,
        report: str | None = None,
        release: str | None = None,
        settings: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.work = work
        self.shard_size = shard_size
        self.max_shards = max_shards
        self.aws_conn_id = aws_conn_id
        self.pseudonymize_conn_id = pseudonymize_conn_id
        self.pseudonymize_variable = pseudonymize_variable
        self.incremental = incremental
        self.report = report
        self.release = release
        self.settings = settings

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from airflow_privacy.core.shards import list_shards, plan_shards
        from airflow_privacy.operators.naming import pseudonymizer

        limit = self.max_shards or max_map_length()
        incremental = is_on(self.incremental)
        if incremental and not (self.work and self.report and self.release):
            raise AirflowFailException("incremental listing needs work, report and release")
        uris = [self.source] + ([self.work] if self.work else [])
        previous = [str(self.report), str(self.release)] if incremental else []
        with fail_fast_unless_retryable():
            namer = pseudonymizer(self.pseudonymize_conn_id, self.pseudonymize_variable)
            source, *work = open_locations(self.aws_conn_id, *uris, *previous)
            increment = None
            if incremental:
                report, release = work[1:]
                work = work[:1]
                increment = self._increment(source, report, release, namer)
            if work:
                shards = plan_shards(source, work[0], int(self.shard_size), max_shards=limit,
                                     namer=namer, increment=increment)
            else:
                shards = list_shards(source, int(self.shard_size), max_shards=limit,
                                     namer=namer)
        images = sum(s["count"] if "count" in s else len(s["keys"]) for s in shards)
        self.log.info("%d inputs in %d shards below %s", images, len(shards), self.source)
        if increment is not None:
            self.log.info("incremental: %s; %s", increment.reason, increment.summary())
        if shards and images > int(self.shard_size) * len(shards):
            self.log.warning("shards hold up to %d inputs instead of shard_size %s: Airflow maps "
                          "a task over at most %d elements ([core] max_map_length)",
                          -(-images // len(shards)), self.shard_size, limit)
        return shards

    def _increment(self, source: Any, report: Any, release: Any, namer: Any) -> Any:
        """The incremental decision (shared with the CLI) over the previous run's evidence."""
        from airflow_privacy.core.incremental import Increment
        from airflow_privacy.core.settings import RunSettings

        key = RunSettings.from_dict(self.settings or {}).key()
        return Increment.open(source, release, report, key, namer=namer)


def is_on(value: bool | str | None) -> bool:
    """A templated switch: rendered ``false``/``0``/``no``/``off``/empty is off."""
    return str(value).strip().lower() not in ("false", "0", "no", "off", "", "none")


def max_map_length() -> int:
    """Airflow's ``[core] max_map_length``: the most elements a task may be mapped over."""
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)
