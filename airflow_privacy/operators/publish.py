"""The only task that writes to the release location."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_privacy.operators.common import open_locations
from airflow_privacy.operators.compat import AirflowFailException, Asset, BaseOperator


def release_asset(release: str) -> Asset | None:
    """The Asset a release location stands for; None while it is still a template."""
    if "{{" in release or "{%" in release:
        return None
    if "://" in release:
        return Asset(release.rstrip("/"))
    from pathlib import Path

    return Asset(Path(release).expanduser().absolute().as_uri())


class PublishReleaseOperator(BaseOperator):
    """Copy verified outputs from ``{work}/staging`` to ``release``, then write ``_SUCCESS``.

    Refuses (failing without retries) when the manifest differs from the validated
    one (``manifest_sha256``, usually the validate task's XCom) or, with
    ``require_validation``, when ``{report}/validation.json`` is missing or failed.
    Under ``policy="all_or_nothing"`` one failed input releases nothing. When the
    release location is not templated it is declared as an outlet ``Asset``
    (or pass ``outlets`` yourself). Returns ``{"published", "withheld", "policy",
    "manifest_sha256", "release"}``.

    :param work: the run's work location (templated)
    :param report: where the manifest and validation are (templated)
    :param release: the release folder or ``s3://`` prefix (templated)
    :param policy: ``publish_passing`` or ``all_or_nothing`` (templated)
    :param manifest_sha256: the validated manifest's sha256 (templated)
    :param require_validation: refuse without a successful ``validation.json``
    :param aws_conn_id: connection for ``s3://`` locations
    """

    template_fields: Sequence[str] = ("work", "report", "release", "policy", "manifest_sha256")
    ui_color = "#d5e8f5"

    def __init__(
        self,
        *,
        work: str,
        report: str,
        release: str,
        policy: str = "publish_passing",
        manifest_sha256: str | None = None,
        require_validation: bool = True,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "outlets" not in kwargs and (asset := release_asset(release)) is not None:
            kwargs["outlets"] = [asset]
        super().__init__(**kwargs)
        self.work = work
        self.report = report
        self.release = release
        self.policy = policy
        self.manifest_sha256 = manifest_sha256
        self.require_validation = require_validation
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_privacy.core.publish import PublishRefused
        from airflow_privacy.core.stages import publish_release

        report, work, release = open_locations(
            self.aws_conn_id, self.report, self.work, self.release
        )
        try:
            result = publish_release(
                report, work, release, self.policy,  # type: ignore[arg-type]
                manifest_sha256=self.manifest_sha256 or None,
                require_validation=self.require_validation,
            )
        except PublishRefused as exc:
            raise AirflowFailException(str(exc)) from exc
        self.log.info("published %s of %s to %s", result["published"],
                      result["published"] + result["withheld"], self.release)
        return result
