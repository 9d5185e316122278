"""The cleanup task: after a successful publish, nothing of the run's work data is kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_privacy.operators.common import (
    AWS_CONN_ID,
    LineageMixin,
    fail_fast_unless_retryable,
    open_locations,
)


class CleanupRunOperator(LineageMixin, BaseOperator):
    """Remove the run's work location and expired quarantine (data minimisation).

    Runs after the publish task succeeded (the default trigger rule): staged
    outputs, unverified candidates and checkpoints are then no longer needed.
    Quarantined outputs older than ``quarantine_days`` are deleted too (see
    :mod:`airflow_privacy.core.retention`). Returns ``{"work_removed",
    "quarantine_expired"}``.

    :param work: the run's work location (templated); everything below it is removed
    :param quarantine: the quarantine location (templated; optional)
    :param quarantine_days: quarantined objects older than this are deleted
    :param aws_conn_id: connection for ``s3://`` locations (templated)
    :param enabled: templated switch (e.g. ``"{{ params.cleanup }}"``); rendering to
        false/0/no skips the task, e.g. to keep a run's work data for a fault analysis
    """

    template_fields: Sequence[str] = ("work", "quarantine", "aws_conn_id", "enabled")
    ui_color = "#eeeeee"
    lineage_inputs = ("work",)

    def __init__(self, *, work: str, quarantine: str | None = None, quarantine_days: int = 30,
                 aws_conn_id: str | None = AWS_CONN_ID, enabled: bool | str = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enabled = enabled
        self.work = work
        self.quarantine = quarantine
        self.quarantine_days = quarantine_days
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_privacy.core.retention import clean_work, expire_quarantine

        if str(self.enabled).strip().lower() in ("false", "0", "no", "off", ""):
            raise AirflowSkipException(f"cleanup disabled; {self.work} is kept")
        uris = [self.work] + ([self.quarantine] if self.quarantine else [])
        with fail_fast_unless_retryable():
            work, *quarantine = open_locations(self.aws_conn_id, *uris)
            removed = clean_work(work)
            expired = (expire_quarantine(quarantine[0], int(self.quarantine_days))
                       if quarantine else [])
        self.log.info("removed %d work objects below %s; %d quarantined objects expired",
                      removed, self.work, len(expired))
        return {"work_removed": removed, "quarantine_expired": len(expired)}
