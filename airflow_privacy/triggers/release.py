"""The trigger behind :class:`~airflow_privacy.sensors.VerifiedReleaseSensor`.

Runs in the triggerer: the check (:func:`~airflow_privacy.core.release.check_release`)
reads objects with blocking I/O, so it runs in a worker thread, never on the
triggerer's event loop; between checks the trigger sleeps without holding a
worker slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class VerifiedReleaseTrigger(BaseTrigger):
    """Fires once ``release`` holds a ``_SUCCESS`` whose release (and manifest) check out.

    :param release: the release folder or ``s3://`` prefix
    :param report: the report location holding the manifest (optional, checked when given)
    :param aws_conn_id: connection for ``s3://`` locations
    :param poke_interval: seconds between checks
    """

    def __init__(self, release: str, report: str | None = None,
                 aws_conn_id: str | None = "aws_default", poke_interval: float = 30.0) -> None:
        super().__init__()
        self.release = release
        self.report = report
        self.aws_conn_id = aws_conn_id
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"release": self.release, "report": self.report,
                 "aws_conn_id": self.aws_conn_id, "poke_interval": self.poke_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                ok, reason = await asyncio.to_thread(check, self.release, self.report,
                                                     self.aws_conn_id)
            except Exception as exc:  # noqa: BLE001 - storage down: report it, keep waiting
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            if ok:
                yield TriggerEvent({"status": "verified", "release": self.release,
                                    "reason": reason})
                return
            self.log.info("release %s not verified yet: %s", self.release, reason)
            await asyncio.sleep(self.poke_interval)


def check(release: str, report: str | None, aws_conn_id: str | None) -> tuple[bool, str]:
    """Open the locations (S3 through ``aws_conn_id``) and check the release."""
    from airflow_privacy.core.release import check_release
    from airflow_privacy.operators.common import open_locations

    storages = open_locations(aws_conn_id, release, *([report] if report else []))
    return check_release(storages[0], storages[1] if report else None)
