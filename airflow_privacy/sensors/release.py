"""Waiting for a verified release: the downstream side of the release contract."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_privacy.core.status import Status
from airflow_privacy.triggers.release import VerifiedReleaseTrigger, check


class VerifiedReleaseSensor(BaseSensorOperator):
    """Wait until ``release`` holds a ``_SUCCESS`` whose release and manifest check out.

    "Checks out" (:func:`~airflow_privacy.core.release.check_release`): the marker's
    ``release_sha256`` equals the digest of the objects in the release now (keys and
    bytes: nothing missing, extra or changed) and, when ``report`` is given, the
    manifest there is the one the marker pins and lists every released object as a
    verified output with that sha256. A release being rewritten has no marker, so a
    consumer never reads a half-written one.

    Deferrable by default: the wait runs in the triggerer
    (:class:`~airflow_privacy.triggers.VerifiedReleaseTrigger`), not in a worker slot;
    ``deferrable=False`` pokes from the worker instead.

    :param release: the release folder or ``s3://`` prefix (templated)
    :param report: the report location with ``manifest.jsonl`` (templated; optional)
    :param aws_conn_id: connection for ``s3://`` locations (templated)
    :param deferrable: wait in the triggerer (default) or poke from the worker
    """

    template_fields: Sequence[str] = ("release", "report", "aws_conn_id")
    ui_color = "#d5f5f0"

    def __init__(self, *, release: str, report: str | None = None,
                 aws_conn_id: str | None = "aws_default", deferrable: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.report = report
        self.aws_conn_id = aws_conn_id
        self.deferrable = deferrable

    def poke(self, context: Any) -> bool:
        ok, reason = check(self.release, self.report, self.aws_conn_id)
        self.log.info("release %s: %s", self.release, reason)
        return ok

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        self.defer(  # at once: the trigger's first check comes without holding a worker slot
            trigger=VerifiedReleaseTrigger(self.release, self.report, self.aws_conn_id,
                                           float(self.poke_interval)),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout else None,
        )
        return None

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        if not event or event.get("status") != Status.VERIFIED:
            raise AirflowFailException(f"release {self.release} was not verified: {event}")
        self.log.info("release %s verified: %s", self.release, event.get("reason"))
        return event
