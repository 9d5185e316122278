"""The only task that writes to the release location; downstream DAGs wait on its Asset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_privacy.operators.common import (
    AWS_CONN_ID,
    LineageMixin,
    attestation_key,
    fail_fast_unless_retryable,
    open_locations,
    run_identity,
)

#: The counts from the publish result that go into the Asset event's ``extra``.
EVENT_FIELDS = ("images", "published", "withheld", "policy", "manifest_sha256", "release_sha256")


def is_templated(value: str) -> bool:
    return "{{" in value or "{%" in value


def release_uri(release: str) -> str:
    """The URI an Asset uses for a release location: ``s3://...`` as is, paths as ``file://``."""
    if "://" in release:
        return release.rstrip("/")
    from pathlib import Path

    return Path(release).expanduser().absolute().as_uri()


def release_asset(release: str) -> Asset | None:
    """The Asset a release location stands for; None while it is still a template."""
    if is_templated(release):
        return None
    return Asset(release_uri(release))


class PublishReleaseOperator(LineageMixin, BaseOperator):
    """Copy verified outputs from ``{work}/staging`` to ``release``, then write ``_SUCCESS``.

    Refuses (failing without retries) when the manifest differs from the validated
    one (``manifest_sha256``, usually the validate task's XCom) or, with
    ``require_validation``, when ``{report}/validation.json`` is missing or failed.
    Under ``policy="all_or_nothing"`` (the default) one failed input releases
    nothing; ``publish_passing`` releases every verified output.

    **Asset event: one per distinct release.** The outlet is the ``AssetAlias``
    ``release_alias`` (default ``{dag_id}_release``), which resolves at run time to
    the Asset of the rendered release URI (``s3://...`` as is, a path as ``file://``),
    so downstream DAGs scheduled on that Asset run on released data only. An event
    is added only when the release changed: a re-run that publishes identical bytes
    (the same ``release_sha256`` as the ``_SUCCESS`` found before) adds none, so
    downstream DAGs do not fire again on the same data. The event's ``extra`` holds
    ``images``, ``published``, ``withheld``, ``policy``, ``manifest_sha256``,
    ``release_sha256``, ``release``. When nothing was released the task is skipped.
    Pass ``outlets`` yourself to override.

    This task ends a successful run, so it writes the run's report and attestation
    (kept per run under ``{report}/runs/<run id>/``), signed with the password of
    ``attestation_conn_id`` when given.

    Returns ``{"images", "published", "withheld", "policy", "manifest_sha256",
    "release_sha256", "release"}``.

    :param work: the run's work location (templated)
    :param report: where the manifest and validation are (templated)
    :param release: the release folder or ``s3://`` prefix (templated)
    :param policy: ``all_or_nothing`` (default) or ``publish_passing`` (templated)
    :param manifest_sha256: the validated manifest's sha256 (templated)
    :param require_validation: refuse without a successful ``validation.json``
    :param release_alias: the AssetAlias name used when ``release`` is templated
        (default ``{dag_id}_release``)
    :param aws_conn_id: connection for ``s3://`` locations (templated)
    :param attestation_conn_id: connection whose password signs ``attestation.json``
    :param retention: what is kept of personal data (recorded in the report)
    """

    template_fields: Sequence[str] = ("work", "report", "release", "policy", "manifest_sha256",
                                      "aws_conn_id", "attestation_conn_id")
    ui_color = "#d5e8f5"
    lineage_inputs = ("work", "report")
    lineage_outputs = ("release",)

    def __init__(
        self,
        *,
        work: str,
        report: str,
        release: str,
        policy: str = "all_or_nothing",
        manifest_sha256: str | None = None,
        require_validation: bool = True,
        release_alias: str | None = None,
        aws_conn_id: str | None = AWS_CONN_ID,
        attestation_conn_id: str | None = None,
        retention: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        declare = "outlets" not in kwargs
        super().__init__(**kwargs)
        if declare:  # an alias, so that an event is added only for a new release
            dag_id = getattr(self, "dag_id", None)
            release_alias = release_alias or (
                f"{dag_id}_release" if dag_id else "airflow_privacy_release")
            self.outlets = [AssetAlias(release_alias)]
        self.attestation_conn_id = attestation_conn_id
        self.retention = retention
        self.work = work
        self.report = report
        self.release = release
        self.policy = policy
        self.manifest_sha256 = manifest_sha256
        self.require_validation = require_validation
        self.release_alias = release_alias
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_privacy.core.release import publish_release

        with fail_fast_unless_retryable():  # a refused publish is refused again on retry
            report, work, release = open_locations(
                self.aws_conn_id, self.report, self.work, self.release
            )
            result = publish_release(
                report, work, release, self.policy,  # type: ignore[arg-type]
                manifest_sha256=self.manifest_sha256 or None,
                require_validation=self.require_validation,
                run=run_identity(context), retention=self.retention,
                key=attestation_key(self.attestation_conn_id), key_id=self.attestation_conn_id,
            )
        self.log.info("published %s of %s to %s", result["published"],
                      result["published"] + result["withheld"], self.release)
        if result.get("retracted"):
            self.log.info("retracted %d outputs of the previous release (their inputs vanished "
                          "or were processed again)", result["retracted"])
        if not result["published"] and result["images"]:
            raise AirflowSkipException(
                f"nothing released to {self.release} under policy {self.policy}")
        if result["release_sha256"] == result["previous_release_sha256"]:
            self.log.info("the release is unchanged (release_sha256 %s): no new Asset event",
                          result["release_sha256"])
        else:
            self._emit_asset_event(context, result)
        return result

    def _emit_asset_event(self, context: Any, result: dict[str, Any]) -> None:
        """Put the counts on the outlet event(s): ``extra`` of an Asset, or via the alias."""
        events = context.get("outlet_events")
        if events is None:
            return
        extra = {k: result[k] for k in EVENT_FIELDS if k in result} | {"release": result["release"]}
        target = release_uri(self.release)
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias):
                events[outlet].add(Asset(target), extra=extra)
            elif isinstance(outlet, Asset) and outlet.uri == target:
                events[outlet].extra = extra
